/**
 * The refresh fleet in Debian's Chromium: three worker processes, each its own Latchkey on the same
 * SQLite file, refresh tokens living 4 seconds (the stand-ins hold each refresh answer 1.2 s, so that
 * refreshes are in flight long enough to interrupt). The page shows which process refreshed each
 * account, and the providers' own counts: one refresh per expiry, no refresh token sent twice.
 * "Restart a worker" (SIGTERM while it refreshes): it drains, nothing is lost. "Crash a worker"
 * (SIGKILL while it refreshes): the card shows the refresh in doubt, then what the engine decided —
 * recovered, or `refresh_interrupted` with a Reconnect button — and Reconnect works.
 * Screenshots go to test-artifacts/demo/.
 */
import { join } from "node:path"
import AxeBuilder from "@axe-core/playwright"
import type { Browser, BrowserContext, Page } from "playwright-core"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { launchChromium, offlineContext, SCREENSHOTS, type Started, startTestDemo } from "./support.ts"

let started: Started
let browser: Browser
let context: BrowserContext
let page: Page

const ACCOUNTS = ["jane_doe", "sbxLocation001", "alice"] as const

beforeAll(async () => {
  started = await startTestDemo({
    workers: 3,
    accessTokenSeconds: 4,
    refreshDelayMs: 1200,
    refresherIntervalMs: 500,
    leaseTtlMs: 2000,
    inDoubtAfterMs: 3000
  })
  browser = await launchChromium()
  context = await offlineContext(browser)
  page = await context.newPage()
  await page.setViewportSize({ width: 1280, height: 900 })
})

afterAll(async () => {
  await context?.close().catch(() => {})
  await browser?.close().catch(() => {})
  await started?.close()
})

/**
 * A screenshot of one element of the live page. The page redraws its parts as the workers' refreshes
 * land: an element replaced while it is being captured is taken again, as it is now.
 */
const shotOf = async (selector: string, name: string) => {
  for (let attempt = 1; ; attempt++) {
    try {
      await page.locator(selector).screenshot({ path: join(SCREENSHOTS, `${name}.png`) })
      return
    } catch (error) {
      if (attempt >= 5 || !String(error).includes("not attached to the DOM")) throw error
    }
  }
}

const shot = async (name: string) => {
  await page.evaluate(() => window.scrollTo(0, 0))
  await page.screenshot({ path: join(SCREENSHOTS, `${name}.png`), fullPage: true })
}
const group = (providerId: string) => page.locator(`#group-${providerId}`)
const cardOf = (accountId: string) => page.locator(`[data-account-id="${accountId}"]`)
const worker = (name: string) => page.locator(`[data-worker="${name}"]`)

const approveOnSandbox = async (providerId: "heygen" | "highlevel", account: string) => {
  await group(providerId).locator(".link-form button").click()
  await page.waitForURL((url) => url.origin !== started.demo.url)
  await page.locator(`input[name="account"][value="${account}"]`).check()
  await page.locator('button[value="approve"]').click()
  await page.waitForURL(`${started.demo.url}/`)
}

/** The fleet table's row of an account: who refreshed it, and the provider's counts. */
const row = async (accountId: string) => {
  const id = await cardOf(accountId).getAttribute("data-connection-id")
  const r = page.locator(`[data-fleet-row="${id}"]`)
  return {
    last: (await r.getAttribute("data-last")) ?? "",
    perExpiry: Number(await r.getAttribute("data-per-expiry")),
    sentTwice: Number(await r.getAttribute("data-sent-twice")),
    refreshes: Number(await r.getAttribute("data-refreshes")),
    text: (await r.textContent()) ?? ""
  }
}

/** How far the page scrolls sideways (0: not at all). */
const sidewaysScroll = () =>
  page.evaluate(() => document.scrollingElement!.scrollWidth - document.documentElement.clientWidth)

const noSeriousViolations = async () => {
  const results = await new AxeBuilder({ page }).analyze()
  return results.violations
    .filter((v) => v.impact === "serious" || v.impact === "critical")
    .map((v) => `${v.id} on ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`)
}

describe("the refresh fleet", () => {
  it("three workers refresh the accounts: each expiry once, no refresh token sent twice", async () => {
    await page.goto(started.demo.url)
    expect(await page.locator("[data-worker]").count()).toBe(3)
    for (const name of ["worker-1", "worker-2", "worker-3"]) {
      expect(await worker(name).getAttribute("data-state")).toBe("running")
    }
    await approveOnSandbox("heygen", "jane_doe")
    await approveOnSandbox("highlevel", "sbxLocation001")
    await group("example").locator(".link-form button").click()
    await page.locator('input[name="login"]').fill("alice")
    await page.locator('input[name="password"]').fill("any password")
    await page.getByRole("button", { name: "Sign-in" }).click()
    await page.getByRole("button", { name: "Continue" }).click()
    await page.waitForURL(`${started.demo.url}/`)

    // No click: the workers refresh each account, again and again; the page says which one did.
    for (const account of ACCOUNTS) {
      await expect
        .poll(async () => (await row(account)).refreshes, { timeout: 30_000, interval: 250 })
        .toBeGreaterThanOrEqual(1)
      expect((await row(account)).text).toMatch(/worker-\d ×\d+/)
      expect(await cardOf(account).getAttribute("data-refreshed-process")).toMatch(/^worker-\d$/)
      expect(await cardOf(account).locator(".refresh-line").textContent()).toMatch(/by worker-\d/)
    }
    for (const account of ACCOUNTS) {
      const r = await row(account)
      expect(r.perExpiry).toBe(1)
      expect(r.sentTwice).toBe(0)
    }
    const workers = started.demo.fleet!.workers()
    expect(workers.reduce((n, w) => n + w.refreshes, 0)).toBeGreaterThanOrEqual(3)

    // The feed reads the store's durable log: a worker's refresh, numbered, with the account's name.
    const fromWorker = page.locator('#activity li[data-process^="worker-"]', {
      hasText: "HeyGen · jane@example.com: tokens refreshed by worker-"
    })
    await expect.poll(() => fromWorker.count(), { timeout: 10_000 }).toBeGreaterThan(0)
    expect(Number(await fromWorker.first().getAttribute("data-seq"))).toBeGreaterThan(1)
    expect(await fromWorker.first().locator(".seq").textContent()).toMatch(/^#\d+$/)
    // The log itself holds it (the page did not make it up): written by the worker's engine.
    const log = await started.demo.latchkey.events.read(0, 1000)
    const seq = Number(await fromWorker.first().getAttribute("data-seq"))
    expect(log.events.find((e) => e.seq === seq)).toMatchObject({ type: "refreshed" })
    expect(await page.locator("#activity").textContent()).not.toContain("an account")

    // The charts: the workers' metrics (the web process refreshed nothing), summed per provider.
    for (const providerId of ["heygen", "highlevel", "example"]) {
      const chart = page.locator(`#chart-${providerId}`)
      await expect
        .poll(async () => Number(await chart.getAttribute("data-refreshes")), { timeout: 10_000 })
        .toBeGreaterThanOrEqual(1)
      expect(await chart.locator("rect[data-point]").count()).toBeGreaterThanOrEqual(1)
      expect(await chart.locator("circle[data-latency]").count()).toBeGreaterThanOrEqual(1)
      expect(await chart.locator("svg title").textContent()).toContain("refreshes per 30 s")
      expect(await chart.locator("svg desc").textContent()).toMatch(
        /in the last 6 min: \d+ refresh(es)?.*; mean latency \d/
      )
      expect(await chart.locator("figcaption").textContent()).toMatch(
        /From the engines’ metrics \(4 processes\)/
      )
    }
    await page.locator("#group-heygen .group-head").evaluate((el) => el.scrollIntoView())
    await shotOf("#chart-heygen", "26-fleet-chart-heygen")
    await shotOf(".activity", "27-fleet-feed-from-log")
    expect(await noSeriousViolations()).toEqual([])
    expect(await sidewaysScroll()).toBe(0)
    await shot("20-fleet-steady")
    // The fleet panel at 420 px: the table becomes one block per account, nothing scrolls sideways.
    await page.setViewportSize({ width: 420, height: 900 })
    expect(await sidewaysScroll()).toBe(0)
    expect(await noSeriousViolations()).toEqual([])
    await shot("25-fleet-420")
    await page.setViewportSize({ width: 1280, height: 900 })
  })

  it("restart a worker (SIGTERM while it refreshes): it drains, nothing is lost, nothing in doubt", async () => {
    const before = started.demo.fleet!.workers()
    await page.getByRole("button", { name: "Restart a worker" }).click()
    const toast = page.locator(".toast").last()
    await expect.poll(() => toast.textContent(), { timeout: 15_000 }).toContain("restarted (SIGTERM)")
    const text = (await toast.textContent()) ?? ""
    expect(text).toMatch(/It drained in \d+ ms: its refresh of .+ finished its write first/)
    const restarted = /(worker-\d) restarted/.exec(text)![1]!
    // The fleet starts it again (RESPAWN_MS after the exit): a new process in the same slot. The panel
    // may still show the old process as running until it next renders, so wait for the new pid.
    const oldPid = String(before.find((w) => w.name === restarted)!.pid)
    await expect
      .poll(
        async () => {
          const [state, pid] = await Promise.all([
            worker(restarted).getAttribute("data-state"),
            worker(restarted).getAttribute("data-pid")
          ])
          return pid !== oldPid && state === "running"
        },
        { timeout: 15_000 }
      )
      .toBe(true)
    const after = started.demo.fleet!.workers().find((w) => w.name === restarted)!
    expect(String(after.pid)).not.toBe(oldPid)
    expect(after.lastExit).toMatch(/exited with code 0 after draining/)

    // Nothing in doubt, nothing lost: every account stays active, refreshed once per expiry.
    for (let i = 0; i < 6; i++) {
      expect(await page.locator('[data-flight="in-doubt"]').count()).toBe(0)
      await page.waitForTimeout(250)
    }
    for (const account of ACCOUNTS) {
      expect(await cardOf(account).getAttribute("data-status")).toBe("active")
      const r = await row(account)
      expect(r.perExpiry).toBe(1)
      expect(r.sentTwice).toBe(0)
    }
    for (const c of await started.demo.latchkey.connections("ada")) {
      expect(c.status).toBe("active")
      expect(c.lastError).toBeUndefined()
    }
    await shot("21-fleet-after-drain")
  })

  it("crash a worker (SIGKILL while it refreshes): in doubt, then recovered or an honest refresh_interrupted", async () => {
    await page.getByRole("button", { name: "Crash a worker" }).click()
    const toast = page.locator(".toast").last()
    await expect.poll(() => toast.textContent(), { timeout: 15_000 }).toContain("killed (SIGKILL)")
    const crashToast = (await toast.textContent()) ?? ""
    expect(crashToast).toContain("It was refreshing")

    // The card of each refresh the worker had in flight says so, from the journal in the store.
    const inDoubt = page.locator('[data-connection-id]:has([data-flight="in-doubt"])')
    await expect.poll(() => inDoubt.count(), { timeout: 10_000, interval: 100 }).toBeGreaterThan(0)
    // Every card that shows the refresh in doubt while the engine decides (they may appear one by one).
    const crashed = new Set<string>()
    const doubted = async () => {
      const ids = await inDoubt.evaluateAll((cards) => cards.map((c) => c.getAttribute("data-account-id")!))
      for (const id of ids) crashed.add(id)
      return ids.length
    }
    await doubted()
    expect(await inDoubt.first().textContent()).toContain("stopped before its answer was stored")
    await shot("22-fleet-crash-in-doubt")

    // Then the engine decides (the holder silent past inDoubtAfterMs, one resend at most).
    await expect.poll(doubted, { timeout: 30_000, interval: 100 }).toBe(0)
    // The toast named what the worker was refreshing: the same accounts.
    const named = crashToast.split("It was refreshing")[1] ?? ""
    for (const account of ACCOUNTS) {
      const label =
        account === "jane_doe"
          ? "jane@example.com"
          : account === "alice"
            ? "alice@example.com"
            : "Acme Plumbing"
      expect(crashed.has(account)).toBe(named.includes(label))
    }
    let interrupted = 0
    for (const account of crashed) {
      const card = cardOf(account)
      const status = await card.getAttribute("data-status")
      const r = await row(account)
      // One resend at most, ever: a refresh token reached the provider at most twice.
      expect(r.sentTwice).toBeLessThanOrEqual(1)
      expect(r.perExpiry).toBeLessThanOrEqual(2)
      if (status === "active") {
        // Nothing lost: the resend was accepted, or the first send never arrived.
        await expect
          .poll(() => page.locator("#activity").textContent())
          .toMatch(/an interrupted refresh recovered|tokens refreshed/)
      } else {
        interrupted++
        expect(status).toBe("needs_reauth")
        const notice = (await card.locator(".notice").textContent()) ?? ""
        expect(notice).toContain("Reconnect needed")
        expect(notice).toMatch(
          /A refresh of this .+ connection was interrupted: process worker-\d#\d+ sent its refresh token/
        )
        expect(notice).toContain("resends a refresh token at most once")
        expect(await card.getByRole("button", { name: "Reconnect" }).isVisible()).toBe(true)
        const [c] = (await started.demo.latchkey.connections("ada")).filter((x) => x.accountId === account)
        expect(c!.lastError?.code).toBe("refresh_interrupted")
      }
    }
    // Accounts the crashed worker was not refreshing never noticed.
    for (const account of ACCOUNTS.filter((a) => !crashed.has(a))) {
      expect(await cardOf(account).getAttribute("data-status")).toBe("active")
      expect((await row(account)).sentTwice).toBe(0)
    }
    expect(await noSeriousViolations()).toEqual([])
    await shot("23-fleet-crash-outcome")

    // Reconnect brings an interrupted account back.
    for (const account of crashed) {
      if ((await cardOf(account).getAttribute("data-status")) === "active") continue
      await cardOf(account).getByRole("button", { name: "Reconnect" }).click()
      if (account === "alice") {
        // oidc-provider may remember the sign-in: then only the consent page shows.
        await page.waitForSelector('input[name="login"], button:has-text("Continue")')
        if (await page.locator('input[name="login"]').isVisible()) {
          await page.locator('input[name="login"]').fill("alice")
          await page.locator('input[name="password"]').fill("any password")
          await page.getByRole("button", { name: "Sign-in" }).click()
        }
        await page.getByRole("button", { name: "Continue" }).click()
      } else {
        await page.locator(`input[name="account"][value="${account}"]`).check()
        await page.locator('button[value="approve"]').click()
      }
      await page.waitForURL(`${started.demo.url}/`)
      expect(await cardOf(account).getAttribute("data-status")).toBe("active")
    }
    if (interrupted > 0) await shot("24-fleet-reconnected")
  })
})
