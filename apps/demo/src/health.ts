/**
 * A connection's health for the cards — active, degraded, needs reconnect, revoked — with a
 * machine-readable reason, derived here from the store's durable event log (`refresh_failed`,
 * `degraded`, `recovered`, `refreshed`, `needs_reauth`, `revoked`…) and the summary's status, so that
 * it covers the refreshes of every process. `CardHealth` has the shape of the engine's
 * `ConnectionSummary.health` (state, reason, failures, since, nextAttemptAt): once the summary carries
 * it, `healthOf` in app.ts becomes `(c) => c.health`.
 */
import type { Connection, LifecycleEvents } from "@latchkey/core"

type Summary = Connection.ConnectionSummary
type LogEvent = LifecycleEvents.StoredLifecycleEvent

export type CardHealth =
  | { readonly state: "active" }
  | {
      readonly state: "degraded"
      /** The last failure's reason (`transient`, `rate_limited`, `invalid_response`, …). */
      readonly reason: string
      /** Failed refresh attempts since the last success. */
      readonly failures: number
      /** When the first of them failed (epoch ms). */
      readonly since: number
      /** When the engine tries again at the earliest (epoch ms), when the log says. */
      readonly nextAttemptAt?: number | undefined
    }
  | { readonly state: "needs_reauth"; readonly reason: string; readonly since?: number | undefined }
  | { readonly state: "revoked"; readonly reason: string; readonly since?: number | undefined }

/**
 * `refresh_failed` reasons that say nothing about the provider's health: a crash's refresh in doubt
 * (shown from the refresh journal), another process's lease, a drain, a lost write race.
 */
const NOT_PROVIDER_FAILURES = new Set([
  "in_doubt",
  "answer_lost",
  "lease_timeout",
  "draining",
  "pending_write",
  "conflict"
])

interface Streak {
  failures: number
  reason: string
  since: number
  lastAt: number
  nextAttemptAt: number | undefined
}

/** The health of each connection, as the events of the log (applied in `seq` order) tell it. */
export class HealthFromLog {
  private readonly streaks = new Map<string, Streak>()
  private readonly ended = new Map<string, { readonly reason: string; readonly at: number }>()

  apply(event: LogEvent): void {
    const id = event.connectionId
    switch (event.type) {
      case "refresh_failed": {
        if (!event.data.retryable || NOT_PROVIDER_FAILURES.has(event.data.reason)) return
        const s = this.streaks.get(id)
        if (s === undefined) {
          this.streaks.set(id, {
            failures: 1,
            reason: event.data.reason,
            since: event.at,
            lastAt: event.at,
            nextAttemptAt: undefined
          })
        } else if (s.lastAt !== event.at) {
          // (a `degraded` event of the same write counts the same failure)
          s.failures++
          s.reason = event.data.reason
          s.lastAt = event.at
        }
        return
      }
      case "degraded": {
        const s = this.streaks.get(id)
        this.streaks.set(id, {
          failures: Math.max(s?.failures ?? 0, event.data.failures),
          reason: event.data.reason,
          since: s?.since ?? event.at,
          lastAt: event.at,
          nextAttemptAt: event.data.nextAttemptAt ?? undefined
        })
        return
      }
      case "refreshed":
      case "recovered":
        this.streaks.delete(id)
        return
      case "linked":
      case "reconnected":
      case "unlinked":
        this.streaks.delete(id)
        this.ended.delete(id)
        return
      case "needs_reauth":
        this.streaks.delete(id)
        this.ended.set(id, { reason: event.data.reason, at: event.at })
        return
      case "revoked":
        this.streaks.delete(id)
        this.ended.set(id, { reason: `revoked_${event.data.source}`, at: event.at })
        return
      case "refresh_interrupted":
        return
    }
  }

  /** Failed refresh attempts since the connection's last success (0: none). */
  failures(connectionId: string): number {
    return this.streaks.get(connectionId)?.failures ?? 0
  }

  /** The card's health: the stored status first, then the log's failure streak. */
  of(c: Summary): CardHealth {
    const ended = this.ended.get(c.id)
    if (c.status === "needs_reauth")
      return {
        state: "needs_reauth",
        reason: ended?.reason ?? c.lastError?.code ?? "needs_reauth",
        since: ended?.at ?? c.lastError?.at
      }
    if (c.status === "revoked")
      return { state: "revoked", reason: ended?.reason ?? "revoked", since: ended?.at ?? c.lastError?.at }
    const s = this.streaks.get(c.id)
    // A streak older than the tokens in the row was ended by a write the log did not show yet.
    if (s === undefined || (c.lastRefreshAt !== undefined && c.lastRefreshAt > s.lastAt))
      return { state: "active" }
    return {
      state: "degraded",
      reason: s.reason,
      failures: s.failures,
      since: s.since,
      nextAttemptAt: s.nextAttemptAt
    }
  }
}

/** A health's reason in plain words (the machine-readable reason is shown beside it). */
export const healthText = (h: CardHealth, providerName: string): string => {
  switch (h.state) {
    case "active":
      return "Refreshes succeed."
    case "degraded": {
      const why =
        h.reason === "transient"
          ? `${providerName} could not be reached or answered with a server error`
          : h.reason === "rate_limited"
            ? `${providerName} is rate limiting refreshes`
            : h.reason === "invalid_response"
              ? `${providerName} answered with something that is not a token response`
              : h.reason === "invalid_client"
                ? `${providerName} refused the app’s client credentials`
                : `refreshes at ${providerName} fail`
      const tries = `${h.failures} refresh attempt${h.failures === 1 ? "" : "s"} failed`
      return `${why}: ${tries}. The grant is good and the tokens are intact; Latchkey keeps retrying and the card turns Active again at the next successful refresh.`
    }
    case "needs_reauth":
      return h.reason === "invalid_grant"
        ? `${providerName} no longer accepts the grant.`
        : h.reason === "refresh_interrupted"
          ? "A refresh was interrupted and its one resend was refused."
          : h.reason === "refresh_token_expired"
            ? "The refresh token expired."
            : h.reason === "no_refresh_token"
              ? `${providerName} gave no refresh token and the access token expired.`
              : `${providerName} must be linked again.`
    case "revoked":
      return `Access was revoked (${h.reason.replace(/^revoked_/, "").replaceAll("_", " ")}).`
  }
}
