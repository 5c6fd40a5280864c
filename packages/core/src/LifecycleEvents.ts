/**
 * Durable lifecycle events: what happened to a connection, appended to the store's event log in the
 * SAME atomic write as the state change (`insert(record, events)`, `update(record, version, events)`,
 * `remove(id, events)`), so that no event is lost when a process dies and none is invented when a
 * write fails. Any instance reads the log from a cursor (`readEvents(after, limit)`); see
 * `EventLog.ts` for the subscription API and docs/observability.md for the payloads.
 *
 * A payload never holds a token, a code, a secret or an account's e-mail: only ids, statuses,
 * times, counts and the provider's error codes.
 */
import { randomUUID } from "node:crypto"
import type { ConnectionKind } from "./Connection.ts"
import type { LatchkeyEvent } from "./Events.ts"

/** The payload of each event type (the `data` field). */
export interface LifecycleEventData {
  /** A new connection was linked. */
  readonly linked: { readonly kind: ConnectionKind; readonly scopes: ReadonlyArray<string> }
  /** A refresh stored new tokens. */
  readonly refreshed: {
    readonly expiresAt: number | null
    /** The refresh recovered one that was in doubt (a lost answer, or a holder that died). */
    readonly recovered: boolean
  }
  /** A refresh failed (transiently or not); `code` is the provider's error code when it gave one. */
  readonly refresh_failed: {
    readonly reason: string
    readonly code: string | null
    readonly retryable: boolean
  }
  /** Refreshes keep failing transiently; the connection still works until its token expires. */
  readonly degraded: {
    readonly failures: number
    readonly reason: string
    readonly nextAttemptAt: number | null
  }
  /** A degraded connection refreshed again, after `failures` failed refreshes over `degradedMs`. */
  readonly recovered: { readonly failures: number; readonly degradedMs: number }
  /** The grant is dead: the user must link again. `reason` is machine-readable (e.g. `invalid_grant`). */
  readonly needs_reauth: { readonly reason: string; readonly code: string | null }
  /**
   * A refresh whose answer was lost could not be completed (its one resend was refused): the
   * connection is `needs_reauth` with reason `refresh_interrupted`. `holder` and `startedAt` are
   * those of the refresh that was cut short (its journal), when known.
   */
  readonly refresh_interrupted: { readonly holder: string | null; readonly startedAt: number | null }
  /** The grant was revoked (`revoked_at_provider`, e.g. an uninstall webhook, or `revoked_by_user`). */
  readonly revoked: { readonly reason: string }
  /** The connection was removed. */
  readonly unlinked: { readonly revokedAtProvider: boolean }
  /** The same account was linked again: same connection id, new tokens; its health before. */
  readonly reconnected: { readonly previousState: string; readonly previousReason: string | null }
}

export type LifecycleEventType = keyof LifecycleEventData

export const lifecycleEventTypes: ReadonlyArray<LifecycleEventType> = [
  "linked",
  "refreshed",
  "refresh_failed",
  "degraded",
  "recovered",
  "needs_reauth",
  "refresh_interrupted",
  "revoked",
  "unlinked",
  "reconnected"
]

/** An event as written with a state change. */
export type LifecycleEvent = {
  readonly [K in LifecycleEventType]: {
    /** Unique (a UUID): the idempotency key of its webhook delivery. */
    readonly id: string
    readonly type: K
    /** When it happened (epoch ms, the writer's clock). */
    readonly at: number
    readonly connectionId: string
    readonly ownerId: string
    readonly providerId: string
    readonly data: LifecycleEventData[K]
  }
}[LifecycleEventType]

/** An event as read back from the log: `seq` is its place in the log, the cursor to read after. */
export type StoredLifecycleEvent = LifecycleEvent & { readonly seq: number }

/** One page of `readEvents`. */
export interface EventPage {
  readonly events: ReadonlyArray<StoredLifecycleEvent>
  /** The cursor after this page: the last event's `seq`, or `after` when the page is empty. */
  readonly next: number
}

/** Build an event with a fresh id. */
export const make = <K extends LifecycleEventType>(
  type: K,
  connection: { readonly id: string; readonly ownerId: string; readonly providerId: string },
  data: LifecycleEventData[K],
  at: number
): LifecycleEvent =>
  ({
    id: randomUUID(),
    type,
    at,
    connectionId: connection.id,
    ownerId: connection.ownerId,
    providerId: connection.providerId,
    data
  }) as LifecycleEvent

/** The JSON a store keeps for an event (without its `seq`, which the store assigns). */
export const encode = (event: LifecycleEvent): string =>
  JSON.stringify({
    id: event.id,
    type: event.type,
    at: event.at,
    connectionId: event.connectionId,
    ownerId: event.ownerId,
    providerId: event.providerId,
    data: event.data
  })

/** An event read back: its stored JSON and the sequence number the store gave it. */
export const decode = (seq: number, text: string): StoredLifecycleEvent =>
  ({ ...(JSON.parse(text) as LifecycleEvent), seq }) as StoredLifecycleEvent

/**
 * The durable event of an in-process event (`Events`), for the log: no message (messages may quote a
 * provider's answer), only ids, reasons, counts and times. Computed by `Connections` before the
 * write that makes the change. `undefined` for an event that has no durable form of its own: a
 * `linked` with `relinked` (its `reconnected` is the durable one).
 */
export const fromEvent = (
  event: LatchkeyEvent,
  options: { readonly code?: string | null } = {}
): LifecycleEvent | undefined => {
  const connection = { id: event.connectionId, ownerId: event.ownerId, providerId: event.providerId }
  switch (event.type) {
    case "linked":
      return event.relinked
        ? undefined
        : make(
            "linked",
            connection,
            { kind: event.connection.kind, scopes: [...event.connection.scopes] },
            event.at
          )
    case "reconnected":
      return make(
        "reconnected",
        connection,
        { previousState: event.previous.state, previousReason: event.previous.reason ?? null },
        event.at
      )
    case "refreshed":
      return make(
        "refreshed",
        connection,
        { expiresAt: event.expiresAt ?? null, recovered: event.recovered === true },
        event.at
      )
    case "refresh_failed":
      return make(
        "refresh_failed",
        connection,
        { reason: event.reason, code: options.code ?? null, retryable: event.retryable },
        event.at
      )
    case "degraded":
      return make(
        "degraded",
        connection,
        { failures: event.failures, reason: event.reason, nextAttemptAt: event.nextAttemptAt },
        event.at
      )
    case "recovered":
      return make(
        "recovered",
        connection,
        { failures: event.failures, degradedMs: event.degradedMs },
        event.at
      )
    case "needs_reauth":
      return event.reason === "refresh_interrupted"
        ? make(
            "refresh_interrupted",
            connection,
            { holder: event.interrupted?.holder ?? null, startedAt: event.interrupted?.startedAt ?? null },
            event.at
          )
        : make("needs_reauth", connection, { reason: event.reason, code: options.code ?? null }, event.at)
    case "revoked":
      return make("revoked", connection, { reason: event.reason ?? "revoked_at_provider" }, event.at)
    case "unlinked":
      return make("unlinked", connection, { revokedAtProvider: event.revokedAtProvider }, event.at)
  }
}
