/**
 * The webhook worker across OS processes on one SQLite file: two instances run it, only the lease
 * holder delivers; the holder is SIGKILLed with a request in flight; the other takes over after the
 * lease lapses, from the durable cursor: every event is delivered, the one in flight again with the
 * same idempotency key, none of the earlier ones twice.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import { createServer } from "node:http"
import type { AddressInfo } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { createInterface } from "node:readline"
import { Effect } from "effect"
import { afterAll, expect, it } from "vitest"
import { LifecycleEvents, SqliteStore, Webhooks } from "../src/index.ts"
import { sampleRecord } from "../src/testing/index.ts"

const dir = mkdtempSync(join(tmpdir(), "latchkey-webhook-fleet-"))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

const until = async (f: () => boolean, what: string, ms = 20_000) => {
  const end = Date.now() + ms
  while (!f()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 10))
  }
}

it("two processes, one delivers; SIGKILL of the holder mid-request; the other takes over from the cursor", async () => {
  const path = join(dir, "fleet.db")
  const store = SqliteStore.make({ path })
  const r = sampleRecord("fleet")
  const events = [1, 2, 3, 4, 5].map((i) =>
    LifecycleEvents.make("refreshed", r, { expiresAt: i, recovered: false }, i)
  )
  await Effect.runPromise(store.appendEvents!(events))
  const third = events[2]!.id

  const received: Array<{ id: string; key: string | undefined; verified: boolean; answered: boolean }> = []
  let hangThird = true
  const server = createServer((req, res) => {
    let body = ""
    req.on("data", (c) => {
      body += c
    })
    req.on("end", () => {
      const id = String(req.headers["latchkey-event-id"])
      const hang = id === third && hangThird
      if (hang) hangThird = false // the first request of the third event never gets an answer
      received.push({
        id,
        key: req.headers["idempotency-key"] as string | undefined,
        verified: Webhooks.verifyWebhook({
          body,
          signature: req.headers["latchkey-signature"] as string,
          secret: "fleet-secret-0123456789"
        }),
        answered: !hang
      })
      if (!hang) res.end()
    })
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hooks`

  const attempts: Array<{ holder: string; eventId: string; outcome: string }> = []
  const start = (holder: string) => {
    const child = spawn(process.execPath, [join(import.meta.dirname, "fixtures/webhook-worker.ts")], {
      env: { ...process.env, LK_HOLDER: holder, LK_SQLITE_PATH: path, LK_WEBHOOK_URL: url },
      stdio: ["ignore", "pipe", "inherit"]
    })
    createInterface({ input: child.stdout! }).on("line", (line) => {
      if (line.startsWith("{")) attempts.push(JSON.parse(line))
    })
    const exited = new Promise<NodeJS.Signals | null>((resolve) =>
      child.on("exit", (_c, signal) => resolve(signal))
    )
    return { child, exited }
  }
  const workers: Record<string, { child: ChildProcess; exited: Promise<NodeJS.Signals | null> }> = {
    A: start("A"),
    B: start("B")
  }
  try {
    // The holder delivers the first two, then its request for the third hangs.
    await until(() => received.some((x) => x.id === third), "the request of the third event")
    const holders = new Set(attempts.map((a) => a.holder))
    expect(holders.size).toBe(1)
    const holder = [...holders][0]!
    const other = holder === "A" ? "B" : "A"
    workers[holder]!.child.kill("SIGKILL")
    expect(await workers[holder]!.exited).toBe("SIGKILL")
    // The other instance waits for the lease to lapse, then goes on from the durable cursor.
    await until(() => attempts.filter((a) => a.outcome === "delivered").length === 5, "all five delivered")
    expect(attempts.filter((a) => a.outcome === "delivered").map((a) => [a.holder, a.eventId])).toEqual([
      [holder, events[0]!.id],
      [holder, events[1]!.id],
      [other, events[2]!.id],
      [other, events[3]!.id],
      [other, events[4]!.id]
    ])
    // At least once: the third event twice, with one idempotency key; the others once.
    expect(received.map((x) => x.id)).toEqual([
      events[0]!.id,
      events[1]!.id,
      third,
      third,
      events[3]!.id,
      events[4]!.id
    ])
    expect(received.every((x) => x.verified && x.key === x.id)).toBe(true)
    expect((await Effect.runPromise(Webhooks.readState(store))).cursor).toBe(5)
  } finally {
    for (const w of Object.values(workers)) w.child.kill("SIGKILL")
    await Promise.all(Object.values(workers).map((w) => w.exited))
    server.closeAllConnections()
    server.close()
    await Effect.runPromise(store.close())
  }
}, 60_000)
