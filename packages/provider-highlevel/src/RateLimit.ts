/**
 * HighLevel limits each app per location (or company) to a burst of 100 requests per 10 s and says
 * where a caller stands in every answer: `X-RateLimit-Max`, `X-RateLimit-Remaining`,
 * `X-RateLimit-Interval-Milliseconds` (and the daily `X-RateLimit-Limit-Daily`,
 * `X-RateLimit-Daily-Remaining`). `rateLimitedFetch` keeps within them: it counts the requests it sent
 * per token in a sliding window, takes the server's word when the server has counted more (other
 * processes share the same budget), waits instead of sending when the window is full, and after a
 * 429 waits for `Retry-After`. Pass it as Latchkey's `config.fetch` so the ApiClient goes through it.
 *
 * Across instances: give `shared: sharedRateBudget(store)` and every instance on that store takes
 * its requests from one budget per token (the store's `takeRateBudget`: slots
 * `(intervalMs + jitterMs) / max` apart on the store's clock, each request leaving within `jitterMs`
 * of its slot or taking the next), and a spent window or a 429 seen by one holds the budget for all.
 */
import { createHash } from "node:crypto"
import type { ConnectionStore } from "@latchkey/core/provider"
import { Effect } from "effect"
import { API_URL } from "./internal.ts"

export interface RateLimitState {
  /** Requests allowed per interval (from `X-RateLimit-Max`; default 100). */
  readonly max: number
  readonly intervalMs: number
  /** Requests counted in the current window (ours, or the server's count when higher). */
  readonly used: number
  /** Last `X-RateLimit-Daily-Remaining` seen. */
  readonly dailyRemaining: number | undefined
  /** Until when nothing is sent (after a 429). */
  readonly blockedUntil: number
}

/** A budget shared by instances: reserve `cost` slots of `key`; resolves the wait (ms) before ours. */
export type SharedRateBudget = (
  key: string,
  limit: number,
  windowMs: number,
  cost?: number
) => Promise<number>

/** The store's `takeRateBudget` as a `SharedRateBudget` (`undefined` when the store has none). */
export const sharedRateBudget = (
  store: ConnectionStore.ConnectionStoreShape
): SharedRateBudget | undefined => {
  const take = store.takeRateBudget
  return take === undefined
    ? undefined
    : (key, limit, windowMs, cost) => Effect.runPromise(take(key, limit, windowMs, cost))
}

export interface RateLimiterOptions {
  /** One budget per token for every instance on a store (see `sharedRateBudget`). */
  readonly shared?: SharedRateBudget | undefined
  readonly max?: number
  readonly intervalMs?: number
  readonly now?: () => number
  readonly sleep?: (ms: number) => Promise<void>
  /** Buckets kept (least recently used are dropped). Default 10,000. */
  readonly maxKeys?: number
  /**
   * With `shared`: how late a request may leave after its fleet slot with every interval still
   * holding at most `max` requests (default 50 ms). Slots are spaced `(intervalMs + jitterMs) / max`
   * apart, and a request that would leave more than `jitterMs` after its slot (counted from before
   * the slot was asked for) takes the next one, at most twice, unless the budget's own answer took
   * longer than `jitterMs`. 0 spaces them exactly.
   */
  readonly jitterMs?: number
}

export interface RateLimiter {
  /** Wait until a request for `key` fits in the window, then count it. */
  readonly acquire: (key: string) => Promise<void>
  /** Read the rate-limit headers of an answer for `key`. */
  readonly observe: (key: string, status: number, headers: Headers) => void
  readonly state: (key: string) => RateLimitState | undefined
}

interface Bucket {
  max: number
  intervalMs: number
  sent: Array<number>
  blockedUntil: number
  dailyRemaining: number | undefined
}

const int = (headers: Headers, name: string): number | undefined => {
  const v = headers.get(name)
  if (v === null || v.trim() === "") return undefined
  const n = Number(v)
  return Number.isFinite(n) && n >= 0 ? Math.floor(n) : undefined
}

export const makeRateLimiter = (options: RateLimiterOptions = {}): RateLimiter => {
  const now = options.now ?? Date.now
  const sleep = options.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)))
  const maxKeys = options.maxKeys ?? 10_000
  const jitterMs =
    options.jitterMs !== undefined && Number.isFinite(options.jitterMs) && options.jitterMs >= 0
      ? options.jitterMs
      : 50
  const buckets = new Map<string, Bucket>()

  const bucket = (key: string): Bucket => {
    let b = buckets.get(key)
    if (b === undefined) {
      b = {
        max: options.max ?? 100,
        intervalMs: options.intervalMs ?? 10_000,
        sent: [],
        blockedUntil: 0,
        dailyRemaining: undefined
      }
      if (buckets.size >= maxKeys) buckets.delete(buckets.keys().next().value!)
    } else buckets.delete(key)
    buckets.set(key, b)
    return b
  }

  const prune = (b: Bucket, t: number) => {
    while (b.sent.length > 0 && b.sent[0]! <= t - b.intervalMs) b.sent.shift()
  }

  const acquire = async (key: string) => {
    for (let i = 0; i < 10_000; i++) {
      const b = bucket(key)
      const t = now()
      prune(b, t)
      if (b.blockedUntil > t) {
        await sleep(b.blockedUntil - t)
        continue
      }
      if (b.sent.length < b.max) {
        b.sent.push(t)
        if (options.shared !== undefined) {
          // The fleet's budget: our slot among every instance's requests for this token, left
          // within `jitterMs` of it, or the next one taken (a late request next to a later one on
          // time would put one more than `max` into an interval).
          // (`internal/pace.ts` in @latchkey/core is the same rule for Effect code.)
          for (let attempt = 0; ; attempt++) {
            const asked = now()
            const wait = await options
              .shared(`highlevel:${key}`, b.max, b.intervalMs + jitterMs)
              .catch(() => 0)
            // A budget whose own answer takes longer than the jitter would make every slot late.
            const roundTrip = now() - asked
            if (wait > 0) await sleep(wait)
            if (now() - asked - wait <= jitterMs || roundTrip > jitterMs || attempt >= 2) break
          }
        }
        return
      }
      await sleep(Math.max(1, b.sent[0]! + b.intervalMs - t))
    }
    throw new Error("HighLevel rate limiter: gave up waiting for a slot")
  }

  const observe = (key: string, status: number, headers: Headers) => {
    const b = bucket(key)
    const t = now()
    const max = int(headers, "x-ratelimit-max")
    const interval = int(headers, "x-ratelimit-interval-milliseconds")
    const remaining = int(headers, "x-ratelimit-remaining")
    if (max !== undefined && max > 0) b.max = max
    if (interval !== undefined && interval > 0) b.intervalMs = interval
    b.dailyRemaining = int(headers, "x-ratelimit-daily-remaining") ?? b.dailyRemaining
    prune(b, t)
    if (remaining !== undefined) {
      // The server counted more than we sent: others share this budget. Count theirs as sent now.
      const serverUsed = Math.max(0, b.max - remaining)
      for (let missing = serverUsed - b.sent.length; missing > 0; missing--) b.sent.push(t)
    }
    if (status === 429) {
      const retryAfter = headers.get("retry-after")
      const seconds = retryAfter === null ? Number.NaN : Number(retryAfter)
      const wait = Number.isFinite(seconds)
        ? seconds * 1000
        : retryAfter !== null && !Number.isNaN(Date.parse(retryAfter))
          ? Date.parse(retryAfter) - t
          : b.intervalMs
      b.blockedUntil = Math.max(b.blockedUntil, t + Math.max(0, wait))
    }
    // Spent (the server's count, or a 429): hold the fleet's budget until the window ends.
    if (options.shared !== undefined && (status === 429 || remaining === 0)) {
      const hold = Math.max(b.blockedUntil - t, remaining === 0 ? b.intervalMs : 0)
      if (hold > 0) {
        const windowMs = b.intervalMs + jitterMs
        const cost = Math.ceil(hold / (windowMs / b.max))
        void options.shared(`highlevel:${key}`, b.max, windowMs, cost).catch(() => 0)
      }
    }
  }

  const state = (key: string): RateLimitState | undefined => {
    const b = buckets.get(key)
    if (b === undefined) return undefined
    prune(b, now())
    return {
      max: b.max,
      intervalMs: b.intervalMs,
      used: b.sent.length,
      dailyRemaining: b.dailyRemaining,
      blockedUntil: b.blockedUntil
    }
  }

  return { acquire, observe, state }
}

export interface RateLimitedFetchOptions extends RateLimiterOptions {
  /** The fetch to wrap (default: the global fetch). */
  readonly fetch?: typeof fetch
  /** The API origin(s) to limit; other requests pass through. Default the HighLevel API. */
  readonly apiUrl?: string | ReadonlyArray<string>
  readonly limiter?: RateLimiter
}

/** The bucket of a request: its bearer token, hashed (a token is one location or company). */
export const bucketKey = (authorization: string): string =>
  createHash("sha256").update(authorization).digest("base64url").slice(0, 22)

/** A fetch that keeps HighLevel API calls within the rate-limit headers, per location/company token. */
export const rateLimitedFetch = (
  options: RateLimitedFetchOptions = {}
): typeof fetch & { readonly limiter: RateLimiter } => {
  const inner = options.fetch ?? ((input, init) => fetch(input, init))
  const limiter = options.limiter ?? makeRateLimiter(options)
  const origins = new Set(
    (typeof options.apiUrl === "string" ? [options.apiUrl] : (options.apiUrl ?? [API_URL])).map(
      (u) => new URL(u).origin
    )
  )
  const limited = async (input: RequestInfo | URL, init?: RequestInit): Promise<Response> => {
    const request = input instanceof Request ? input : undefined
    const url = new URL(request ? request.url : input instanceof URL ? input.href : String(input))
    const authorization = new Headers(init?.headers ?? request?.headers).get("authorization")
    if (!origins.has(url.origin) || authorization === null || !/^bearer /i.test(authorization)) {
      return inner(input, init)
    }
    const key = bucketKey(authorization)
    await limiter.acquire(key)
    const response = await inner(input, init)
    limiter.observe(key, response.status, response.headers)
    return response
  }
  return Object.assign(limited as typeof fetch, { limiter })
}
