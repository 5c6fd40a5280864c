/**
 * Engine settings shared by every service. Defaults are chosen for production and documented here.
 */
import { Context } from "effect"

/** A budget of API requests: at most `limit` per `windowMs`. */
export interface ApiRateLimit {
  readonly limit: number
  readonly windowMs: number
  /** One budget for the provider (default), or one per connected account (e.g. a HighLevel location). */
  readonly per?: "provider" | "account" | undefined
  /**
   * How late a request may leave after its slot with every `windowMs` still holding at most `limit`
   * requests (default 50 ms): slots are spaced `(windowMs + jitterMs) / limit` apart, and a request
   * that would leave more than `jitterMs` after its slot takes the next one (at most twice, and not
   * when the budget's own answer takes longer than `jitterMs`). 0 spaces them exactly.
   */
  readonly jitterMs?: number | undefined
}

export interface LatchkeyConfigShape {
  /**
   * Refresh an access token this long before it expires (default 5 minutes, as Google's and
   * Microsoft's client libraries do: it covers clock drift between us and the provider and the time a
   * request spends in flight). Never more than a quarter of the token's lifetime, so that tokens
   * living seconds are not refreshed on every call.
   */
  readonly skewMs: number
  /** How long a refresh lease is held before another process may take over (default 30 s). */
  readonly leaseTtlMs: number
  /**
   * How long a refresh whose holder went silent (its lease lapsed with its journal unfinished) is
   * left alone before another instance treats it as in doubt and resends, where the provider's facts
   * say a resend is not safe at once (default 2 minutes: well above the lease, so that a holder cut
   * off from the store for a while can still come back and write its tokens). Keep it well above
   * `requestTimeoutMs`: a holder's request may still be in flight that long after its lease lapsed.
   */
  readonly inDoubtAfterMs: number
  /**
   * How long `close()` waits, from its call, for refreshes in flight to finish their write and for
   * the other calls under way to finish (default 20 s).
   */
  readonly drainTimeoutMs: number
  /** Longest pause between two attempts to write freshly rotated tokens (default 1 s). */
  readonly writeMaxBackoffMs: number
  /** Timeout of one HTTP request to a token endpoint (default 10 s). */
  readonly requestTimeoutMs: number
  /** Attempts for one refresh when failures are transient (default 4). */
  readonly maxAttempts: number
  /** First backoff between attempts (default 250 ms), doubled each time, with full jitter. */
  readonly baseBackoffMs: number
  /** Longest wait honoured for a `Retry-After` or a backoff (default 10 s). */
  readonly maxBackoffMs: number
  /**
   * After a failed refresh (the connection is `degraded`), how long the background Refresher waits
   * before trying it again (default 30 s), doubled after each further failure, at least the
   * provider's `Retry-After`, at most `degradedRetryMaxMs`. Callers needing a token may try sooner.
   */
  readonly degradedRetryMs: number
  /** The longest wait between the Refresher's attempts on a degraded connection (default 15 minutes). */
  readonly degradedRetryMaxMs: number
  /** How long a pending authorization (state, PKCE verifier) lives (default 10 minutes). */
  readonly pendingTtlMs: number
  /** The Refresher refreshes access tokens this long before expiry (default 10 minutes, at most half the lifetime). */
  readonly refreshAheadMs: number
  /** The Refresher rotates refresh tokens this long before they expire (default 30 days, at most a tenth of their lifetime). */
  readonly refreshTokenAheadMs: number
  /** Longest wait for a rate-limited API request's `Retry-After` (default 30 s). */
  readonly apiMaxRetryAfterMs: number
  /**
   * API request budgets by provider id, kept by the ApiClient before every request and shared by
   * every instance on the store when it offers `takeRateBudget` (else per process). A response saying
   * the budget is spent (`X-RateLimit-Remaining: 0` with `X-RateLimit-Reset` or
   * `X-RateLimit-Interval-Milliseconds`) holds the budget until the reset for every instance. Default none.
   */
  readonly apiRateLimits?: Readonly<Record<string, ApiRateLimit>> | undefined
  /** Decoded connections kept per process (an LRU; default 10,000). */
  readonly decodedCacheSize?: number | undefined
  /** Identifies this process as a lease holder. */
  readonly holderId: string
  /** The fetch used for every outbound request. */
  readonly fetch: typeof fetch
}

/**
 * The default `fetch`: the global one, looked up at each call. Token-endpoint requests made with it
 * go over Latchkey's lean HTTP/1.1 transport instead when nothing is installed around the global
 * `fetch` (see the core README, "Transport"); any other `fetch` given in the config is used as is.
 */
export const defaultFetch: typeof fetch = (input, init) => fetch(input, init)

export const defaults = (): LatchkeyConfigShape => ({
  skewMs: 5 * 60_000,
  leaseTtlMs: 30_000,
  inDoubtAfterMs: 120_000,
  drainTimeoutMs: 20_000,
  writeMaxBackoffMs: 1_000,
  requestTimeoutMs: 10_000,
  maxAttempts: 4,
  baseBackoffMs: 250,
  maxBackoffMs: 10_000,
  degradedRetryMs: 30_000,
  degradedRetryMaxMs: 15 * 60_000,
  pendingTtlMs: 10 * 60_000,
  refreshAheadMs: 10 * 60_000,
  refreshTokenAheadMs: 30 * 24 * 3600_000,
  apiMaxRetryAfterMs: 30_000,
  holderId: `${process.pid}-${crypto.randomUUID()}`,
  fetch: defaultFetch
})

export class LatchkeyConfig extends Context.Service<LatchkeyConfig, LatchkeyConfigShape>()(
  "@latchkey/core/LatchkeyConfig"
) {}
