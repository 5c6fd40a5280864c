/**
 * The activity feed's lines, from the store's durable event log: every process's events (the web
 * process and each refresh worker), in `seq` order, kept across restarts. The payloads carry ids,
 * reasons and counts only; the account's name comes from the connection summaries (joined by id).
 */
import type { LifecycleEvents } from "@latchkey/core"
import { type RefreshedBy, refreshedByText } from "./messages.ts"

type LogEvent = LifecycleEvents.StoredLifecycleEvent

/** Who did a refresh, as this process learned it from the engines' in-process events. */
export interface Attribution {
  /** `web` or a worker (`worker-2`). */
  readonly process: string
  readonly by: RefreshedBy
}

const clock = (ms: number) => `${new Date(ms).toISOString().slice(11, 19)} UTC`

/** One line of the feed for an event of the log. */
export const logEventText = (
  event: LogEvent,
  label: string,
  providerName: string,
  attribution: Attribution | undefined
): { readonly kind: "success" | "error" | "info"; readonly text: string } => {
  const who = `${providerName} · ${label}`
  switch (event.type) {
    case "linked":
      return { kind: "success", text: `${who}: linked` }
    case "reconnected":
      return {
        kind: "success",
        text: `${who}: reconnected${event.data.previousState !== "active" ? ` (was ${event.data.previousState.replace("_", " ")})` : ""}`
      }
    case "refreshed": {
      const by =
        attribution === undefined
          ? ""
          : ` ${attribution.by === "worker" ? `by ${attribution.process}` : refreshedByText[attribution.by]}`
      return event.data.recovered
        ? {
            kind: "success",
            text: `${who}: an interrupted refresh recovered${by} (its one resend was accepted); nothing lost`
          }
        : { kind: "info", text: `${who}: tokens refreshed${by}` }
    }
    case "refresh_failed": {
      const d = event.data
      if (d.reason === "in_doubt")
        return {
          kind: "error",
          text: `${who}: a refresh is in doubt (its holder went silent); Latchkey waits before it resends`
        }
      if (d.reason === "answer_lost")
        return { kind: "error", text: `${who}: the answer to a refresh was lost; Latchkey resends it once` }
      return {
        kind: "error",
        text: `${who}: refresh attempt failed (${d.reason}${d.code ? `, ${d.code}` : ""})${d.retryable ? "; tokens intact, Latchkey retries" : ""}`
      }
    }
    case "degraded":
      return {
        kind: "error",
        text: `${who}: degraded, ${event.data.failures} failed refresh${event.data.failures === 1 ? "" : "es"} (${event.data.reason})${event.data.nextAttemptAt ? `; next attempt ${clock(event.data.nextAttemptAt)}` : ""}`
      }
    case "recovered":
      return {
        kind: "success",
        text: `${who}: healthy again after ${event.data.failures} failed refresh${event.data.failures === 1 ? "" : "es"}`
      }
    case "needs_reauth":
      return event.data.reason === "refresh_interrupted"
        ? { kind: "error", text: `${who}: refresh interrupted, reconnect needed (refresh_interrupted)` }
        : {
            kind: "error",
            text: `${who}: ${providerName} no longer accepts the grant; reconnect needed (${event.data.reason})`
          }
    case "refresh_interrupted":
      return {
        kind: "error",
        text: `${who}: a refresh ${event.data.holder ? `sent by ${event.data.holder} ` : ""}was interrupted and its one resend refused`
      }
    case "revoked":
      return {
        kind: "error",
        text: `${who}: access revoked${event.data.reason === "revoked_by_user" ? " by the user" : ` at ${providerName}`}`
      }
    case "unlinked":
      return {
        kind: "info",
        text: `${who}: unlinked${event.data.revokedAtProvider ? `, and revoked at ${providerName}` : ""}`
      }
  }
}
