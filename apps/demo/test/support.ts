/** Shared by the demo's tests: a demo on a temporary data dir, Debian's Chromium, and a cookie-aware fetch. */
import { mkdirSync, mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join, resolve } from "node:path"
import { type Browser, type BrowserContext, chromium } from "playwright-core"
import { type Demo, type DemoOptions, startDemo } from "../src/demo.ts"

export const SCREENSHOTS = resolve(import.meta.dirname, "..", "..", "..", "test-artifacts", "demo")

export const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--disable-quic",
  "--no-first-run"
]

export interface Started {
  readonly demo: Demo
  readonly dataDir: string
  close(): Promise<void>
}

export const startTestDemo = async (options: DemoOptions = {}): Promise<Started> => {
  const dataDir = mkdtempSync(join(tmpdir(), "latchkey-demo-"))
  const demo = await startDemo({
    port: 0,
    dataDir,
    accessTokenSeconds: 600,
    refresherIntervalMs: 500,
    // The fleet has its own test (fleet.test.ts); elsewhere the web process refreshes, without delays.
    workers: 0,
    refreshDelayMs: 0,
    // The charts read the metrics every second (5 s in the demo).
    metricsSampleMs: 1_000,
    ...options
  })
  return {
    demo,
    dataDir,
    close: async () => {
      await demo.close()
      rmSync(dataDir, { recursive: true, force: true })
    }
  }
}

export const launchChromium = (): Promise<Browser> =>
  chromium.launch({ executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium", args: CHROMIUM_ARGS })

/** A browser context that can reach 127.0.0.1 only (no fonts or anything else from the internet). */
export const offlineContext = async (browser: Browser): Promise<BrowserContext> => {
  mkdirSync(SCREENSHOTS, { recursive: true })
  const context = await browser.newContext({ viewport: { width: 1440, height: 1000 }, locale: "en-GB" })
  await context.route("**/*", (route) => {
    const host = new URL(route.request().url()).hostname
    return host === "127.0.0.1" ? route.continue() : route.abort()
  })
  return context
}

/** fetch with a cookie jar, redirects left to the caller: what a browser would send, step by step. */
export class Client {
  readonly jar = new Map<string, string>()
  readonly base: string
  constructor(base: string) {
    this.base = base
  }
  cookieHeader() {
    return [...this.jar].map(([k, v]) => `${k}=${v}`).join("; ")
  }
  async fetch(path: string, init: RequestInit = {}): Promise<Response> {
    const headers = new Headers(init.headers)
    if (this.jar.size > 0) headers.set("cookie", this.cookieHeader())
    const response = await fetch(new URL(path, this.base), { redirect: "manual", ...init, headers })
    for (const line of response.headers.getSetCookie()) {
      const [pair] = line.split(";")
      const eq = pair!.indexOf("=")
      this.jar.set(pair!.slice(0, eq).trim(), pair!.slice(eq + 1).trim())
    }
    return response
  }
  /** GET / and read the page's CSRF token. */
  async csrf(): Promise<string> {
    const html = await (await this.fetch("/")).text()
    const token = /<meta name="csrf-token" content="([^"]+)">/.exec(html)?.[1]
    if (!token) throw new Error("no CSRF token on the page")
    return token
  }
  post(path: string, form: Record<string, string>, headers: Record<string, string> = {}): Promise<Response> {
    return this.fetch(path, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded", ...headers },
      body: new URLSearchParams(form)
    })
  }
}
