/**
 * HighLevel's API limits, per app and location (or company): a burst of `max` requests per
 * `intervalMs` (100 per 10 s) and a daily budget (200,000), reported on every answer with
 * `X-RateLimit-Max`, `X-RateLimit-Remaining`, `X-RateLimit-Interval-Milliseconds`,
 * `X-RateLimit-Limit-Daily` and `X-RateLimit-Daily-Remaining`; over the limit, 429 with `Retry-After`.
 */
export interface RateLimitOptions {
  readonly max?: number
  readonly intervalMs?: number
  readonly daily?: number
}

export interface RateDecision {
  readonly allowed: boolean
  readonly headers: Record<string, string>
}

const DAY_MS = 24 * 3600_000

export const makeServerRateLimit = (options: RateLimitOptions, now: () => number) => {
  const max = options.max ?? 100
  const intervalMs = options.intervalMs ?? 10_000
  const daily = options.daily ?? 200_000
  const windows = new Map<string, Array<number>>()
  const days = new Map<string, { day: number; used: number }>()

  const take = (key: string): RateDecision => {
    const t = now()
    const sent = (windows.get(key) ?? []).filter((s) => s > t - intervalMs)
    windows.set(key, sent)
    const today = Math.floor(t / DAY_MS)
    const d = days.get(key)?.day === today ? days.get(key)! : { day: today, used: 0 }
    days.set(key, d)
    const allowed = sent.length < max && d.used < daily
    if (allowed) {
      sent.push(t)
      d.used++
    }
    const headers: Record<string, string> = {
      "x-ratelimit-max": String(max),
      "x-ratelimit-remaining": String(Math.max(0, max - sent.length)),
      "x-ratelimit-interval-milliseconds": String(intervalMs),
      "x-ratelimit-limit-daily": String(daily),
      "x-ratelimit-daily-remaining": String(Math.max(0, daily - d.used))
    }
    if (!allowed) {
      const until = d.used >= daily ? (today + 1) * DAY_MS : sent[0]! + intervalMs
      headers["retry-after"] = String(Math.max(1, Math.ceil((until - t) / 1000)))
    }
    return { allowed, headers }
  }

  return { take, max, intervalMs, daily }
}
