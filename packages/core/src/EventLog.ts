/**
 * Reading the store's durable lifecycle event log from any instance: `EventLog.stream({ after })`
 * (Effect) and `subscribe({ after, onEvent })` (callbacks; `latchkey.events.subscribe` in the
 * Promise API). Delivery is at least once and in the log's order (so in order per connection):
 * a subscriber's cursor advances past an event only after its `onEvent` returned (or its promise
 * resolved); an `onEvent` that throws gets the same event again after `retryMs`. Keep the `seq` of
 * the last event you handled and pass it as `after` when you start again.
 *
 * The log is read by polling the store (`pollIntervalMs`); the events are written by the store
 * writes that make the changes (see `LifecycleEvents.ts`). With `retentionMs`, the layer prunes
 * events older than that in the background.
 */
import { Cause, Clock, Context, Effect, Fiber, Layer, Stream } from "effect"
import { ConnectionStore, type ConnectionStoreShape } from "./ConnectionStore.ts"
import { StoreError } from "./Errors.ts"
import type { EventPage, LifecycleEventType, StoredLifecycleEvent } from "./LifecycleEvents.ts"

export interface EventLogOptions {
  /** Delete events older than this (ms) in the background; default: keep them (prune yourself). */
  readonly retentionMs?: number | undefined
  /** How often the background pruning runs (default 1 h). */
  readonly pruneIntervalMs?: number | undefined
}

export interface ReadOptions {
  /** Start after this `seq` (default 0: from the oldest event the log still holds). */
  readonly after?: number | undefined
  /** How often the store is read when nothing new is there (default 1 s). */
  readonly pollIntervalMs?: number | undefined
  /** Events read per store call (default 100). */
  readonly batchSize?: number | undefined
  /** Only these types (the cursor still moves past the others). */
  readonly types?: ReadonlyArray<LifecycleEventType> | undefined
}

export interface SubscribeOptions extends ReadOptions {
  /** Called once per event, in order; the next event waits for its promise. */
  readonly onEvent: (event: StoredLifecycleEvent) => void | Promise<void>
  /** Called when `onEvent` or a store read failed (the same event is tried again after `retryMs`). */
  readonly onError?: ((error: unknown, event: StoredLifecycleEvent | undefined) => void) | undefined
  /** Wait before trying again after a failure (default 1 s). */
  readonly retryMs?: number | undefined
}

export interface Subscription {
  /** The `seq` of the last event handled (where to start next time). */
  readonly cursor: () => number
  /** Stop; resolves once the subscriber is stopped (an `onEvent` under way is interrupted). */
  readonly stop: () => Promise<void>
}

export interface EventLogShape {
  /** One page of the log after `after`. */
  readonly read: (after: number, limit: number) => Effect.Effect<EventPage, StoreError>
  /** Every event after `options.after`, forever (polling), in order. */
  readonly stream: (options?: ReadOptions) => Stream.Stream<StoredLifecycleEvent, StoreError>
  /**
   * Run `onEvent` for every event (at least once, in order) until the returned effect is
   * interrupted; `cursor` is updated after each handled event.
   */
  readonly consume: (
    options: Omit<SubscribeOptions, "onEvent"> & {
      readonly onEvent: (event: StoredLifecycleEvent) => Effect.Effect<void, unknown>
    },
    cursor?: { current: number }
  ) => Effect.Effect<never>
  /** Delete events older than `before` (epoch ms); how many. */
  readonly prune: (before: number) => Effect.Effect<number, StoreError>
}

const noLog = () =>
  new StoreError({
    reason: "unavailable",
    message: "this store has no lifecycle event log (readEvents); use a built-in store or implement it"
  })

const DEFAULT_POLL_MS = 1_000
const DEFAULT_BATCH = 100

/** The reader over a store (the service's implementation, usable without the layer). */
export const make = (store: ConnectionStoreShape): EventLogShape => {
  const read = (after: number, limit: number): Effect.Effect<EventPage, StoreError> =>
    store.readEvents === undefined ? Effect.fail(noLog()) : store.readEvents(after, limit)

  const stream = (options: ReadOptions = {}): Stream.Stream<StoredLifecycleEvent, StoreError> =>
    Stream.suspend(() => {
      let cursor = options.after ?? 0
      const poll = options.pollIntervalMs ?? DEFAULT_POLL_MS
      const batch = options.batchSize ?? DEFAULT_BATCH
      const types = options.types === undefined ? undefined : new Set(options.types)
      return Stream.fromEffectRepeat(
        Effect.gen(function* () {
          const page = yield* read(cursor, batch)
          if (page.events.length === 0) {
            yield* Effect.sleep(poll)
            return []
          }
          cursor = page.next
          return types === undefined ? page.events : page.events.filter((e) => types.has(e.type))
        })
      ).pipe(Stream.flattenIterable)
    })

  const consume: EventLogShape["consume"] = (options, cursorRef = { current: options.after ?? 0 }) =>
    Effect.gen(function* () {
      const poll = options.pollIntervalMs ?? DEFAULT_POLL_MS
      const batch = options.batchSize ?? DEFAULT_BATCH
      const retry = options.retryMs ?? DEFAULT_POLL_MS
      const types = options.types === undefined ? undefined : new Set(options.types)
      const report = (error: unknown, event: StoredLifecycleEvent | undefined) =>
        Effect.sync(() => {
          try {
            options.onError?.(error, event)
          } catch {
            // the app's reporter failing never stops the subscriber
          }
        })
      for (;;) {
        const page = yield* Effect.result(read(cursorRef.current, batch))
        if (page._tag === "Failure") {
          yield* report(page.failure, undefined)
          yield* Effect.sleep(retry)
          continue
        }
        if (page.success.events.length === 0) {
          yield* Effect.sleep(poll)
          continue
        }
        for (const event of page.success.events) {
          if (types === undefined || types.has(event.type)) {
            for (;;) {
              const handled = yield* Effect.exit(Effect.suspend(() => options.onEvent(event)))
              if (handled._tag === "Success") break
              if (Cause.hasInterruptsOnly(handled.cause)) return yield* Effect.interrupt
              yield* report(Cause.squash(handled.cause), event)
              yield* Effect.sleep(retry)
            }
          }
          cursorRef.current = event.seq
        }
      }
    })

  const prune = (before: number) =>
    store.pruneEvents === undefined ? Effect.fail(noLog()) : store.pruneEvents(before)

  return { read, stream, consume, prune }
}

export class EventLog extends Context.Service<EventLog, EventLogShape>()("@latchkey/core/EventLog") {
  static readonly layer = (options: EventLogOptions = {}) =>
    Layer.effect(
      EventLog,
      Effect.gen(function* () {
        const log = make(yield* ConnectionStore)
        const retention = options.retentionMs
        if (retention !== undefined) {
          const every = options.pruneIntervalMs ?? 60 * 60 * 1000
          yield* Effect.forkScoped(
            Effect.forever(
              Effect.gen(function* () {
                const now = yield* Clock.currentTimeMillis
                yield* Effect.ignore(log.prune(now - retention))
                yield* Effect.sleep(every)
              })
            )
          )
        }
        return EventLog.of(log)
      })
    )
}

/** The Promise API's `subscribe`, over a function that runs effects on the instance's runtime. */
export const subscribeWith = (
  fork: (effect: Effect.Effect<never, never, EventLog>) => Fiber.Fiber<never, unknown>,
  options: SubscribeOptions
): Subscription => {
  const cursor = { current: options.after ?? 0 }
  const fiber = fork(
    EventLog.use((log) =>
      log.consume(
        {
          ...options,
          onEvent: (event) =>
            Effect.tryPromise({
              try: async () => {
                await options.onEvent(event)
              },
              catch: (error) => error
            })
        },
        cursor
      )
    )
  )
  return {
    cursor: () => cursor.current,
    stop: () => Effect.runPromise(Fiber.interrupt(fiber)).then(() => undefined)
  }
}
