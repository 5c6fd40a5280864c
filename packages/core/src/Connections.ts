/**
 * The one write path of connections. Every change to a stored connection — a link, a refresh and the
 * journal around it, `needs_reauth`, `revoked`, a vault rotation — goes through `insert` or `modify`:
 *
 * - `modify(id, f)` reads the connection (or starts from the copy the caller holds), applies `f` to
 *   it and writes the result by compare-and-set (`ConnectionStore.update(record, expectedVersion)`).
 *   On a conflict, or a store failure that is worth retrying, it re-reads and applies `f` again to the
 *   fresh copy, as the retry `Schedule` allows (default `Connections.defaultRetry`: at most 8 retries,
 *   exponential from 10 ms, capped at 1 s, jittered). When the schedule gives up, the last
 *   `StoreError` fails the call: a write is never dropped silently.
 * - It seals the token fields with the vault (`Connection.toRecord`) and derives what no caller
 *   computes by hand: `version` (+1), `updatedAt` (now), `refreshDueAt` (from the token expiry, the
 *   connection's kind, the `LatchkeyConfig` and a degraded connection's next attempt), `lastError`
 *   cleared when the status becomes active, the failed-refresh streak (`failures`) kept only while
 *   the status is `active`, and the `statusReason` only while it is not.
 * - A write whose answer was lost (the store failed after applying it) is recognised on the next
 *   attempt — the stored row is the very record written (same version, same sealed access token,
 *   whose nonce is unique) — and counts as written.
 * - Events attached to a write (`{ next, events }`) are computed from the connection to be written,
 *   appended to the store's lifecycle event log IN THE SAME WRITE (`insert` / `update` / `remove` take
 *   them: one SQL transaction, one Lua script), and published on the in-process `Events` bus once the
 *   write is durable, and only then. A write that fails appends nothing; a process that dies after
 *   the write leaves its events in the log for every other instance (`latchkey.events.subscribe`).
 * - `note(events)` is for events that go with no change of the row (a refresh that failed and will be
 *   retried): appended to the log on their own, then published.
 */
import { Clock, Context, Effect, Layer, Redacted, Result, Schedule } from "effect"
import { LatchkeyConfig } from "./Config.ts"
import type { Connection, ConnectionRecord } from "./Connection.ts"
import * as ConnectionModule from "./Connection.ts"
import { ConnectionStore, type ConnectionStoreShape, type Lease } from "./ConnectionStore.ts"
import { ConnectionNotFound, type StoreError, type VaultError } from "./Errors.ts"
import { Events, type LatchkeyEvent } from "./Events.ts"
import { refreshDueAt } from "./internal/due.ts"
import { Lru } from "./internal/Lru.ts"
import * as LifecycleEvents from "./LifecycleEvents.ts"
import { Vault, type VaultShape } from "./Vault.ts"

/** Events to publish once a write is durable: given, or computed from the connection as written. */
export type AttachedEvents =
  | ReadonlyArray<LatchkeyEvent>
  | ((written: Connection) => ReadonlyArray<LatchkeyEvent>)

/** What `f` decides: write `next` (and publish `events` once durable), or keep the connection as it is. */
export type Change =
  | { readonly _tag: "Write"; readonly next: Connection; readonly events: AttachedEvents }
  | { readonly _tag: "Keep" }

/** Write `next`: its `version`, `updatedAt` and `refreshDueAt` are derived by `modify`. */
export const write = (next: Connection, events: AttachedEvents = []): Change => ({
  _tag: "Write",
  next,
  events
})

/**
 * Events attached to a `replace` (a relink): given, or computed from the connection as written and
 * the record it replaced.
 */
export type ReplaceEvents =
  | ReadonlyArray<LatchkeyEvent>
  | ((written: Connection, replaced: ConnectionRecord) => ReadonlyArray<LatchkeyEvent>)

/** Leave the connection as stored: `modify` returns it with `written: false`. */
export const keep: Change = { _tag: "Keep" }

export interface ModifyOptions {
  /**
   * The copy the caller holds (e.g. the one it read under its lease): the first attempt applies `f`
   * to it without reading the store; its `version` is the one compared. Later attempts re-read.
   */
  readonly current?: Connection | undefined
  /**
   * When to retry a conflict or a retryable store failure (the schedule's input is the `StoreError`).
   * Default `defaultRetry`. The refresh engine passes an unbounded one for the write of tokens a
   * provider already rotated (they must not be dropped while the process lives). A function is
   * called for the schedule only when the first attempt fails.
   */
  readonly retry?:
    | Schedule.Schedule<unknown, StoreError>
    | (() => Schedule.Schedule<unknown, StoreError>)
    | undefined
  /**
   * Monotonic nanoseconds when the provider answered: `refreshed` events attached to the write get
   * `commitMs`, the time from that answer to the durable write.
   */
  readonly answeredNs?: bigint | undefined
  /**
   * A lease of the caller's to release with the write (`UpdateOptions.releaseLease`), when the store
   * can (`releasesLeaseOnUpdate`); each attempt asks, only the one that writes releases.
   */
  readonly releaseLease?: Lease | undefined
}

export interface Modified {
  /** The connection as stored afterwards (the written one, or the current one when `f` kept it). */
  readonly connection: Connection
  readonly written: boolean
}

/** A new connection: `version`, `createdAt`, `updatedAt` and `refreshDueAt` are derived. */
export type NewConnection = Omit<Connection, "version" | "createdAt" | "updatedAt">

export interface ConnectionsShape {
  /** The decoded connection. */
  readonly get: (id: string) => Effect.Effect<Connection, ConnectionNotFound | StoreError | VaultError>
  /** Open a record read from the store (reused while the stored record is unchanged). */
  readonly decode: (record: ConnectionRecord) => Effect.Effect<Connection, VaultError>
  /**
   * The record of `id` this process last read or wrote (kept with its decoded form), without a store
   * read: another process may have written a newer one since. For a caller that fences its use with a
   * compare-and-set over the record's version (the refresh journal's write), where a stale copy costs
   * a failed write and a fresh read, and a current one saves the read.
   */
  readonly known: (id: string) => ConnectionRecord | undefined
  /** Insert a new connection (version 1); fails with `StoreError("conflict")` on a duplicate id or account. */
  readonly insert: (
    connection: NewConnection,
    options?: { readonly events?: AttachedEvents | undefined }
  ) => Effect.Effect<Connection, StoreError>
  /** Compare-and-set the change `f` decides on the current connection; see the module header. */
  readonly modify: <E = never>(
    id: string,
    f: (current: Connection, now: number) => Change | Effect.Effect<Change, E>,
    options?: ModifyOptions
  ) => Effect.Effect<Modified, E | StoreError | ConnectionNotFound | VaultError>
  /**
   * Replace what is stored under `id` with `next` (a relink: new tokens for the same account), over
   * whatever version is stored — without opening its sealed fields, so that a connection no key opens
   * any more can still be linked again. `createdAt` is kept; `keepIf` may keep the stored one
   * instead (returns undefined then). Fails with `ConnectionNotFound` when it was removed meanwhile.
   * `events` may be computed from the written connection and the record it replaced.
   */
  readonly replace: (
    id: string,
    next: NewConnection,
    options?: {
      readonly events?: ReplaceEvents | undefined
      readonly keepIf?: ((stored: ConnectionRecord) => boolean) | undefined
    }
  ) => Effect.Effect<Connection | undefined, StoreError | ConnectionNotFound>
  /**
   * Seal the connection's fields again with the vault's write key (a key rotation), keeping
   * everything else; values stored in plain text before a key was configured are sealed. Returns
   * false when nothing needed it. Compare-and-set, retried as `modify` is.
   */
  readonly reseal: (
    id: string,
    stale: (record: ConnectionRecord) => boolean,
    options?: { readonly retry?: Schedule.Schedule<unknown, StoreError> | undefined }
  ) => Effect.Effect<boolean, StoreError | VaultError>
  /**
   * Remove a connection (unlink); `events` go to the log in the same write and are published once it
   * is done. False when there was nothing to remove (then nothing is appended or published).
   */
  readonly remove: (id: string, events?: ReadonlyArray<LatchkeyEvent>) => Effect.Effect<boolean, StoreError>
  /**
   * Events that go with no change of the row (e.g. a refresh that failed and is retried): appended
   * to the store's log on their own (retried as a write is; a store that still fails only loses
   * the durable copy, which is logged), then published in process.
   */
  readonly note: (events: ReadonlyArray<LatchkeyEvent>) => Effect.Effect<void>
}

/**
 * The default retry of a write: at most 8 retries after the first attempt, exponential from 10 ms,
 * capped at 1 s, jittered; only conflicts and store failures that say they are retryable.
 */
export const defaultRetry: Schedule.Schedule<unknown, StoreError> = Schedule.min([
  Schedule.exponential("10 millis"),
  Schedule.spaced("1 second")
]).pipe(
  Schedule.jittered,
  Schedule.upTo({ times: 8 }),
  Schedule.setInputType<StoreError>(),
  Schedule.while(({ input }) => input.reason === "conflict" || input.isRetryable)
)

/**
 * `reseal` over a store and a vault alone (what `Vault.rotate` runs, which needs no other service):
 * see `ConnectionsShape.reseal`.
 */
export const resealWith =
  (store: ConnectionStoreShape, vault: VaultShape) =>
  (
    id: string,
    stale: (record: ConnectionRecord) => boolean,
    options?: { readonly retry?: Schedule.Schedule<unknown, StoreError> | undefined }
  ): Effect.Effect<boolean, StoreError | VaultError> => {
    const fields = ["accessToken", "refreshToken", "extras"] as const
    const attempt: Effect.Effect<Result.Result<boolean, StoreError | VaultError>, StoreError> = Effect.gen(
      function* () {
        const read = yield* inAttempt(store.get(id))
        if (Result.isFailure(read)) return Result.fail(read.failure)
        const r = read.success
        if (r === undefined || !stale(r)) return Result.succeed(false)
        const sealed: Partial<Record<(typeof fields)[number], string | null>> = {}
        for (const field of fields) {
          const value = r[field]
          if (value === null) {
            sealed[field] = null
            continue
          }
          const context = { connectionId: r.id, field }
          // The rotation is the migration path for values written before a key was configured:
          // it seals them. Everywhere else a `plain.` value is refused once keys are configured.
          const opened = value.startsWith("plain.")
            ? Result.succeed(value.slice(6))
            : yield* vault.open(value, context).pipe(Effect.result)
          if (Result.isFailure(opened)) return Result.fail(opened.failure)
          sealed[field] = vault.seal(opened.success, context)
        }
        // Nothing about the connection changed: only the version moves (updatedAt stays).
        const next: ConnectionRecord = {
          ...r,
          accessToken: sealed.accessToken ?? r.accessToken,
          refreshToken: sealed.refreshToken ?? null,
          extras: sealed.extras ?? r.extras,
          version: r.version + 1
        }
        const wrote = yield* inAttempt(store.update(next, r.version))
        if (Result.isFailure(wrote)) return Result.fail(wrote.failure)
        return Result.succeed(true)
      }
    )
    return retrying(attempt, options?.retry ?? defaultRetry).pipe(Effect.flatMap(Effect.fromResult))
  }

const notFound = (id: string) => new ConnectionNotFound({ connectionId: id, message: `No connection ${id}` })

/**
 * `Effect.retry(attempt, schedule)`, with the schedule set up only once the first attempt failed
 * (most writes succeed at once, and a schedule's state costs more than the write of a memory store):
 * the schedule sees the same failures in the same order and waits the same delays.
 */
const retrying = <A>(
  attempt: Effect.Effect<A, StoreError>,
  schedule: Schedule.Schedule<unknown, StoreError> | (() => Schedule.Schedule<unknown, StoreError>)
): Effect.Effect<A, StoreError> =>
  Effect.catch(attempt, (first) => {
    let replayed = false
    const again = Effect.suspend(() => {
      if (replayed) return attempt
      replayed = true
      return Effect.fail(first)
    })
    return Effect.retry(again, typeof schedule === "function" ? schedule() : schedule)
  })

/** A store failure the schedule may retry (a conflict, or one the store says is retryable). */
const retryable = (e: StoreError) => e.reason === "conflict" || e.isRetryable

/**
 * A store call inside one attempt of a write: a failure the schedule may retry fails the attempt (so
 * that it is retried); any other failure is the attempt's result.
 */
const inAttempt = <A>(
  effect: Effect.Effect<A, StoreError>
): Effect.Effect<Result.Result<A, StoreError>, StoreError> =>
  Effect.flatMap(Effect.result(effect), (r) =>
    Result.isFailure(r) && retryable(r.failure) ? Effect.fail(r.failure) : Effect.succeed(r)
  )

/** The stored row is the very record an earlier attempt wrote: that write landed, its answer was lost. */
const landed = <T extends { readonly record: ConnectionRecord }>(
  row: ConnectionRecord,
  tried: T | undefined
): tried is T =>
  tried !== undefined &&
  row.version === tried.record.version &&
  row.accessToken === tried.record.accessToken &&
  // The write that opens a journal keeps the access token's ciphertext: its journal tells it apart.
  ConnectionModule.sameJournal(row.journal, tried.record.journal)

export class Connections extends Context.Service<Connections, ConnectionsShape>()(
  "@latchkey/core/Connections"
) {
  static readonly layer = Layer.effect(
    Connections,
    Effect.gen(function* () {
      const store = yield* ConnectionStore
      const vault = yield* Vault
      const events = yield* Events
      const config = yield* LatchkeyConfig

      // Decoded connections by id, reused while the stored record is unchanged (the hot path).
      // Least recently used first out, so a process cycling over more connections than it keeps still
      // reuses the recent ones instead of starting over.
      const cache = new Lru<string, ConnectionModule.Stored>(config.decodedCacheSize ?? 10_000)

      const decode = (record: ConnectionRecord): Effect.Effect<Connection, VaultError> => {
        const hit = cache.get(record.id)
        if (
          hit !== undefined &&
          hit.record.version === record.version &&
          hit.record.accessToken === record.accessToken &&
          ConnectionModule.sameJournal(hit.record.journal, record.journal)
        ) {
          return Effect.succeed(hit.connection)
        }
        return ConnectionModule.fromRecord(vault, record, hit).pipe(
          Effect.tap((connection) => Effect.sync(() => remember(record, connection)))
        )
      }

      const remember = (record: ConnectionRecord, connection: Connection) => {
        cache.set(record.id, { record, connection })
      }

      const known = (id: string): ConnectionRecord | undefined => cache.peek(id)?.record

      const get = (id: string): Effect.Effect<Connection, ConnectionNotFound | StoreError | VaultError> =>
        Effect.flatMap(
          store.get(id),
          (r): Effect.Effect<Connection, ConnectionNotFound | VaultError> =>
            r === undefined ? Effect.fail(notFound(id)) : decode(r)
        )

      /** The stored row, read inside one attempt of a write (a missing one is that attempt's result). */
      const readRow = (
        id: string
      ): Effect.Effect<Result.Result<ConnectionRecord, StoreError | ConnectionNotFound>, StoreError> =>
        Effect.map(inAttempt(store.get(id)), (read) =>
          Result.isFailure(read)
            ? Result.fail(read.failure)
            : read.success === undefined
              ? Result.fail(notFound(id))
              : Result.succeed(read.success)
        )

      /** The derived fields of a connection about to be written. */
      const derive = (next: Connection, version: number, now: number, wasActive: boolean): Connection => {
        const { failures, statusReason, ...rest } = next
        const active = next.status === "active"
        return {
          ...rest,
          version,
          updatedAt: now,
          lastError: active && !wasActive ? undefined : next.lastError,
          // The failed-refresh streak means something only while the grant is good; the reason of
          // a status only while it is not `active`.
          ...(active && failures !== undefined ? { failures } : {}),
          ...(!active && statusReason !== undefined ? { statusReason } : {})
        }
      }

      /**
       * The record to write for `c`. `from` is the copy `c` was derived from: when it is the decoded
       * form of a record this process read or wrote (the cache holds both), the fields that did not
       * change keep their ciphertext (see `Connection.toRecord`).
       */
      const recordOf = (c: Connection, from?: Connection): ConnectionRecord => {
        const hit = from === undefined ? undefined : cache.peek(from.id)
        return ConnectionModule.toRecord(
          vault,
          c,
          refreshDueAt(c.tokens, c.status, config, c.kind, c.failures?.nextAttemptAt),
          hit !== undefined && hit.connection === from ? hit : undefined
        )
      }

      /**
       * Writing `next` over `current` changes nothing a token cache holds: the same access token,
       * type, expiry and status (a refresh journal, a failure streak). The store may then leave the
       * write out of what it tells other processes (`UpdateOptions.quiet`).
       */
      const quiet = (next: Connection, current: Connection): boolean =>
        next.status === current.status &&
        next.tokens.tokenType === current.tokens.tokenType &&
        next.tokens.expiresAt === current.tokens.expiresAt &&
        Redacted.value(next.tokens.accessToken) === Redacted.value(current.tokens.accessToken)

      const listOf = (attached: AttachedEvents, written: Connection): ReadonlyArray<LatchkeyEvent> =>
        typeof attached === "function" ? attached(written) : attached

      /** The durable form of the events of a write, for the store's log (no message, no secret). */
      const durable = (list: ReadonlyArray<LatchkeyEvent>): ReadonlyArray<LifecycleEvents.LifecycleEvent> =>
        list.flatMap((event) => LifecycleEvents.fromEvent(event) ?? [])

      const publish = (attached: AttachedEvents, written: Connection, answeredNs: bigint | undefined) =>
        Effect.gen(function* () {
          const list = listOf(attached, written)
          if (list.length === 0) return
          const commitMs =
            answeredNs === undefined
              ? undefined
              : Math.round(Number((yield* Clock.monotonicTimeNanos) - answeredNs) / 1e3) / 1e3
          for (const event of list) {
            yield* events.publish(
              event.type === "refreshed" && commitMs !== undefined && event.commitMs === undefined
                ? { ...event, commitMs }
                : event
            )
          }
        })

      const insert = (
        connection: NewConnection,
        options?: { readonly events?: AttachedEvents | undefined }
      ): Effect.Effect<Connection, StoreError> =>
        Effect.gen(function* () {
          const now = yield* Clock.currentTimeMillis
          const next = derive({ ...connection, version: 1, createdAt: now, updatedAt: now }, 1, now, true)
          const record = recordOf(next)
          yield* store.insert(record, durable(listOf(options?.events ?? [], next)))
          remember(record, next)
          yield* publish(options?.events ?? [], next, undefined)
          return next
        })

      const modify = <E>(
        id: string,
        f: (current: Connection, now: number) => Change | Effect.Effect<Change, E>,
        options?: ModifyOptions
      ): Effect.Effect<Modified, E | StoreError | ConnectionNotFound | VaultError> => {
        let first = options?.current
        /** The record of the last attempt, to recognise a write whose answer was lost. */
        let tried:
          | {
              readonly record: ConnectionRecord
              readonly connection: Connection
              readonly events: AttachedEvents
            }
          | undefined
        // One attempt. Failures the schedule may retry fail the attempt; every other outcome (a
        // success, `f`'s own failure, a store failure not worth retrying) is its success.
        const attempt: Effect.Effect<
          Result.Result<Modified, E | StoreError | ConnectionNotFound | VaultError>,
          StoreError
        > = Effect.gen(function* () {
          let current: Connection
          if (first !== undefined) {
            current = first
            first = undefined
          } else {
            const read = yield* readRow(id)
            if (Result.isFailure(read)) return Result.fail(read.failure)
            const row = read.success
            if (landed(row, tried)) {
              // The last attempt's write landed after all: its answer was lost.
              remember(row, tried.connection)
              yield* publish(tried.events, tried.connection, options?.answeredNs)
              return Result.succeed({ connection: tried.connection, written: true })
            }
            const opened = yield* decode(row).pipe(Effect.result)
            if (Result.isFailure(opened)) return Result.fail(opened.failure)
            current = opened.success
          }
          const now = yield* Clock.currentTimeMillis
          const decided = f(current, now)
          const change = Effect.isEffect(decided)
            ? yield* (decided as Effect.Effect<Change, E>).pipe(Effect.result)
            : Result.succeed(decided as Change)
          if (Result.isFailure(change)) return Result.fail(change.failure)
          if (change.success._tag === "Keep") return Result.succeed({ connection: current, written: false })
          const next = derive(change.success.next, current.version + 1, now, current.status === "active")
          const record = recordOf(next, current)
          tried = { record, connection: next, events: change.success.events }
          const wrote = yield* inAttempt(
            store.update(record, current.version, durable(listOf(change.success.events, next)), {
              quiet: quiet(next, current),
              ...(options?.releaseLease !== undefined ? { releaseLease: options.releaseLease } : {})
            })
          )
          if (Result.isFailure(wrote)) return Result.fail(wrote.failure)
          remember(record, next)
          yield* publish(change.success.events, next, options?.answeredNs)
          return Result.succeed({ connection: next, written: true })
        })
        return retrying(attempt, options?.retry ?? defaultRetry).pipe(Effect.flatMap(Effect.fromResult))
      }

      const replace = (
        id: string,
        connection: NewConnection,
        options?: {
          readonly events?: ReplaceEvents | undefined
          readonly keepIf?: ((stored: ConnectionRecord) => boolean) | undefined
        }
      ): Effect.Effect<Connection | undefined, StoreError | ConnectionNotFound> => {
        const attached = (replaced: ConnectionRecord): AttachedEvents => {
          const events = options?.events ?? []
          return typeof events === "function" ? (written) => events(written, replaced) : events
        }
        let tried:
          | {
              readonly record: ConnectionRecord
              readonly connection: Connection
              readonly replaced: ConnectionRecord
            }
          | undefined
        const attempt: Effect.Effect<
          Result.Result<Connection | undefined, StoreError | ConnectionNotFound>,
          StoreError
        > = Effect.gen(function* () {
          const read = yield* readRow(id)
          if (Result.isFailure(read)) return Result.fail(read.failure)
          const row = read.success
          if (landed(row, tried)) {
            remember(row, tried.connection)
            yield* publish(attached(tried.replaced), tried.connection, undefined)
            return Result.succeed(tried.connection)
          }
          if (options?.keepIf?.(row) === true) return Result.succeed(undefined)
          const now = yield* Clock.currentTimeMillis
          const next = derive(
            { ...connection, id, version: row.version + 1, createdAt: row.createdAt, updatedAt: now },
            row.version + 1,
            now,
            false
          )
          const record = recordOf(next)
          tried = { record, connection: next, replaced: row }
          const wrote = yield* inAttempt(
            store.update(record, row.version, durable(listOf(attached(row), next)))
          )
          if (Result.isFailure(wrote)) return Result.fail(wrote.failure)
          remember(record, next)
          yield* publish(attached(row), next, undefined)
          return Result.succeed(next)
        })
        return retrying(attempt, defaultRetry).pipe(Effect.flatMap(Effect.fromResult))
      }

      const reseal = resealWith(store, vault)

      const remove = (
        id: string,
        list: ReadonlyArray<LatchkeyEvent> = []
      ): Effect.Effect<boolean, StoreError> =>
        Effect.gen(function* () {
          const removed = yield* store.remove(id, durable(list))
          cache.delete(id)
          if (removed) for (const event of list) yield* events.publish(event)
          return removed
        })

      const note = (list: ReadonlyArray<LatchkeyEvent>): Effect.Effect<void> =>
        Effect.gen(function* () {
          if (list.length === 0) return
          if (store.appendEvents !== undefined) {
            yield* store.appendEvents(durable(list)).pipe(
              Effect.retry(defaultRetry),
              Effect.catch((e) =>
                Effect.logWarning(`lifecycle events not appended to the store's log: ${e.message}`)
              )
            )
          }
          for (const event of list) yield* events.publish(event)
        })

      return Connections.of({ get, decode, known, insert, modify, replace, reseal, remove, note })
    })
  )
}
