/**
 * What happened to connections: linked, reconnected, refreshed, refresh_failed, degraded, recovered,
 * needs_reauth, revoked, unlinked. Every event has the same core: `type`, `at`, `connectionId`,
 * `ownerId`, `providerId`. State changes (all but the `refresh_failed` of a retry inside one refresh)
 * are attached to the write that makes them and published once it is durable.
 * Available as an Effect Stream (`Events.stream`) and as plain callbacks (`Events.subscribe`).
 * Events are in-process: each process sees the events of the work it did.
 */
import { Context, Effect, Layer, PubSub, Stream } from "effect"
import type {
  ConnectionHealthState,
  ConnectionSummary,
  DegradedReason,
  NeedsReauthReason,
  RevokedReason
} from "./Connection.ts"

export type LatchkeyEvent =
  | {
      readonly type: "linked"
      readonly at: number
      readonly connectionId: string
      readonly ownerId: string
      readonly providerId: string
      /** The linked connection (no token values). */
      readonly connection: ConnectionSummary
      readonly relinked: boolean
      /** Scopes the provider granted beyond those asked for (RFC 6749 §3.3), when there are any. */
      readonly widenedScopes?: ReadonlyArray<string> | undefined
    }
  | {
      /**
       * An account linked before was linked again (published after its `linked`, whose `relinked`
       * is true): same connection id and `createdAt`, new tokens, status `active`.
       */
      readonly type: "reconnected"
      readonly at: number
      readonly connectionId: string
      readonly ownerId: string
      readonly providerId: string
      /** Its health before: why it was linked again. */
      readonly previous: {
        readonly state: ConnectionHealthState
        readonly reason?: DegradedReason | NeedsReauthReason | RevokedReason | undefined
      }
    }
  | {
      readonly type: "refreshed"
      readonly at: number
      readonly connectionId: string
      readonly ownerId: string
      readonly providerId: string
      readonly expiresAt: number | undefined
      readonly refreshExpiresAt: number | undefined
      /** From the provider's answer to the durable write (ms): the only window a crash can exploit. */
      readonly commitMs?: number | undefined
      /** The refresh recovered one that was in doubt (a lost answer, or a holder that died). */
      readonly recovered?: boolean | undefined
      /** Scopes the provider granted beyond those asked for, when it widened them. */
      readonly widenedScopes?: ReadonlyArray<string> | undefined
    }
  | {
      readonly type: "refresh_failed"
      readonly at: number
      readonly connectionId: string
      readonly ownerId: string
      readonly providerId: string
      readonly reason: string
      readonly message: string
      readonly retryable: boolean
    }
  | {
      /**
       * The first failed refresh of a healthy connection (a transient failure: the grant is still
       * good, its status stays `active` and the engine keeps retrying).
       */
      readonly type: "degraded"
      readonly at: number
      readonly connectionId: string
      readonly ownerId: string
      readonly providerId: string
      readonly reason: DegradedReason
      readonly message: string
      /** Consecutive failed refreshes (1 for this event). */
      readonly failures: number
      /** When the background Refresher tries again at the earliest (epoch ms). */
      readonly nextAttemptAt: number
    }
  | {
      /** The first successful refresh of a degraded connection. */
      readonly type: "recovered"
      readonly at: number
      readonly connectionId: string
      readonly ownerId: string
      readonly providerId: string
      /** How many refreshes had failed in a row. */
      readonly failures: number
      /** How long it was degraded (ms, from its first failure to this success). */
      readonly degradedMs: number
    }
  | {
      readonly type: "needs_reauth"
      readonly at: number
      readonly connectionId: string
      readonly ownerId: string
      readonly providerId: string
      readonly reason: string
      readonly message: string
      /** With reason `refresh_interrupted`: the refresh that was cut short (its journal). */
      readonly interrupted?: { readonly holder: string; readonly startedAt: number } | undefined
    }
  | {
      readonly type: "revoked"
      readonly at: number
      readonly connectionId: string
      readonly ownerId: string
      readonly providerId: string
      /** Why (absent in events of earlier releases): as the summary's `health.reason`. */
      readonly reason?: RevokedReason | undefined
    }
  | {
      readonly type: "unlinked"
      readonly at: number
      readonly connectionId: string
      readonly ownerId: string
      readonly providerId: string
      readonly revokedAtProvider: boolean
    }

export type LatchkeyEventType = LatchkeyEvent["type"]

export interface EventsShape {
  readonly publish: (event: LatchkeyEvent) => Effect.Effect<void>
  readonly stream: Stream.Stream<LatchkeyEvent>
  /** Call `listener` for every event; returns a function that stops it. A throwing listener is ignored. */
  readonly subscribe: (listener: (event: LatchkeyEvent) => void) => () => void
}

export class Events extends Context.Service<Events, EventsShape>()("@latchkey/core/Events") {
  static readonly layer = Layer.effect(
    Events,
    Effect.gen(function* () {
      const pubsub = yield* PubSub.unbounded<LatchkeyEvent>()
      yield* Effect.addFinalizer(() => PubSub.shutdown(pubsub))
      const listeners = new Set<(event: LatchkeyEvent) => void>()
      const publish = (event: LatchkeyEvent) =>
        Effect.suspend(() => {
          for (const listener of listeners) {
            try {
              listener(event)
            } catch {
              // a listener's failure is the app's; it never breaks the engine
            }
          }
          return PubSub.publish(pubsub, event)
        }).pipe(Effect.asVoid)
      return Events.of({
        publish,
        stream: Stream.fromPubSub(pubsub),
        subscribe: (listener) => {
          listeners.add(listener)
          return () => {
            listeners.delete(listener)
          }
        }
      })
    })
  )
}
