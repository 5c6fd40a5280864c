/**
 * The sandbox enforces HighLevel's burst limit with the real headers, and the ApiClient keeps within
 * it on its own: HighLevel.provider wraps its API fetch in a rate limiter (on by default). Sandbox
 * and limiter share one virtual clock, so the 10-second windows pass without waiting.
 */
import { ConnectionStore, createLatchkey } from "@latchkey/core"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { HighLevel } from "../src/index.ts"
import { type HighLevelSandbox, startSandbox } from "../src/sandbox.ts"
import { latchkeyFor, link, providerFor } from "./support.ts"

let t = Date.now()
let sandbox: HighLevelSandbox
beforeAll(async () => {
  sandbox = await startSandbox({ now: () => t, rateLimit: { max: 5, intervalMs: 10_000, daily: 1_000 } })
})
afterAll(() => sandbox.close())

describe("rate limits", () => {
  it("the sandbox answers the X-RateLimit-* headers and 429 with Retry-After past the burst", async () => {
    const lk = latchkeyFor(sandbox, { store: ConnectionStore.makeMemory() })
    try {
      const c = await link(lk, sandbox, "sbxLocation001")
      const token = await lk.accessToken(c.id)
      t += 60_000 // a fresh window, whatever linking used
      const statuses: Array<number> = []
      let last: Response | undefined
      for (let i = 0; i < 7; i++) {
        last = await fetch(`${sandbox.url}/locations/sbxLocation001`, {
          headers: { authorization: `Bearer ${token}`, version: "2021-07-28" }
        })
        statuses.push(last.status)
        if (i === 0) {
          expect(Object.fromEntries([...last.headers].filter(([k]) => k.startsWith("x-ratelimit")))).toEqual({
            "x-ratelimit-max": "5",
            "x-ratelimit-remaining": "4",
            "x-ratelimit-interval-milliseconds": "10000",
            "x-ratelimit-limit-daily": "1000",
            "x-ratelimit-daily-remaining": String(Number(last.headers.get("x-ratelimit-daily-remaining")))
          })
        }
        await last.body?.cancel()
      }
      expect(statuses).toEqual([200, 200, 200, 200, 200, 429, 429])
      expect(last!.headers.get("retry-after")).toBe("10")
      // Another location has its own budget.
      const other = await link(lk, sandbox, "sbxLocation002")
      expect((await lk.fetch(other.id, "/locations/sbxLocation002")).status).toBe(200)
    } finally {
      await lk.close()
    }
  })

  it("the ApiClient learns the limit from the headers and waits instead of hitting 429, with no setup", async () => {
    const limiter = HighLevel.makeRateLimiter({
      now: () => t,
      sleep: async (ms) => {
        t += ms
      }
    })
    const lk = createLatchkey({
      providers: [providerFor(sandbox, { rateLimit: { limiter } })],
      store: ConnectionStore.makeMemory()
    })
    try {
      const c = await link(lk, sandbox, "sbxLocation003")
      t += 60_000
      const before = sandbox.countCalls({ endpoint: "locations", status: 429 })
      const start = t
      for (let i = 0; i < 12; i++) {
        const res = await lk.fetch(c.id, "/locations/sbxLocation003")
        expect(res.status).toBe(200)
      }
      expect(sandbox.countCalls({ endpoint: "locations", status: 429 })).toBe(before)
      // 12 calls at 5 per 10 s span at least two more windows.
      expect(t - start).toBeGreaterThanOrEqual(20_000)
      const bucket = HighLevel.bucketKey(`Bearer ${await lk.accessToken(c.id)}`)
      expect(limiter.state(bucket)).toMatchObject({ max: 5, intervalMs: 10_000 })
    } finally {
      await lk.close()
    }
  })

  it("with HighLevel's own limits (100 per 10 s), a burst of 250 concurrent calls never sees a 429", async () => {
    // A virtual clock that moves only while no request is in flight, to the next sleeper's wake-up:
    // client and server then see the same time for every request, as they would with no latency.
    let v = Date.now()
    let inFlight = 0
    const sleepers: Array<{ at: number; wake: () => void }> = []
    const driver = setInterval(() => {
      if (inFlight > 0 || sleepers.length === 0) return
      sleepers.sort((a, b) => a.at - b.at)
      v = Math.max(v, sleepers[0]!.at)
      const due = sleepers.filter((x) => x.at <= v)
      const rest = sleepers.filter((x) => x.at > v)
      sleepers.splice(0, sleepers.length, ...rest)
      for (const s of due) s.wake()
    }, 2)
    const real = await startSandbox({ now: () => v })
    const counting: typeof fetch = async (input, init) => {
      inFlight++
      try {
        return await fetch(input, init)
      } finally {
        inFlight--
      }
    }
    const lk = createLatchkey({
      providers: [
        providerFor(real, {
          rateLimit: {
            now: () => v,
            sleep: (ms) => new Promise<void>((wake) => sleepers.push({ at: v + ms, wake }))
          }
        })
      ],
      store: ConnectionStore.makeMemory(),
      config: { fetch: counting }
    })
    try {
      const c = await link(lk, real, "sbxLocation001")
      const start = v
      const responses = await Promise.all(
        Array.from({ length: 250 }, () => lk.fetch(c.id, "/locations/sbxLocation001"))
      )
      expect(responses.filter((r) => r.status !== 200)).toEqual([])
      expect(real.countCalls({ endpoint: "locations", status: 429 })).toBe(0)
      // 250 + the one made while linking.
      expect(real.countCalls({ endpoint: "locations", status: 200 })).toBe(251)
      expect(v - start).toBeGreaterThanOrEqual(20_000)
      await Promise.all(responses.map((r) => r.body?.cancel()))
    } finally {
      clearInterval(driver)
      await lk.close()
      await real.close()
    }
  })
})
