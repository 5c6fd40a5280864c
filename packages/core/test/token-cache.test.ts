/**
 * The Promise API's token cache on its own (the conformance suite checks it on every store through
 * `createLatchkey`): shared lookups, lookups overtaken by a change, trust without a live channel.
 */
import { describe, expect, it } from "vitest"
import { TokenCache } from "../src/internal/tokenCache.ts"

const deferred = <A>() => {
  let resolve!: (a: A) => void
  let reject!: (e: unknown) => void
  const promise = new Promise<A>((res, rej) => {
    resolve = res
    reject = rej
  })
  return { promise, resolve, reject }
}

describe("TokenCache", () => {
  it("1,000 concurrent callers of one id share one lookup; the next ones are served from the cache", async () => {
    const cache = new TokenCache(() => 1_000)
    cache.onChange({ _tag: "Live" })
    let lookups = 0
    const answer = deferred<{ token: string; freshUntil: number }>()
    const calls = Array.from({ length: 1_000 }, () =>
      cache.accessToken("a", () => {
        lookups++
        return answer.promise
      })
    )
    answer.resolve({ token: "T", freshUntil: 5_000 })
    expect(new Set(await Promise.all(calls))).toEqual(new Set(["T"]))
    expect(lookups).toBe(1)
    expect(await cache.accessToken("a", () => Promise.reject(new Error("no lookup expected")))).toBe("T")
  })

  it("a lookup overtaken by a change of its id is not cached, and later callers do not join it", async () => {
    const cache = new TokenCache(() => 1_000)
    cache.onChange({ _tag: "Live" })
    const first = deferred<{ token: string; freshUntil: number }>()
    const old = cache.accessToken("a", () => first.promise)
    cache.onChange({ _tag: "Changed", id: "a" })
    const fresh = cache.accessToken("a", async () => ({ token: "NEW", freshUntil: 5_000 }))
    first.resolve({ token: "OLD", freshUntil: 5_000 })
    expect(await old).toBe("OLD")
    expect(await fresh).toBe("NEW")
    expect(cache.get("a")).toBe("NEW")
    // The same after a flush (a channel that reconnected).
    const slow = deferred<{ token: string; freshUntil: number }>()
    cache.onChange({ _tag: "Changed", id: "b" })
    const pending = cache.accessToken("b", () => slow.promise)
    cache.onChange({ _tag: "Live" })
    slow.resolve({ token: "STALE", freshUntil: 5_000 })
    await pending
    expect(cache.get("b")).toBeUndefined()
    expect(cache.get("a")).toBeUndefined()
  })

  it("without a live channel an entry is trusted maxStaleMs only; a lost channel flushes", async () => {
    let now = 0
    const cache = new TokenCache(() => now, { maxStaleMs: 100 })
    await cache.accessToken("a", async () => ({ token: "T", freshUntil: 10_000 }))
    now = 99
    expect(cache.get("a")).toBe("T")
    now = 100
    expect(cache.get("a")).toBeUndefined()
    cache.onChange({ _tag: "Live" })
    await cache.accessToken("a", async () => ({ token: "T", freshUntil: 10_000 }))
    now = 5_000
    expect(cache.get("a")).toBe("T")
    cache.onChange({ _tag: "Lost" })
    expect(cache.get("a")).toBeUndefined()
    expect(cache.isLive).toBe(false)
    // Past the token's own freshness it is never served, live or not.
    cache.onChange({ _tag: "Live" })
    await cache.accessToken("a", async () => ({ token: "T", freshUntil: 6_000 }))
    now = 6_000
    expect(cache.get("a")).toBeUndefined()
  })

  it("a failed lookup is shared by its callers and not cached", async () => {
    const cache = new TokenCache(() => 0)
    cache.onChange({ _tag: "Live" })
    let lookups = 0
    const failing = () => {
      lookups++
      return Promise.reject(new Error("store down"))
    }
    const results = await Promise.allSettled([
      cache.accessToken("a", failing),
      cache.accessToken("a", failing)
    ])
    expect(results.map((r) => r.status)).toEqual(["rejected", "rejected"])
    expect(lookups).toBe(1)
    expect(cache.get("a")).toBeUndefined()
  })
})
