/**
 * Webhooks to the app: a delivery worker that reads the store's lifecycle event log from a durable
 * cursor and POSTs each event to the app's URL, in order.
 *
 * - Signed: `Latchkey-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` with the
 *   app's secret; check it with `verifyWebhook` (constant-time, with a tolerance window).
 * - Idempotent: `Idempotency-Key` (and `Latchkey-Event-Id`) is the event's id, the same on every
 *   attempt: delivery is at least once, so the app drops an id it has handled.
 * - Retried: any answer but a 2xx, a timeout or a network error is retried with exponential backoff
 *   and jitter (an effect `Schedule`), at most `maxAttempts` attempts; then the event is put in the
 *   dead-letter list (kept in the store, shown by `latchkey webhooks`) and the worker moves on.
 * - One worker at a time across the fleet: the worker holds the store's lease on
 *   `webhooks:<name>` (renewed while it works); other instances wait for it to lapse.
 *
 * The state (cursor, counts, the event being retried, dead letters) is the store's consumer state
 * `webhook:<name>`, written after every event.
 */
import { createHmac, timingSafeEqual } from "node:crypto"
import {
  Clock,
  Context,
  Data,
  Deferred,
  Duration,
  Effect,
  Fiber,
  Layer,
  Metric,
  Redacted,
  Schedule
} from "effect"
import { ConnectionStore, type ConnectionStoreShape, type Lease } from "./ConnectionStore.ts"
import { StoreError } from "./Errors.ts"
import { metrics, tagged } from "./internal/telemetry.ts"
import type { LifecycleEventType, StoredLifecycleEvent } from "./LifecycleEvents.ts"

export const SIGNATURE_HEADER = "Latchkey-Signature"
export const EVENT_ID_HEADER = "Latchkey-Event-Id"
export const IDEMPOTENCY_HEADER = "Idempotency-Key"

export interface WebhookOptions {
  /** Where to POST the events. */
  readonly url: string
  /** The signing secret (share it with the receiver; a Redacted value keeps it out of logs). */
  readonly secret: string | Redacted.Redacted<string>
  /** The worker's name: its lease and its state in the store (default `"default"`). */
  readonly name?: string | undefined
  /** Only these event types (the cursor moves past the others). */
  readonly types?: ReadonlyArray<LifecycleEventType> | undefined
  /** Attempts per event before it is dead-lettered (default 8). */
  readonly maxAttempts?: number | undefined
  /** First retry delay (default 1 s); doubled on each attempt, jittered (×0.8–1.2), capped. */
  readonly baseDelayMs?: number | undefined
  /** Longest retry delay (default 10 min). */
  readonly maxDelayMs?: number | undefined
  /** One request's timeout (default 10 s). */
  readonly timeoutMs?: number | undefined
  /** How often the log is read when it has nothing new (default 1 s). */
  readonly pollIntervalMs?: number | undefined
  /** The worker's lease length (default 30 s; renewed every third of it). */
  readonly leaseTtlMs?: number | undefined
  /** This worker's holder id for the lease (default: process id and a random id). */
  readonly holder?: string | undefined
  /** Dead letters kept in the state (default 1000; the oldest are dropped first). */
  readonly maxDeadLetters?: number | undefined
  /** The fetch to send with (default the global one). */
  readonly fetch?: typeof fetch | undefined
  /** Called after every attempt (for logs and tests). */
  readonly onAttempt?: ((attempt: DeliveryAttempt) => void) | undefined
}

/** What the app receives as the JSON body. */
export interface WebhookPayload {
  readonly id: string
  readonly seq: number
  readonly type: LifecycleEventType
  readonly at: number
  readonly connectionId: string
  readonly ownerId: string
  readonly providerId: string
  readonly data: StoredLifecycleEvent["data"]
}

export interface DeliveryAttempt {
  readonly eventId: string
  readonly seq: number
  readonly attempt: number
  /** The HTTP status, or null for a timeout or a network error. */
  readonly status: number | null
  readonly error: string | null
  readonly outcome: "delivered" | "retry" | "dead_letter"
  /** The wait before the next attempt, when there is one (from the retry schedule). */
  readonly nextDelayMs: number | null
}

export interface DeadLetter {
  readonly eventId: string
  readonly seq: number
  readonly type: LifecycleEventType
  readonly connectionId: string
  readonly attempts: number
  readonly lastError: string
  /** When it was dead-lettered (epoch ms). */
  readonly at: number
  readonly payload: WebhookPayload
}

/** The worker's durable state (`latchkey webhooks` prints it). */
export interface WebhookState {
  /** The `seq` of the last event handled (delivered, dead-lettered or filtered out). */
  readonly cursor: number
  readonly delivered: number
  readonly lastDeliveredAt: number | null
  /** The event being retried now, when one is failing. */
  readonly failing: {
    readonly eventId: string
    readonly seq: number
    readonly attempts: number
    readonly lastError: string
    readonly since: number
  } | null
  readonly deadLetters: ReadonlyArray<DeadLetter>
  /** The last redelivery request applied (see `redeliverDeadLetters`). */
  readonly appliedRequest: number
}

export const emptyState: WebhookState = {
  cursor: 0,
  delivered: 0,
  lastDeliveredAt: null,
  failing: null,
  deadLetters: [],
  appliedRequest: 0
}

export const stateKey = (name: string) => `webhook:${name}`
/** Operators' requests to the worker (a redelivery), applied by the worker that holds the lease. */
const requestKey = (name: string) => `webhook:${name}:request`

interface RedeliveryRequest {
  readonly n: number
  readonly eventIds: ReadonlyArray<string>
  readonly fromSeq: number
}

const secretValue = (secret: string | Redacted.Redacted<string>) =>
  Redacted.isRedacted(secret) ? Redacted.value(secret) : secret

/** The `Latchkey-Signature` header for `body` at `timestampSeconds`. */
export const sign = (
  body: string,
  secret: string | Redacted.Redacted<string>,
  timestampSeconds: number
): string => {
  const mac = createHmac("sha256", secretValue(secret)).update(`${timestampSeconds}.${body}`).digest("hex")
  return `t=${timestampSeconds},v1=${mac}`
}

export interface VerifyOptions {
  /** The raw request body, exactly as received (before any JSON parsing). */
  readonly body: string
  /** The `Latchkey-Signature` header. */
  readonly signature: string | null | undefined
  /** The secret, or several while rotating it (any one matches). */
  readonly secret: string | Redacted.Redacted<string> | ReadonlyArray<string | Redacted.Redacted<string>>
  /** Accept timestamps at most this far from now (default 300 s), against replays. */
  readonly toleranceSeconds?: number | undefined
  /** Now, in epoch ms (default `Date.now()`). */
  readonly now?: number | undefined
}

/**
 * Check a delivery: the signature matches the body under one of the secrets (constant-time
 * comparison) and its timestamp is within the tolerance. False for anything else, never throws.
 */
export const verifyWebhook = (options: VerifyOptions): boolean => {
  const header = options.signature
  if (typeof header !== "string") return false
  let timestamp: number | undefined
  const signatures: Array<string> = []
  for (const part of header.split(",")) {
    const eq = part.indexOf("=")
    if (eq < 0) continue
    const key = part.slice(0, eq).trim()
    const value = part.slice(eq + 1).trim()
    if (key === "t" && /^\d{1,12}$/.test(value)) timestamp = Number(value)
    else if (key === "v1" && /^[0-9a-f]{64}$/.test(value)) signatures.push(value)
  }
  if (timestamp === undefined || signatures.length === 0) return false
  const now = Math.floor((options.now ?? Date.now()) / 1000)
  if (Math.abs(now - timestamp) > (options.toleranceSeconds ?? 300)) return false
  const secrets = Array.isArray(options.secret)
    ? (options.secret as ReadonlyArray<string | Redacted.Redacted<string>>)
    : [options.secret as string | Redacted.Redacted<string>]
  let ok = false
  for (const secret of secrets) {
    const expected = Buffer.from(
      createHmac("sha256", secretValue(secret)).update(`${timestamp}.${options.body}`).digest("hex")
    )
    for (const candidate of signatures) {
      // Same length (64 hex characters, checked above): a constant-time comparison.
      if (timingSafeEqual(expected, Buffer.from(candidate))) ok = true
    }
  }
  return ok
}

export const payloadOf = (event: StoredLifecycleEvent): WebhookPayload => ({
  id: event.id,
  seq: event.seq,
  type: event.type,
  at: event.at,
  connectionId: event.connectionId,
  ownerId: event.ownerId,
  providerId: event.providerId,
  data: event.data
})

class DeliveryFailed extends Data.TaggedError("DeliveryFailed")<{
  readonly status: number | null
  readonly message: string
}> {}

const requireLog = (store: ConnectionStoreShape) => {
  const { readEvents, getConsumerState, setConsumerState } = store
  if (readEvents === undefined || getConsumerState === undefined || setConsumerState === undefined) {
    return Effect.fail(
      new StoreError({
        reason: "unavailable",
        message:
          "webhooks need a store with a lifecycle event log (readEvents, getConsumerState, setConsumerState)"
      })
    )
  }
  return Effect.succeed({ readEvents, getConsumerState, setConsumerState })
}

/** The worker's state in the store (`emptyState` when it never ran). */
export const readState = (
  store: ConnectionStoreShape,
  name = "default"
): Effect.Effect<WebhookState, StoreError> =>
  Effect.gen(function* () {
    const log = yield* requireLog(store)
    const text = yield* log.getConsumerState(stateKey(name))
    if (text === undefined) return emptyState
    return yield* Effect.try({
      try: () => ({ ...emptyState, ...(JSON.parse(text) as WebhookState) }),
      catch: () =>
        new StoreError({
          reason: "corrupt",
          message: `webhook worker ${name}: its stored state is not valid JSON`
        })
    })
  })

const readRequest = (
  log: { readonly getConsumerState: (name: string) => Effect.Effect<string | undefined, StoreError> },
  name: string
) =>
  Effect.map(log.getConsumerState(requestKey(name)), (text): RedeliveryRequest | undefined => {
    if (text === undefined) return undefined
    try {
      return JSON.parse(text) as RedeliveryRequest
    } catch {
      return undefined
    }
  })

/** Whether a redelivery was requested that the worker has not applied yet. */
export const pendingRedelivery = (
  store: ConnectionStoreShape,
  name = "default"
): Effect.Effect<boolean, StoreError> =>
  Effect.gen(function* () {
    const log = yield* requireLog(store)
    const request = yield* readRequest(log, name)
    const state = yield* readState(store, name)
    return request !== undefined && request.n > state.appliedRequest
  })

/**
 * Put the dead letters back in line: the worker (now, or when it next starts) delivers them again
 * before the next new event. Returns how many. Events after the oldest of them that were delivered
 * may be delivered again (the receiver drops them by their idempotency key).
 */
export const redeliverDeadLetters = (
  store: ConnectionStoreShape,
  name = "default"
): Effect.Effect<number, StoreError> =>
  Effect.gen(function* () {
    const log = yield* requireLog(store)
    const state = yield* readState(store, name)
    if (state.deadLetters.length === 0) return 0
    const previous = yield* readRequest(log, name)
    const request: RedeliveryRequest = {
      n: Math.max(previous?.n ?? 0, state.appliedRequest) + 1,
      eventIds: state.deadLetters.map((d) => d.eventId),
      fromSeq: Math.min(...state.deadLetters.map((d) => d.seq))
    }
    yield* log.setConsumerState(requestKey(name), JSON.stringify(request))
    return state.deadLetters.length
  })

/**
 * The worker: runs until interrupted. Takes the fleet-wide lease, delivers every event after the
 * stored cursor, and gives the lease back when interrupted.
 */
export const run = (options: WebhookOptions): Effect.Effect<never, StoreError, ConnectionStore> =>
  Effect.gen(function* () {
    const store = yield* ConnectionStore
    const log = yield* requireLog(store)
    const name = options.name ?? "default"
    const key = stateKey(name)
    const maxAttempts = Math.max(1, options.maxAttempts ?? 8)
    const baseDelayMs = options.baseDelayMs ?? 1_000
    const maxDelayMs = options.maxDelayMs ?? 10 * 60 * 1000
    const timeoutMs = options.timeoutMs ?? 10_000
    const poll = options.pollIntervalMs ?? 1_000
    const ttl = options.leaseTtlMs ?? 30_000
    const holder = options.holder ?? `${process.pid}-${crypto.randomUUID()}`
    const maxDead = options.maxDeadLetters ?? 1_000
    const send = options.fetch ?? globalThis.fetch
    const types = options.types === undefined ? undefined : new Set(options.types)
    const report = (attempt: DeliveryAttempt) =>
      Effect.andThen(
        Metric.update(
          tagged(metrics.webhookDeliveries, {
            outcome: attempt.outcome,
            status: attempt.status === null ? "error" : String(attempt.status)
          }),
          1
        ),
        Effect.sync(() => {
          try {
            options.onAttempt?.(attempt)
          } catch {
            // a reporter failing never stops deliveries
          }
        })
      )

    const save = (state: WebhookState) => log.setConsumerState(key, JSON.stringify(state))

    const post = (event: StoredLifecycleEvent, attempt: number) =>
      Effect.gen(function* () {
        const body = JSON.stringify(payloadOf(event))
        const seconds = Math.floor((yield* Clock.currentTimeMillis) / 1000)
        yield* Effect.annotateCurrentSpan({
          "latchkey.event.type": event.type,
          "latchkey.event.seq": event.seq,
          "latchkey.webhook.attempt": attempt
        })
        return yield* Effect.tryPromise({
          try: async () => {
            const response = await send(options.url, {
              method: "POST",
              headers: {
                "content-type": "application/json",
                "user-agent": "latchkey-webhooks",
                [SIGNATURE_HEADER]: sign(body, options.secret, seconds),
                [EVENT_ID_HEADER]: event.id,
                [IDEMPOTENCY_HEADER]: event.id,
                "Latchkey-Event-Type": event.type,
                "Latchkey-Delivery-Attempt": String(attempt)
              },
              body,
              signal: AbortSignal.timeout(timeoutMs),
              redirect: "manual"
            })
            await response.body?.cancel().catch(() => {})
            return response.status
          },
          catch: (cause) => {
            const errorName = (cause as { name?: string } | undefined)?.name
            const timedOut = errorName === "TimeoutError" || errorName === "AbortError"
            return new DeliveryFailed({
              status: null,
              message: timedOut ? `timed out after ${timeoutMs} ms` : "network error"
            })
          }
        }).pipe(
          Effect.flatMap((status) =>
            status >= 200 && status < 300
              ? Effect.succeed(status)
              : Effect.fail(new DeliveryFailed({ status, message: `answered ${status}` }))
          ),
          Effect.tap((status) => Effect.annotateCurrentSpan({ "http.response.status_code": status }))
        )
      }).pipe(Effect.withSpan("Webhooks.deliver"))

    /** Deliver one event with retries; the state after it (delivered or dead-lettered). */
    const deliver = (event: StoredLifecycleEvent, state: WebhookState) =>
      Effect.gen(function* () {
        let attempt = 0
        let current = state
        const since = yield* Clock.currentTimeMillis
        // Exponential from baseDelayMs, jittered (×0.8–1.2), capped at maxDelayMs; each retry is
        // reported with the delay the schedule chose.
        const backoff = Schedule.exponential(Duration.millis(baseDelayMs)).pipe(
          Schedule.jittered,
          Schedule.modifyDelay(({ duration, input }: Schedule.Metadata<Duration.Duration, DeliveryFailed>) =>
            Effect.gen(function* () {
              const nextDelayMs = Math.min(Duration.toMillis(duration), maxDelayMs)
              // After the last attempt there is no next one (the retry stops on `times`).
              if (attempt >= maxAttempts) return Duration.millis(nextDelayMs)
              yield* report({
                eventId: event.id,
                seq: event.seq,
                attempt,
                status: input.status,
                error: input.message,
                outcome: "retry",
                nextDelayMs
              })
              return Duration.millis(nextDelayMs)
            })
          )
        )
        const once = Effect.suspend(() => {
          attempt++
          return post(event, attempt)
        }).pipe(
          Effect.tapError((failure) => {
            current = {
              ...current,
              failing: {
                eventId: event.id,
                seq: event.seq,
                attempts: attempt,
                lastError: failure.message,
                since
              }
            }
            // For operators (`latchkey webhooks`); a failure to record it does not stop the retries.
            return Effect.ignore(save(current))
          })
        )
        const outcome = yield* Effect.retry(once, { schedule: backoff, times: maxAttempts - 1 }).pipe(
          Effect.result
        )
        if (outcome._tag === "Failure") {
          yield* report({
            eventId: event.id,
            seq: event.seq,
            attempt,
            status: outcome.failure.status,
            error: outcome.failure.message,
            outcome: "dead_letter",
            nextDelayMs: null
          })
        }
        const now = yield* Clock.currentTimeMillis
        if (outcome._tag === "Success") {
          yield* report({
            eventId: event.id,
            seq: event.seq,
            attempt,
            status: outcome.success,
            error: null,
            outcome: "delivered",
            nextDelayMs: null
          })
          return {
            ...current,
            cursor: event.seq,
            delivered: current.delivered + 1,
            lastDeliveredAt: now,
            failing: null
          } satisfies WebhookState
        }
        const dead: DeadLetter = {
          eventId: event.id,
          seq: event.seq,
          type: event.type,
          connectionId: event.connectionId,
          attempts: attempt,
          lastError: outcome.failure.message,
          at: now,
          payload: payloadOf(event)
        }
        return {
          ...current,
          cursor: event.seq,
          failing: null,
          deadLetters: [...current.deadLetters, dead].slice(-maxDead)
        } satisfies WebhookState
      })

    /** Deliver while the lease is ours. */
    const work = Effect.gen(function* () {
      let state = yield* readState(store, name)
      for (;;) {
        const request = yield* readRequest(log, name)
        if (request !== undefined && request.n > state.appliedRequest) {
          const ids = new Set(request.eventIds)
          state = {
            ...state,
            cursor: Math.min(state.cursor, request.fromSeq - 1),
            deadLetters: state.deadLetters.filter((d) => !ids.has(d.eventId)),
            appliedRequest: request.n
          }
          yield* save(state)
        }
        const page = yield* log.readEvents(state.cursor, 50)
        if (page.events.length === 0) {
          yield* Effect.sleep(poll)
          continue
        }
        for (const event of page.events) {
          state =
            types === undefined || types.has(event.type)
              ? yield* deliver(event, state)
              : { ...state, cursor: event.seq }
          yield* save(state)
        }
      }
    })

    /** Hold the lease while `work` runs: renewed every third of its length; lost → work stops. */
    const holding = (lease: Lease) =>
      Effect.gen(function* () {
        const lost = yield* Deferred.make<void>()
        let current = lease
        const renewer = yield* Effect.forkChild(
          Effect.forever(
            Effect.gen(function* () {
              yield* Effect.sleep(Math.max(1, Math.floor(ttl / 3)))
              const renewed = yield* Effect.orElseSucceed(store.renewLease(current, ttl), () => current)
              if (renewed === undefined) yield* Deferred.succeed(lost, undefined)
              else current = renewed
            })
          )
        )
        yield* Effect.raceFirst(work, Deferred.await(lost)).pipe(
          Effect.ensuring(
            Effect.gen(function* () {
              yield* Fiber.interrupt(renewer)
              yield* Effect.ignore(store.releaseLease(current))
            })
          )
        )
      })

    for (;;) {
      const lease = yield* Effect.orElseSucceed(
        store.acquireLease(`webhooks:${name}`, holder, ttl),
        () => undefined
      )
      if (lease === undefined) {
        yield* Effect.sleep(poll)
        continue
      }
      // A store failure while working: give the lease back, wait, and start again from the stored cursor.
      yield* holding(lease).pipe(Effect.catch(() => Effect.sleep(poll)))
    }
  })

export interface WebhooksShape {
  /** The worker's durable state. */
  readonly state: Effect.Effect<WebhookState, StoreError>
}

/** The worker as a service: started with the layer (in the background), stopped when it is released. */
export class Webhooks extends Context.Service<Webhooks, WebhooksShape>()("@latchkey/core/Webhooks") {
  static readonly layer = (options: WebhookOptions) =>
    Layer.effect(
      Webhooks,
      Effect.gen(function* () {
        const store = yield* ConnectionStore
        yield* requireLog(store)
        yield* Effect.forkScoped(run(options).pipe(Effect.provideService(ConnectionStore, store)))
        return Webhooks.of({ state: readState(store, options.name ?? "default") })
      })
    )
}
