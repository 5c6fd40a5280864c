/**
 * The start command as a user runs it: `node src/main.ts` with no configuration but PORT, printing
 * the URL it serves; the page answers there; SIGTERM stops it cleanly. Prints the start-up time.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join, resolve } from "node:path"
import { afterAll, describe, expect, it } from "vitest"

const dataDir = mkdtempSync(join(tmpdir(), "latchkey-demo-main-"))
let child: ChildProcess | undefined
afterAll(() => {
  if (child && child.exitCode === null) child.kill("SIGKILL")
  rmSync(dataDir, { recursive: true, force: true })
})

describe("node src/main.ts", () => {
  it("starts with no configuration, prints its URL, serves the page and stops on SIGTERM", async () => {
    const begun = Date.now()
    child = spawn(process.execPath, [resolve(import.meta.dirname, "..", "src", "main.ts")], {
      env: { PATH: process.env.PATH ?? "", PORT: "0", DEMO_DATA_DIR: dataDir },
      stdio: ["ignore", "pipe", "pipe"]
    })
    let stdout = ""
    let stderr = ""
    child.stdout!.on("data", (d) => {
      stdout += d
    })
    child.stderr!.on("data", (d) => {
      stderr += d
    })
    const url = await new Promise<string>((resolve_, reject) => {
      const timer = setTimeout(() => reject(new Error(`no URL printed in 50 s: ${stdout} ${stderr}`)), 50_000)
      const check = () => {
        const match = /Open (http:\/\/127\.0\.0\.1:\d+)/.exec(stdout)
        if (match) {
          clearTimeout(timer)
          resolve_(match[1]!)
        }
      }
      child!.stdout!.on("data", check)
      child!.on("exit", (code) => reject(new Error(`exited with ${code}: ${stdout} ${stderr}`)))
    })
    const page = await fetch(url)
    expect(page.status).toBe(200)
    expect(await page.text()).toContain("Ada’s linked accounts")
    console.log(`demo start-up: URL printed and page served after ${Date.now() - begun} ms`)
    expect(stdout).toContain("HeyGen (sandbox), HighLevel (sandbox), Example Corp (sandbox)")
    expect(stdout).toContain(`vault key in ${join(dataDir, "vault-key.json")} (generated now)`)
    const pids = /Background refresh: 3 worker processes \(pids (\d+), (\d+), (\d+)\)/.exec(stdout)
    expect(pids).not.toBeNull()
    const alive = (pid: number) => {
      try {
        process.kill(pid, 0)
        return true
      } catch {
        return false
      }
    }
    const workerPids = pids!.slice(1).map(Number)
    expect(workerPids.every(alive)).toBe(true)
    // The test kit configures oidc-provider so that it has nothing to warn about (no filter needed).
    expect(stderr).not.toContain("oidc-provider WARNING")
    expect(stdout).not.toContain("oidc-provider NOTICE")

    const exited = new Promise<number | null>((r) => child!.on("exit", (code) => r(code)))
    child.kill("SIGTERM")
    expect(await exited).toBe(0)
    // Stopping the demo stops its workers (they drain and exit).
    await new Promise((r) => setTimeout(r, 200))
    expect(workerPids.filter(alive)).toEqual([])
  })

  it("refuses a half-configured real provider with a message naming the variable", async () => {
    const run = spawn(process.execPath, [resolve(import.meta.dirname, "..", "src", "main.ts")], {
      env: {
        PATH: process.env.PATH ?? "",
        PORT: "0",
        DEMO_DATA_DIR: dataDir,
        HIGHLEVEL_CLIENT_ID: "abc-def"
      },
      stdio: ["ignore", "pipe", "pipe"]
    })
    let stderr = ""
    run.stderr!.on("data", (d) => {
      stderr += d
    })
    const code = await new Promise<number | null>((r) => run.on("exit", (c) => r(c)))
    expect(code).toBe(1)
    expect(stderr).toContain("Cannot start the demo: HIGHLEVEL_CLIENT_SECRET: is required")
  })
})
