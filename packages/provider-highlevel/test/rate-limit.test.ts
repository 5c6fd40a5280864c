/**
 * The rate limiter on a virtual clock: the sliding window per token, the server's own count taking
 * over when it is higher, and a 429 honoured.
 */
import { describe, expect, it } from "vitest"
import { HighLevel } from "../src/index.ts"

const virtualTime = () => {
  let t = 1_000_000
  const waits: Array<number> = []
  return {
    now: () => t,
    sleep: async (ms: number) => {
      waits.push(ms)
      t += ms
    },
    waits,
    advance: (ms: number) => {
      t += ms
    }
  }
}

const limits = (remaining: number, extra: Record<string, string> = {}) =>
  new Headers({
    "x-ratelimit-max": "100",
    "x-ratelimit-remaining": String(remaining),
    "x-ratelimit-interval-milliseconds": "10000",
    "x-ratelimit-limit-daily": "200000",
    "x-ratelimit-daily-remaining": "199000",
    ...extra
  })

describe("HighLevel rate limiter", () => {
  it("sends a burst of 100 per 10 s per token, then waits for the window to slide", async () => {
    const clock = virtualTime()
    const limiter = HighLevel.makeRateLimiter({ now: clock.now, sleep: clock.sleep })
    for (let i = 0; i < 100; i++) await limiter.acquire("a")
    expect(clock.waits).toEqual([])
    // Another token has its own budget.
    await limiter.acquire("b")
    expect(clock.waits).toEqual([])
    await limiter.acquire("a")
    expect(clock.waits).toEqual([10_000])
    expect(limiter.state("a")?.used).toBe(1)
  })

  it("takes the server's count when others spent the same budget, and its max and interval", async () => {
    const clock = virtualTime()
    const limiter = HighLevel.makeRateLimiter({ now: clock.now, sleep: clock.sleep })
    await limiter.acquire("loc")
    limiter.observe(
      "loc",
      200,
      limits(0, { "x-ratelimit-max": "50", "x-ratelimit-interval-milliseconds": "5000" })
    )
    expect(limiter.state("loc")).toMatchObject({
      max: 50,
      intervalMs: 5000,
      used: 50,
      dailyRemaining: 199000
    })
    clock.advance(1000)
    await limiter.acquire("loc")
    expect(clock.waits).toEqual([4000])
  })

  it("after a 429 nothing is sent before Retry-After", async () => {
    const clock = virtualTime()
    const limiter = HighLevel.makeRateLimiter({ now: clock.now, sleep: clock.sleep })
    await limiter.acquire("loc")
    limiter.observe("loc", 429, limits(0, { "retry-after": "7" }))
    await limiter.acquire("loc")
    expect(clock.waits[0]).toBe(7000)
  })

  it("rateLimitedFetch limits bearer calls to the API origin only and reads every answer's headers", async () => {
    const clock = virtualTime()
    const seen: Array<string> = []
    let counted = 0
    const inner: typeof fetch = async (input) => {
      seen.push(String(input))
      return new Response("{}", { status: 200, headers: limits(100 - ++counted) })
    }
    const limited = HighLevel.rateLimitedFetch({
      fetch: inner,
      apiUrl: "http://127.0.0.1:1234",
      now: clock.now,
      sleep: clock.sleep,
      max: 2
    })
    const auth = { headers: { authorization: "Bearer token-1", version: "2021-07-28" } }
    await limited("http://127.0.0.1:1234/locations/x", auth)
    // The server's max (100) replaces our configured 2.
    await limited("http://127.0.0.1:1234/locations/x", auth)
    await limited("http://127.0.0.1:1234/locations/x", auth)
    expect(clock.waits).toEqual([])
    // Unauthenticated calls (the token endpoint) and other origins pass through uncounted.
    await limited("http://127.0.0.1:1234/oauth/token", { method: "POST" })
    await limited("http://127.0.0.1:9999/other", auth)
    expect(seen).toHaveLength(5)
    const state = limited.limiter.state(HighLevel.bucketKey("Bearer token-1"))
    expect(state).toMatchObject({ max: 100, used: 3 })
  })
})

describe("HighLevel rate limiter shared by instances (the store's takeRateBudget)", () => {
  it("two instances take distinct slots of one budget per token; a spent window holds it for both", async () => {
    const { sharedRateBudget } = await import("../src/RateLimit.ts")
    const { ConnectionStore } = await import("@latchkey/core")
    const { Effect } = await import("effect")
    const store = ConnectionStore.makeMemory({ clock: () => 5_000_000 })
    const shared = sharedRateBudget(store)!
    const waits: Array<number> = []
    const sleep = async (ms: number) => {
      waits.push(ms)
    }
    const a = HighLevel.makeRateLimiter({ max: 10, intervalMs: 1_000, shared, sleep, now: () => 1 })
    const b = HighLevel.makeRateLimiter({ max: 10, intervalMs: 1_000, shared, sleep, now: () => 1 })
    for (let i = 0; i < 3; i++) {
      await a.acquire("token")
      await b.acquire("token")
    }
    // Six requests, one budget of 10 per second with 50 ms of jitter allowed: slots 105 ms apart
    // (the first one waits for nothing).
    expect(waits).toEqual([105, 210, 315, 420, 525])
    // The server says the window is spent: both instances' next slot is a window later.
    a.observe(
      "token",
      200,
      limits(0, { "x-ratelimit-max": "10", "x-ratelimit-interval-milliseconds": "1000" })
    )
    await new Promise((r) => setTimeout(r, 0))
    const next = await Effect.runPromise(store.takeRateBudget!("highlevel:token", 10, 1_000))
    expect(next).toBeGreaterThanOrEqual(1_600)
  })

  it("a request that would leave more than jitterMs after its fleet slot takes the next one (twice at most)", async () => {
    const { sharedRateBudget } = await import("../src/RateLimit.ts")
    const { ConnectionStore } = await import("@latchkey/core")
    // Each sleep wakes 60 ms late (a busy process): with 20 ms allowed every slot waited for is
    // given up, twice, then the request leaves; with 100 ms allowed every first slot is kept. (The
    // first request's slot is now: no wait, nothing late.)
    const slotsAsked = async (jitterMs: number) => {
      const store = ConnectionStore.makeMemory({ clock: () => 5_000_000 })
      const inner = sharedRateBudget(store)!
      let asked = 0
      const shared: typeof inner = (key, limit, windowMs, cost) => {
        asked++
        return inner(key, limit, windowMs, cost)
      }
      let t = 0
      const limiter = HighLevel.makeRateLimiter({
        max: 10,
        intervalMs: 1_000,
        shared,
        jitterMs,
        now: () => t,
        sleep: async (ms) => {
          t += ms + 60
        }
      })
      for (let i = 0; i < 3; i++) await limiter.acquire("token")
      return asked
    }
    expect(await slotsAsked(20)).toBe(1 + 3 + 3)
    expect(await slotsAsked(100)).toBe(3)
  })
})
