/**
 * The store service: connections, pending authorizations, and the lease that makes one refresh per
 * connection happen at a time across processes.
 *
 * The contract every store implements (the conformance suite in `@latchkey/core/testing` checks it):
 * - `insert` fails with `StoreError("conflict")` when the id exists, or when another connection has
 *   the same (ownerId, providerId, accountId).
 * - `update(record, expectedVersion)` is a compare-and-set: it writes only when the stored version is
 *   `expectedVersion`, and `record.version` must be `expectedVersion + 1`; otherwise `conflict`.
 * - The refresh lease is judged by the STORE's own clock, never by a caller's: `acquireLease` grants
 *   the lease when nobody holds it or the holder's lease has expired by the store's clock, and
 *   returns a strictly increasing `fence` with `grantedAt` / `expiresAt` on the store's clock; it
 *   returns `undefined` while someone else holds it. `renewLease` extends the caller's own lease
 *   (same holder and fence, granted again from the store's now) and returns `undefined` once another
 *   holder has taken it; `releaseLease` releases only the caller's own lease. A fence only grows,
 *   also across releases, so "same holder and fence" means nobody else held it in between. A store
 *   with `releasesLeaseOnUpdate` also releases a lease given to `update` (`UpdateOptions.releaseLease`)
 *   in the same atomic write, under the same rule, and only when the compare-and-set wrote.
 * - `takePending` is single-use: exactly one caller gets `Found` for a state; later callers get
 *   `Consumed` until the record's expiry, then `Missing`. With an `ownerId`, a pending record issued
 *   to another owner answers `Foreign` and stays unconsumed (checked and taken in one atomic step).
 * - `claimOnce(key, until, now)` (optional; every built-in store has it) is an atomic
 *   insert-if-absent with expiry: true for the first caller, false for every other caller until
 *   `until`, true again after. Used to drop replayed webhook deliveries across instances.
 * - `scan` and `count` (optional; every built-in store has them, `Vault.rotate` needs `scan`) walk
 *   every connection in pages ordered by id: `scan(after, limit)` returns at most `limit` connections
 *   whose id sorts after `after`, and `next`, the cursor of the following page (`undefined` after the
 *   last). The order is the store's own, used consistently (binary order in the built-in stores; ids
 *   are ASCII UUIDs, on which all of them agree).
 * - The lifecycle event log (optional; every built-in store has it, and `readEvents` tells that a
 *   store has it): `insert`, `update` and `remove` take lifecycle events that are appended in the
 *   SAME atomic write as the change (a failed write, e.g. a compare-and-set conflict, appends
 *   nothing); `appendEvents` appends events that go with no change. Each event gets a `seq` that
 *   only grows, and is visible to readers in `seq` order only (no reader can see a later event
 *   and later the earlier one commit): `readEvents(after, limit)` returns the events whose `seq`
 *   is greater than `after`, in order. `pruneEvents(before)` deletes those whose `at` is earlier.
 *   `getConsumerState` / `setConsumerState` keep a small JSON document per named consumer (its
 *   cursor, its dead letters), e.g. the webhook worker's.
 * Times other than the lease's are epoch milliseconds passed in by the caller, so that tests can
 * control the clock. Callers never compare a lease's times with their own clock: they measure the
 * time left on a lease as the time elapsed since they asked for it (see docs/architecture.md).
 */
import { Context, Effect, Layer, Schema } from "effect"
import type { ConnectionRecord } from "./Connection.ts"
import { StoreError } from "./Errors.ts"
import type { EventPage, LifecycleEvent, StoredLifecycleEvent } from "./LifecycleEvents.ts"

export interface Lease {
  readonly connectionId: string
  readonly holder: string
  /** Strictly increasing per connection, across releases: a newer holder always has a larger fence. */
  readonly fence: number
  /** When the store granted (or last renewed) the lease, on the store's own clock (epoch ms). */
  readonly grantedAt: number
  /** When it lapses, on the store's own clock (epoch ms). */
  readonly expiresAt: number
}

export interface PendingAuthorization {
  readonly state: string
  readonly providerId: string
  readonly ownerId: string
  readonly redirectUri: string
  /** Sealed PKCE code verifier, when PKCE is used. */
  readonly codeVerifier: string | null
  /** Sealed DPoP private key (JWK JSON) of the connection to be, for providers with `dpop`. */
  readonly dpopKey?: string | null | undefined
  readonly scopes: ReadonlyArray<string>
  readonly createdAt: number
  readonly expiresAt: number
  /** Free-form JSON the app attached at start (e.g. where to return to). */
  readonly metadata: Record<string, unknown> | null
}

/** What a store tells about itself (`describe`), for operators (`latchkey doctor`). */
export interface StoreDescription {
  /** `memory`, `sqlite`, `postgres`, `redis`, … */
  readonly kind: string
  /** The store's own clock (epoch ms), read from it directly: lease expiries are compared with it. */
  readonly serverTime: number
  /** The schema version its tables are at, for stores with migrations. */
  readonly schemaVersion?: number | undefined
  /** Settings an operator should see, e.g. Redis's `maxmemory-policy`. */
  readonly settings: Readonly<Record<string, string>>
}

/** One page of `scan`. */
export interface ScanPage {
  readonly records: ReadonlyArray<ConnectionRecord>
  /** Pass as `after` for the next page; `undefined` when this page is the last. */
  readonly next: string | undefined
}

/**
 * What `watch` tells its listeners. `Changed`: the connection's row was written (insert, update,
 * remove). `Live`: the channel is (again) connected — anything may have changed while it was not, so
 * flush everything cached; changes are delivered from now on. `Lost`: the channel is down; changes
 * made elsewhere may go unseen until the next `Live`.
 */
export type StoreChange =
  | { readonly _tag: "Changed"; readonly id: string }
  | { readonly _tag: "Live" }
  | { readonly _tag: "Lost" }

export type StoreChangeListener = (change: StoreChange) => void

/**
 * The listeners of one store object: writes made through it are announced to them synchronously,
 * before the write's Effect completes. A throwing listener is ignored.
 */
export const makeChangeHub = () => {
  const listeners = new Set<StoreChangeListener>()
  const emit = (change: StoreChange) => {
    for (const listener of listeners) {
      try {
        listener(change)
      } catch {
        // a listener's failure never breaks a write
      }
    }
  }
  return {
    listeners,
    emit,
    changed: (id: string) => {
      if (listeners.size > 0) emit({ _tag: "Changed", id })
    },
    add: (listener: StoreChangeListener) => {
      listeners.add(listener)
      return () => {
        listeners.delete(listener)
      }
    }
  }
}

export type TakePendingResult =
  | { readonly _tag: "Found"; readonly pending: PendingAuthorization }
  | { readonly _tag: "Consumed" }
  | { readonly _tag: "Missing" }
  /** The state was issued to another owner than the one given; it was left unconsumed. */
  | { readonly _tag: "Foreign" }

/** How a connection write may be announced (see `ConnectionStoreShape.update`). */
export interface UpdateOptions {
  /** Nothing a cache of access tokens holds changed: other processes need not be told. */
  readonly quiet?: boolean | undefined
  /**
   * Release this lease in the same atomic write, exactly as `releaseLease` would (only while it is
   * still the caller's: same holder and fence), and only when the compare-and-set wrote; a write
   * that fails leaves the lease as it was. Honoured by stores that say `releasesLeaseOnUpdate`
   * (the refresh engine then makes no separate `releaseLease` call after its final write); others
   * ignore it.
   */
  readonly releaseLease?: Lease | undefined
}

export interface ConnectionStoreShape {
  readonly get: (id: string) => Effect.Effect<ConnectionRecord | undefined, StoreError>
  readonly findByAccount: (
    ownerId: string,
    providerId: string,
    accountId: string
  ) => Effect.Effect<ConnectionRecord | undefined, StoreError>
  readonly listByOwner: (ownerId: string) => Effect.Effect<ReadonlyArray<ConnectionRecord>, StoreError>
  /** Active connections whose `refreshDueAt <= now`, soonest first. */
  readonly listDue: (now: number, limit: number) => Effect.Effect<ReadonlyArray<ConnectionRecord>, StoreError>
  /** `events` are appended to the event log in the same atomic write (stores with `readEvents`). */
  readonly insert: (
    record: ConnectionRecord,
    events?: ReadonlyArray<LifecycleEvent> | undefined
  ) => Effect.Effect<void, StoreError>
  /**
   * `events` are appended in the same write, and only when the compare-and-set succeeds. With
   * `options.quiet` the write changes nothing a cache of access tokens holds (the access token, its
   * type and expiry, the status: e.g. a refresh journal, a failure streak), so a store may leave it
   * out of what it sends to OTHER processes through its channel (`watch`); listeners on this store
   * object are told as always.
   */
  readonly update: (
    record: ConnectionRecord,
    expectedVersion: number,
    events?: ReadonlyArray<LifecycleEvent> | undefined,
    options?: UpdateOptions | undefined
  ) => Effect.Effect<void, StoreError>
  /** `events` are appended in the same write, and only when a connection was removed. */
  readonly remove: (
    id: string,
    events?: ReadonlyArray<LifecycleEvent> | undefined
  ) => Effect.Effect<boolean, StoreError>
  /** Take the lease for `ttlMs` (store clock) unless someone holds an unexpired one. */
  readonly acquireLease: (
    connectionId: string,
    holder: string,
    ttlMs: number
  ) => Effect.Effect<Lease | undefined, StoreError>
  /**
   * Extend the caller's own lease to `ttlMs` from the store's now. `undefined` when it is no longer
   * the caller's (released, or taken by a newer holder after it lapsed).
   */
  readonly renewLease: (lease: Lease, ttlMs: number) => Effect.Effect<Lease | undefined, StoreError>
  readonly releaseLease: (lease: Lease) => Effect.Effect<void, StoreError>
  /** `update` honours `UpdateOptions.releaseLease` (one round trip fewer per refresh). */
  readonly releasesLeaseOnUpdate?: boolean | undefined
  readonly putPending: (pending: PendingAuthorization) => Effect.Effect<void, StoreError>
  readonly takePending: (
    state: string,
    now: number,
    ownerId?: string | undefined
  ) => Effect.Effect<TakePendingResult, StoreError>
  /**
   * Every connection, a page at a time, ordered by id: those whose id sorts after `after` (all when
   * `undefined`). Optional for third-party stores; `Vault.rotate` needs it.
   */
  readonly scan?: (after: string | undefined, limit: number) => Effect.Effect<ScanPage, StoreError>
  /**
   * Record `key` until `until`: true when this call recorded it, false when it was recorded already
   * and has not expired (atomic across instances). Optional for third-party stores.
   */
  readonly claimOnce?: (key: string, until: number, now: number) => Effect.Effect<boolean, StoreError>
  /**
   * Claim up to `limit` due connections for `holder`, atomically across instances: active ones whose
   * `refreshDueAt <= now`, soonest first, that nobody holds an unexpired refresh lease on and nobody
   * (this holder included) holds an unexpired claim on. A claim holds the connection's version: any
   * write of the connection (its refresh) ends it. Each returned connection is claimed until
   * `ttlMs` from now by the STORE's clock (like leases), so a claimer that dies leaves its claims to
   * lapse; a claim is only a hint for the background Refresher (N instances split the due work instead
   * of chasing one batch), never a lease: the refresh still takes the lease. Optional; without it
   * the Refresher uses `listDue`.
   */
  readonly claimDue?: (
    now: number,
    limit: number,
    holder: string,
    ttlMs: number
  ) => Effect.Effect<ReadonlyArray<ConnectionRecord>, StoreError>
  /**
   * A rate budget shared by every instance on this store (e.g. `refresh:<provider>`): reserve the
   * next `cost` slots of `key`, spaced `windowMs / limit` apart on the STORE's clock, so that all
   * instances together never exceed `limit` per `windowMs`. Returns how long (ms) the caller must
   * wait before its slot; the reservation is made either way (slots are never handed out twice).
   * Optional; without it the Refresher and the ApiClient limit each process on its own.
   */
  readonly takeRateBudget?: (
    key: string,
    limit: number,
    windowMs: number,
    cost?: number
  ) => Effect.Effect<number, StoreError>
  /**
   * Be told when connection rows change, for caches (the Promise API's token cache). Writes made
   * through this store object are announced synchronously, before their Effect completes; writes by
   * other store objects and processes through the backend's own channel (PostgreSQL LISTEN/NOTIFY,
   * Redis pub/sub, SQLite's `data_version`), each followed by `Live` once that channel is connected
   * and after every reconnect. Memory and SQLite call the listener with `Live` at once. Returns a
   * function that stops listening. Optional: without it, a cache trusts an entry only for a bounded time.
   */
  readonly watch?: (listener: StoreChangeListener) => () => void
  /** How many connections the store holds. Optional; `Vault.rotate` reports progress against it. */
  readonly count?: () => Effect.Effect<number, StoreError>
  /** Its kind, its clock and its settings (optional; every built-in store has it). */
  readonly describe?: () => Effect.Effect<StoreDescription, StoreError>
  /** Append events that go with no change of a connection (optional: stores with an event log). */
  readonly appendEvents?: (events: ReadonlyArray<LifecycleEvent>) => Effect.Effect<void, StoreError>
  /** The events whose `seq` is greater than `after` (0: from the start), in order, at most `limit`. */
  readonly readEvents?: (after: number, limit: number) => Effect.Effect<EventPage, StoreError>
  /** Delete the events whose `at` is earlier than `before` (retention); returns how many. */
  readonly pruneEvents?: (before: number) => Effect.Effect<number, StoreError>
  /** A named consumer's state (JSON text), e.g. the webhook worker's cursor and dead letters. */
  readonly getConsumerState?: (name: string) => Effect.Effect<string | undefined, StoreError>
  readonly setConsumerState?: (name: string, state: string) => Effect.Effect<void, StoreError>
  /** Release connections to the backing driver (pools, files). */
  readonly close?: () => Effect.Effect<void>
}

export class ConnectionStore extends Context.Service<ConnectionStore, ConnectionStoreShape>()(
  "@latchkey/core/ConnectionStore"
) {
  /** The in-memory store: one process only, nothing survives a restart. */
  static readonly layerMemory = Layer.sync(ConnectionStore, () => makeMemory())
}

export interface MemoryStoreOptions {
  /** The store's own clock, which judges leases (default `Date.now`). */
  readonly clock?: (() => number) | undefined
}

export const conflict = (message: string) => new StoreError({ reason: "conflict", message })

const CONSUMED_TOMBSTONE_MS = 60 * 60 * 1000

/**
 * A copy of a stored event (plain data: objects, arrays, strings, numbers, booleans, null), so that
 * neither the writer nor a reader can change what the memory store holds. What `structuredClone`
 * did, at a fraction of its cost for these small records.
 */
const plainCopy = (value: unknown): unknown => {
  if (typeof value !== "object" || value === null) return value
  if (Array.isArray(value)) return value.map(plainCopy)
  const out: Record<string, unknown> = {}
  for (const key in value) out[key] = plainCopy((value as Record<string, unknown>)[key])
  return out
}

/** An in-memory store. Leases work between fibers of one process. */
export const makeMemory = (options: MemoryStoreOptions = {}): ConnectionStoreShape => {
  const clock = options.clock ?? Date.now
  const rows = new Map<string, ConnectionRecord>()
  const leases = new Map<string, Lease>()
  const fences = new Map<string, number>()
  const pending = new Map<string, { pending: PendingAuthorization; consumedAt: number | undefined }>()
  const accountKey = (r: Pick<ConnectionRecord, "ownerId" | "providerId" | "accountId">) =>
    `${r.ownerId}\u0000${r.providerId}\u0000${r.accountId}`
  const byAccount = new Map<string, string>()
  const claims = new Map<string, number>()
  let events: Array<StoredLifecycleEvent> = []
  let seq = 0
  const consumers = new Map<string, string>()
  /** Appended in the same synchronous step as the change: nothing can observe one without the other. */
  const append = (list: ReadonlyArray<LifecycleEvent> | undefined) => {
    if (list === undefined) return
    for (const event of list) {
      seq += 1
      events.push(plainCopy({ ...event, seq }) as StoredLifecycleEvent)
    }
  }
  /** The caller's own lease released (same holder and fence); another holder's is left alone. */
  const release = (lease: Lease) => {
    const held = leases.get(lease.connectionId)
    if (held !== undefined && held.holder === lease.holder && held.fence === lease.fence) {
      leases.delete(lease.connectionId)
    }
  }
  /** `claimDue`'s claims: connection id → expiry on the store's clock and the version claimed. */
  const dueClaims = new Map<string, { readonly until: number; readonly version: number }>()
  const hub = makeChangeHub()
  /** `takeRateBudget`: key → the next free slot (store clock). */
  const budgets = new Map<string, number>()

  return {
    get: (id) => Effect.sync(() => rows.get(id)),
    findByAccount: (ownerId, providerId, accountId) =>
      Effect.sync(() => {
        const id = byAccount.get(accountKey({ ownerId, providerId, accountId }))
        return id === undefined ? undefined : rows.get(id)
      }),
    listByOwner: (ownerId) =>
      Effect.sync(() =>
        [...rows.values()].filter((r) => r.ownerId === ownerId).sort((a, b) => a.createdAt - b.createdAt)
      ),
    scan: (after, limit) =>
      Effect.sync(() => {
        const ids = [...rows.keys()].filter((id) => after === undefined || id > after).sort()
        const page = ids.slice(0, Math.max(0, limit))
        return {
          records: page.map((id) => rows.get(id)!),
          next: ids.length > page.length && page.length > 0 ? page[page.length - 1] : undefined
        }
      }),
    count: () => Effect.sync(() => rows.size),
    describe: () => Effect.sync(() => ({ kind: "memory", serverTime: clock(), settings: {} })),
    claimOnce: (key, until, now) =>
      Effect.sync(() => {
        for (const [k, expiry] of claims) if (expiry <= now) claims.delete(k)
        if (claims.has(key)) return false
        claims.set(key, until)
        return true
      }),
    listDue: (now, limit) =>
      Effect.sync(() =>
        [...rows.values()]
          .filter((r) => r.status === "active" && r.refreshDueAt !== null && r.refreshDueAt <= now)
          .sort((a, b) => (a.refreshDueAt ?? 0) - (b.refreshDueAt ?? 0))
          .slice(0, limit)
      ),
    watch: (listener) => {
      const stop = hub.add(listener)
      listener({ _tag: "Live" })
      return stop
    },
    takeRateBudget: (key, limit, windowMs, cost = 1) =>
      Effect.sync(() => {
        const at = clock()
        const spacing = windowMs / Math.max(1e-9, limit)
        const slot = Math.max(at, budgets.get(key) ?? 0)
        budgets.set(key, slot + spacing * Math.max(1, cost))
        if (budgets.size > 10_000) {
          for (const [k, next] of budgets) if (next < at) budgets.delete(k)
        }
        return Math.max(0, slot - at)
      }),
    claimDue: (now, limit, _holder, ttlMs) =>
      Effect.sync(() => {
        const at = clock()
        const free = (r: ConnectionRecord) => {
          const claim = dueClaims.get(r.id)
          return (
            (leases.get(r.id)?.expiresAt ?? 0) <= at &&
            (claim === undefined || claim.until <= at || claim.version !== r.version)
          )
        }
        // The `limit` earliest due rows in one pass (kept sorted by due time, then id): no copy and
        // no sort of every row on each claim, which made a sweep of n rows O(n² / chunk).
        const k = Math.max(0, Math.floor(limit))
        const picked: Array<ConnectionRecord> = []
        const before = (a: ConnectionRecord, b: ConnectionRecord) =>
          a.refreshDueAt! < b.refreshDueAt! || (a.refreshDueAt === b.refreshDueAt && a.id < b.id)
        if (k > 0) {
          for (const r of rows.values()) {
            if (r.status !== "active" || r.refreshDueAt === null || r.refreshDueAt > now) continue
            if (picked.length === k && !before(r, picked[k - 1]!)) continue
            if (!free(r)) continue
            let lo = 0
            let hi = picked.length
            while (lo < hi) {
              const mid = (lo + hi) >>> 1
              if (before(picked[mid]!, r)) lo = mid + 1
              else hi = mid
            }
            picked.splice(lo, 0, r)
            if (picked.length > k) picked.pop()
          }
        }
        for (const r of picked) dueClaims.set(r.id, { until: at + Math.max(1, ttlMs), version: r.version })
        for (const [id, claim] of dueClaims) if (claim.until <= at) dueClaims.delete(id)
        return picked
      }),
    insert: (record, appended) =>
      Effect.suspend(() => {
        if (rows.has(record.id)) return Effect.fail(conflict(`connection ${record.id} already exists`))
        const key = accountKey(record)
        if (byAccount.has(key)) {
          return Effect.fail(
            conflict(`account ${record.accountId} of ${record.providerId} is already linked`)
          )
        }
        rows.set(record.id, record)
        byAccount.set(key, record.id)
        append(appended)
        hub.changed(record.id)
        return Effect.void
      }),
    update: (record, expectedVersion, appended, options) =>
      Effect.suspend(() => {
        const current = rows.get(record.id)
        if (current === undefined) return Effect.fail(conflict(`connection ${record.id} does not exist`))
        if (current.version !== expectedVersion || record.version !== expectedVersion + 1) {
          return Effect.fail(
            conflict(`connection ${record.id} is at version ${current.version}, expected ${expectedVersion}`)
          )
        }
        byAccount.delete(accountKey(current))
        rows.set(record.id, record)
        byAccount.set(accountKey(record), record.id)
        if (options?.releaseLease !== undefined) release(options.releaseLease)
        append(appended)
        hub.changed(record.id)
        return Effect.void
      }),
    remove: (id, appended) =>
      Effect.sync(() => {
        const current = rows.get(id)
        if (current === undefined) return false
        rows.delete(id)
        byAccount.delete(accountKey(current))
        leases.delete(id)
        append(appended)
        dueClaims.delete(id)
        hub.changed(id)
        return true
      }),
    appendEvents: (list) => Effect.sync(() => append(list)),
    readEvents: (after, limit) =>
      Effect.sync(() => {
        const page = events.filter((e) => e.seq > after).slice(0, Math.max(0, Math.floor(limit)))
        return {
          events: page.map((e) => plainCopy(e) as StoredLifecycleEvent),
          next: page.length === 0 ? after : page[page.length - 1]!.seq
        }
      }),
    pruneEvents: (before) =>
      Effect.sync(() => {
        const kept = events.filter((e) => e.at >= before)
        const removed = events.length - kept.length
        events = kept
        return removed
      }),
    getConsumerState: (name) => Effect.sync(() => consumers.get(name)),
    setConsumerState: (name, state) =>
      Effect.sync(() => {
        consumers.set(name, state)
      }),
    acquireLease: (connectionId, holder, ttlMs) =>
      Effect.sync(() => {
        const now = clock()
        const held = leases.get(connectionId)
        if (held !== undefined && held.expiresAt > now) return undefined
        const fence = (fences.get(connectionId) ?? 0) + 1
        fences.set(connectionId, fence)
        const lease: Lease = { connectionId, holder, fence, grantedAt: now, expiresAt: now + ttlMs }
        leases.set(connectionId, lease)
        return lease
      }),
    renewLease: (lease, ttlMs) =>
      Effect.sync(() => {
        const held = leases.get(lease.connectionId)
        const fence = fences.get(lease.connectionId) ?? 0
        if (fence !== lease.fence) return undefined
        if (held !== undefined && held.holder !== lease.holder) return undefined
        if (held === undefined) return undefined
        const now = clock()
        const renewed: Lease = { ...lease, grantedAt: now, expiresAt: now + ttlMs }
        leases.set(lease.connectionId, renewed)
        return renewed
      }),
    releaseLease: (lease) => Effect.sync(() => release(lease)),
    releasesLeaseOnUpdate: true,
    putPending: (p) =>
      Effect.sync(() => {
        for (const [state, entry] of pending) {
          const until =
            entry.consumedAt === undefined
              ? entry.pending.expiresAt
              : Math.max(entry.pending.expiresAt, entry.consumedAt + CONSUMED_TOMBSTONE_MS)
          if (until < p.createdAt) pending.delete(state)
        }
        pending.set(p.state, { pending: p, consumedAt: undefined })
      }),
    takePending: (state, now, ownerId) =>
      Effect.sync((): TakePendingResult => {
        const entry = pending.get(state)
        if (entry === undefined) return { _tag: "Missing" }
        if (entry.consumedAt !== undefined) return { _tag: "Consumed" }
        if (ownerId !== undefined && entry.pending.ownerId !== ownerId) return { _tag: "Foreign" }
        entry.consumedAt = now
        return { _tag: "Found", pending: entry.pending }
      })
  }
}

/**
 * What a stored connection must look like to be used: the fields every store indexes and the engine
 * reads, checked without being transformed (fields a newer release adds are kept as stored).
 */
const StoredRecord = Schema.Struct({
  id: Schema.String,
  ownerId: Schema.String,
  providerId: Schema.String,
  accountId: Schema.String,
  label: Schema.String,
  kind: Schema.String,
  status: Schema.String,
  version: Schema.Int,
  createdAt: Schema.Finite,
  updatedAt: Schema.Finite,
  lastRefreshAt: Schema.NullOr(Schema.Finite),
  accessToken: Schema.String,
  refreshToken: Schema.NullOr(Schema.String),
  tokenType: Schema.String,
  obtainedAt: Schema.Finite,
  expiresAt: Schema.NullOr(Schema.Finite),
  refreshExpiresAt: Schema.NullOr(Schema.Finite),
  scopes: Schema.Array(Schema.String),
  extras: Schema.String,
  refreshDueAt: Schema.NullOr(Schema.Finite)
})
// Every record the engine writes passes the check (a change to the record's type must update it).
type _RecordsPass = ConnectionRecord extends typeof StoredRecord.Type ? true : never
const _recordsPass: _RecordsPass = true
void _recordsPass

const StoredPending = Schema.Struct({
  state: Schema.String,
  providerId: Schema.String,
  ownerId: Schema.String,
  redirectUri: Schema.String,
  codeVerifier: Schema.NullOr(Schema.String),
  scopes: Schema.Array(Schema.String),
  createdAt: Schema.Finite,
  expiresAt: Schema.Finite
})
type _PendingPass = PendingAuthorization extends typeof StoredPending.Type ? true : never
const _pendingPass: _PendingPass = true
void _pendingPass

const isStoredRecord = Schema.is(StoredRecord)
const isStoredPending = Schema.is(StoredPending)

const corrupt = (store: string, what: string, problem: string, operation: string | undefined) =>
  new StoreError({
    reason: "corrupt",
    message: `${store}: ${what} ${problem}`,
    ...(operation !== undefined ? { operation } : {})
  })

const parseStored = <A>(
  check: (u: unknown) => boolean,
  text: unknown,
  store: string,
  what: string,
  operation: string | undefined
): A => {
  if (typeof text !== "string") throw corrupt(store, what, "is not stored as text", operation)
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch {
    // The parser's message quotes the text, which holds sealed (or plain) tokens: not kept.
    throw corrupt(store, what, "is not valid JSON", operation)
  }
  if (!check(value)) throw corrupt(store, what, "is not a Latchkey record", operation)
  return value as A
}

/**
 * Decode a connection as a store keeps it (JSON text). Throws `StoreError("corrupt")` — never
 * retryable, never quoting the text (it holds sealed tokens) — for text that is not JSON or not a
 * connection record. For stores: `store` names the store in the message (`"SQLite store"`).
 */
export const decodeRecord = (
  text: unknown,
  store: string,
  what = "a stored connection",
  operation?: string | undefined
): ConnectionRecord => parseStored<ConnectionRecord>(isStoredRecord, text, store, what, operation)

/** Decode a pending authorization as a store keeps it; as `decodeRecord`. */
export const decodePending = (
  text: unknown,
  store: string,
  what = "a pending authorization",
  operation?: string | undefined
): PendingAuthorization => parseStored<PendingAuthorization>(isStoredPending, text, store, what, operation)
