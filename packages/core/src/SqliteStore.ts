/**
 * The embedded store: one SQLite file in WAL mode through Node's built-in `node:sqlite` (no native
 * addon). Safe for several processes on one machine: every write is a single statement or an
 * IMMEDIATE transaction, so the refresh lease and the compare-and-set updates hold across processes.
 *
 * Tables are created idempotently on open (schema version kept in `latchkey_meta`).
 */
import { mkdirSync } from "node:fs"
import { dirname } from "node:path"
import { DatabaseSync, type StatementSync } from "node:sqlite"
import { Effect, Layer } from "effect"
import type { ConnectionRecord } from "./Connection.ts"
import {
  ConnectionStore,
  type ConnectionStoreShape,
  conflict,
  decodePending,
  decodeRecord,
  type Lease,
  makeChangeHub,
  type PendingAuthorization,
  type TakePendingResult
} from "./ConnectionStore.ts"
import { StoreError } from "./Errors.ts"
import { decode, encode, type LifecycleEvent } from "./LifecycleEvents.ts"

export interface SqliteStoreOptions {
  /** The database file (created with its folder when missing), or `":memory:"`. */
  readonly path: string
  /** How long a statement waits for another process's write lock (default 5 s). */
  readonly busyTimeoutMs?: number | undefined
  /**
   * The store's own clock, which judges refresh leases (default `Date.now`: every process on the
   * machine shares the host clock, so leases never depend on a caller's clock). For tests.
   */
  readonly clock?: (() => number) | undefined
  /**
   * How often `watch` polls `PRAGMA data_version` for commits by other connections to the file (other
   * processes, other store objects), default 100 ms: the longest a cache sees another process's write late.
   */
  readonly watchIntervalMs?: number | undefined
}

const SCHEMA_VERSION = 2
const CONSUMED_TOMBSTONE_MS = 60 * 60 * 1000

const MIGRATIONS = [
  `CREATE TABLE IF NOT EXISTS latchkey_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)`,
  `CREATE TABLE IF NOT EXISTS latchkey_connections (
     id TEXT PRIMARY KEY,
     owner_id TEXT NOT NULL,
     provider_id TEXT NOT NULL,
     account_id TEXT NOT NULL,
     version INTEGER NOT NULL,
     status TEXT NOT NULL,
     refresh_due_at INTEGER,
     created_at INTEGER NOT NULL,
     record TEXT NOT NULL,
     UNIQUE (owner_id, provider_id, account_id)
   )`,
  `CREATE INDEX IF NOT EXISTS latchkey_connections_owner ON latchkey_connections (owner_id, created_at)`,
  `CREATE INDEX IF NOT EXISTS latchkey_connections_due ON latchkey_connections (status, refresh_due_at)`,
  // `claimDue`'s order (due time, then id), read up to its limit. Without it, the due rows that share
  // a due time were all sorted on every claim: 4.8 ms a claim for 20,000 rows due at once (a bulk
  // import), against 0.04 ms with it. Created idempotently on every open.
  `CREATE INDEX IF NOT EXISTS latchkey_connections_claim ON latchkey_connections (status, refresh_due_at, id)`,
  `CREATE TABLE IF NOT EXISTS latchkey_leases (
     connection_id TEXT PRIMARY KEY,
     holder TEXT,
     fence INTEGER NOT NULL,
     expires_at INTEGER NOT NULL
   )`,
  // `claimDue`'s claims (added after schema version 1; created idempotently on every open).
  `CREATE TABLE IF NOT EXISTS latchkey_claims (
     connection_id TEXT PRIMARY KEY,
     holder TEXT NOT NULL,
     expires_at INTEGER NOT NULL,
     version INTEGER NOT NULL
   )`,
  // `takeRateBudget`'s budgets: the next free slot of each key (ms, host clock).
  `CREATE TABLE IF NOT EXISTS latchkey_rates (key TEXT PRIMARY KEY, next_slot REAL NOT NULL)`,
  `CREATE TABLE IF NOT EXISTS latchkey_pending (
     state TEXT PRIMARY KEY,
     record TEXT NOT NULL,
     expires_at INTEGER NOT NULL,
     consumed_at INTEGER
   )`,
  // Version 2: the lifecycle event log (AUTOINCREMENT: a seq is never reused, also after pruning)
  // and the state of its consumers (e.g. the webhook worker's cursor and dead letters).
  `CREATE TABLE IF NOT EXISTS latchkey_events (
     seq INTEGER PRIMARY KEY AUTOINCREMENT,
     at INTEGER NOT NULL,
     connection_id TEXT NOT NULL,
     event TEXT NOT NULL
   )`,
  `CREATE INDEX IF NOT EXISTS latchkey_events_at ON latchkey_events (at)`,
  `CREATE TABLE IF NOT EXISTS latchkey_event_consumers (
     name TEXT PRIMARY KEY,
     state TEXT NOT NULL
   )`
]

/** The driver's error reduced to its name, message and code (no bound values, no record text). */
const safeCause = (cause: unknown): Error => {
  const error = new Error(String((cause as Error)?.message ?? cause))
  error.name = String((cause as Error)?.name ?? "Error")
  const code = (cause as { code?: unknown } | undefined)?.code
  if (typeof code === "string") Object.assign(error, { code })
  error.stack = `${error.name}: ${error.message}`
  return error
}

/** SQLite's extended result code, from node:sqlite's `errcode` (the primary code is its low byte). */
const resultCode = (cause: unknown): number | undefined => {
  const errcode = (cause as { errcode?: unknown } | undefined)?.errcode
  return typeof errcode === "number" ? errcode : undefined
}

/** SQLITE_CONSTRAINT_UNIQUE, SQLITE_CONSTRAINT_PRIMARYKEY: a duplicate id or account. */
const DUPLICATE = new Set([2067, 1555])
/** SQLITE_BUSY, SQLITE_LOCKED: another connection holds the lock past `busyTimeoutMs`. */
const BUSY = new Set([5, 6])
/** SQLITE_CORRUPT, SQLITE_NOTADB: the file is not a (sound) database. */
const CORRUPT = new Set([11, 26])

const STORE = "SQLite store"

/**
 * The SQLite classifier: every failure of `node:sqlite` (or of decoding a row) as a `StoreError`
 * with the reasons every store shares. A duplicate id or account is `conflict`; a row that is not a
 * record, or a damaged file, is `corrupt`; a busy database is `timeout`; anything else (disk full, I/O
 * error, a closed database, a write a trigger or check refused) `unavailable`.
 */
export const classifySqliteError =
  (operation: string) =>
  (cause: unknown): StoreError => {
    if (cause instanceof StoreError) return cause
    const code = resultCode(cause)
    const primary = code === undefined ? undefined : code & 0xff
    const text = String((cause as Error)?.message ?? cause)
    if (
      (code !== undefined && DUPLICATE.has(code)) ||
      (code === undefined && /UNIQUE constraint|PRIMARY KEY/i.test(text))
    ) {
      return new StoreError({
        reason: "conflict",
        operation,
        message: `${STORE}: ${operation}: already exists`
      })
    }
    const busy =
      (primary !== undefined && BUSY.has(primary)) || (code === undefined && /busy|locked/i.test(text))
    const damaged = primary !== undefined && CORRUPT.has(primary)
    return new StoreError({
      reason: busy ? "timeout" : damaged ? "corrupt" : "unavailable",
      operation,
      message: `${STORE}: ${operation} failed (${busy ? "database is busy" : text})`,
      cause: safeCause(cause)
    })
  }

const storeError = classifySqliteError

const parse =
  (operation: string) =>
  (row: { record: unknown } | undefined): ConnectionRecord | undefined =>
    row === undefined ? undefined : decodeRecord(row.record, STORE, "a stored connection", operation)

const invalidOption = (field: string, problem: string) =>
  new StoreError({ reason: "invalid_options", field, message: `SqliteStore: ${field} ${problem}` })

/** Check the options; throws `StoreError("invalid_options")` naming the bad one. */
const validate = (options: SqliteStoreOptions) => {
  if (typeof options?.path !== "string" || options.path.length === 0) {
    throw invalidOption("path", 'must be a file path or ":memory:"')
  }
  const busy = options.busyTimeoutMs
  if (busy !== undefined && (!Number.isSafeInteger(busy) || busy < 0)) {
    throw invalidOption("busyTimeoutMs", "must be a non-negative integer")
  }
  if (options.clock !== undefined && typeof options.clock !== "function") {
    throw invalidOption("clock", "must be a function returning epoch milliseconds")
  }
}

/** Open (and migrate) a SQLite store. Call `close()` when done, or use `layer` for a scoped one. */
export const make = (
  options: SqliteStoreOptions
): ConnectionStoreShape & { readonly close: () => Effect.Effect<void> } => {
  validate(options)
  if (options.path !== ":memory:") mkdirSync(dirname(options.path), { recursive: true })
  const clock = options.clock ?? Date.now
  const db = new DatabaseSync(options.path, { timeout: options.busyTimeoutMs ?? 5_000 })
  db.exec("PRAGMA journal_mode = WAL")
  db.exec("PRAGMA synchronous = NORMAL")
  db.exec("PRAGMA foreign_keys = ON")
  db.exec("BEGIN IMMEDIATE")
  try {
    for (const sql of MIGRATIONS) db.exec(sql)
    // Every statement above is idempotent: a file at an older version is now at this one.
    db.prepare(
      `INSERT INTO latchkey_meta (key, value) VALUES ('schema_version', ?)
       ON CONFLICT (key) DO UPDATE SET value = excluded.value WHERE CAST(value AS INTEGER) < CAST(excluded.value AS INTEGER)`
    ).run(String(SCHEMA_VERSION))
    db.exec("COMMIT")
  } catch (e) {
    db.exec("ROLLBACK")
    db.close()
    throw e
  }

  const statements = new Map<string, StatementSync>()
  const sql = (text: string) => {
    let s = statements.get(text)
    if (s === undefined) {
      s = db.prepare(text)
      statements.set(text, s)
    }
    return s
  }

  /** Run `f` in an IMMEDIATE transaction (takes the write lock up front, so no upgrade deadlocks). */
  const transaction = <A>(f: () => A): A => {
    db.exec("BEGIN IMMEDIATE")
    try {
      const result = f()
      db.exec("COMMIT")
      return result
    } catch (e) {
      if (db.isTransaction) db.exec("ROLLBACK")
      throw e
    }
  }

  const attempt = <A>(what: string, f: () => A): Effect.Effect<A, StoreError> =>
    Effect.try({ try: f, catch: storeError(what) })

  const insertRow = (record: ConnectionRecord) => {
    sql(
      `INSERT INTO latchkey_connections
         (id, owner_id, provider_id, account_id, version, status, refresh_due_at, created_at, record)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`
    ).run(
      record.id,
      record.ownerId,
      record.providerId,
      record.accountId,
      record.version,
      record.status,
      record.refreshDueAt,
      record.createdAt,
      JSON.stringify(record)
    )
  }

  /** The caller's own lease released (same holder and fence); another holder's is left alone. */
  const releaseRow = (lease: Lease) => {
    sql(
      "UPDATE latchkey_leases SET holder = NULL, expires_at = 0 WHERE connection_id = ? AND holder = ? AND fence = ?"
    ).run(lease.connectionId, lease.holder, lease.fence)
  }

  const updateRow = (record: ConnectionRecord, expectedVersion: number): number =>
    Number(
      sql(
        `UPDATE latchkey_connections
         SET owner_id = ?, provider_id = ?, account_id = ?, version = ?, status = ?, refresh_due_at = ?, record = ?
         WHERE id = ? AND version = ?`
      ).run(
        record.ownerId,
        record.providerId,
        record.accountId,
        record.version,
        record.status,
        record.refreshDueAt,
        JSON.stringify(record),
        record.id,
        expectedVersion
      ).changes
    )

  /** Inside the caller's transaction: one writer at a time, so `seq` order is commit order. */
  const appendEvents = (events: ReadonlyArray<LifecycleEvent>) => {
    for (const event of events) {
      sql("INSERT INTO latchkey_events (at, connection_id, event) VALUES (?, ?, ?)").run(
        event.at,
        event.connectionId,
        encode(event)
      )
    }
  }

  // watch: writes through this object are announced at once; commits by other connections are seen
  // by polling `PRAGMA data_version` (it changes only for them), and flush everything (`Live`).
  const hub = makeChangeHub()
  const watchIntervalMs = options.watchIntervalMs ?? 100
  let poller: ReturnType<typeof setInterval> | undefined
  let dataVersion = -1
  const readDataVersion = () =>
    (db.prepare("PRAGMA data_version").get() as { data_version: number }).data_version
  const stopPolling = () => {
    if (poller !== undefined) clearInterval(poller)
    poller = undefined
  }
  const watch = (listener: Parameters<typeof hub.add>[0]) => {
    const stop = hub.add(listener)
    if (poller === undefined && db.isOpen) {
      dataVersion = readDataVersion()
      poller = setInterval(() => {
        if (!db.isOpen) return stopPolling()
        let now: number
        try {
          now = readDataVersion()
        } catch {
          return
        }
        if (now !== dataVersion) {
          dataVersion = now
          hub.emit({ _tag: "Live" })
        }
      }, watchIntervalMs)
      poller.unref?.()
    }
    listener({ _tag: "Live" })
    return () => {
      stop()
      if (hub.listeners.size === 0) stopPolling()
    }
  }

  const store: ConnectionStoreShape & { readonly close: () => Effect.Effect<void> } = {
    get: (id) =>
      attempt("get", () =>
        parse("get")(
          sql("SELECT record FROM latchkey_connections WHERE id = ?").get(id) as
            | { record: string }
            | undefined
        )
      ),
    findByAccount: (ownerId, providerId, accountId) =>
      attempt("findByAccount", () =>
        parse("findByAccount")(
          sql(
            "SELECT record FROM latchkey_connections WHERE owner_id = ? AND provider_id = ? AND account_id = ?"
          ).get(ownerId, providerId, accountId) as { record: string } | undefined
        )
      ),
    listByOwner: (ownerId) =>
      attempt("listByOwner", () =>
        (
          sql("SELECT record FROM latchkey_connections WHERE owner_id = ? ORDER BY created_at, id").all(
            ownerId
          ) as Array<{ record: string }>
        ).map((r) => parse("listByOwner")(r)!)
      ),
    scan: (after, limit) =>
      attempt("scan", () => {
        const size = Math.max(0, Math.floor(limit))
        const rows = (
          after === undefined
            ? sql("SELECT id, record FROM latchkey_connections ORDER BY id LIMIT ?").all(size + 1)
            : sql("SELECT id, record FROM latchkey_connections WHERE id > ? ORDER BY id LIMIT ?").all(
                after,
                size + 1
              )
        ) as Array<{ id: string; record: string }>
        const page = rows.slice(0, size)
        return {
          records: page.map((r) => parse("scan")(r)!),
          next: rows.length > size && size > 0 ? page[page.length - 1]!.id : undefined
        }
      }),
    describe: () =>
      attempt("describe", () => {
        const row = sql(
          "SELECT CAST(unixepoch('subsec') * 1000 AS INTEGER) AS now, (SELECT value FROM latchkey_meta WHERE key = 'schema_version') AS version"
        ).get() as { now: number; version: string | null }
        const mode = (db.prepare("PRAGMA journal_mode").get() as { journal_mode: string }).journal_mode
        return {
          kind: "sqlite",
          serverTime: Number(row.now),
          schemaVersion: row.version === null ? undefined : Number(row.version),
          settings: { path: options.path, journal_mode: mode }
        }
      }),
    count: () =>
      attempt(
        "count",
        () => (sql("SELECT COUNT(*) AS n FROM latchkey_connections").get() as { n: number }).n
      ),
    listDue: (now, limit) =>
      attempt("listDue", () =>
        (
          sql(
            `SELECT record FROM latchkey_connections
             WHERE status = 'active' AND refresh_due_at IS NOT NULL AND refresh_due_at <= ?
             ORDER BY refresh_due_at LIMIT ?`
          ).all(now, limit) as Array<{ record: string }>
        ).map((r) => parse("listDue")(r)!)
      ),
    watch,
    takeRateBudget: (key, limit, windowMs, cost = 1) =>
      attempt("takeRateBudget", () => {
        // One statement: the slot is max(stored next slot, now); the next one is `cost` spacings later.
        const at = clock()
        const step = (windowMs / Math.max(1e-9, limit)) * Math.max(1, cost)
        const row = sql(
          `INSERT INTO latchkey_rates (key, next_slot) VALUES (?, ? + ?)
           ON CONFLICT (key) DO UPDATE SET next_slot = MAX(next_slot, excluded.next_slot - ?) + ?
           RETURNING next_slot`
        ).get(key, at, step, step, step) as { next_slot: number }
        return Math.max(0, row.next_slot - step - at)
      }),
    claimDue: (now, limit, holder, ttlMs) =>
      attempt("claimDue", () =>
        transaction(() => {
          // Under the write lock (IMMEDIATE), so no other process claims between the pick and the mark.
          const at = clock()
          const claimed = sql(
            `INSERT INTO latchkey_claims (connection_id, holder, expires_at, version)
             SELECT c.id, ?, ?, c.version FROM latchkey_connections c
             WHERE c.status = 'active' AND c.refresh_due_at IS NOT NULL AND c.refresh_due_at <= ?
               AND NOT EXISTS (SELECT 1 FROM latchkey_leases l WHERE l.connection_id = c.id AND l.expires_at > ?)
               AND NOT EXISTS (SELECT 1 FROM latchkey_claims k WHERE k.connection_id = c.id AND k.expires_at > ? AND k.version = c.version)
             ORDER BY c.refresh_due_at, c.id LIMIT ?
             ON CONFLICT (connection_id) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at, version = excluded.version
             RETURNING connection_id`
          ).all(
            holder,
            at + Math.max(1, Math.floor(ttlMs)),
            now,
            at,
            at,
            Math.max(0, Math.floor(limit))
          ) as Array<{
            connection_id: string
          }>
          if (claimed.length === 0) return []
          const get = sql("SELECT record FROM latchkey_connections WHERE id = ?")
          const records = claimed.map(
            (r) => parse("claimDue")(get.get(r.connection_id) as { record: string })!
          )
          return records.sort(
            (a, b) => (a.refreshDueAt ?? 0) - (b.refreshDueAt ?? 0) || (a.id < b.id ? -1 : 1)
          )
        })
      ),
    insert: (record, events) =>
      Effect.try({
        try: () => {
          if (events !== undefined && events.length > 0) {
            transaction(() => {
              insertRow(record)
              appendEvents(events)
            })
          } else {
            insertRow(record)
          }
          hub.changed(record.id)
        },
        catch: (e) => {
          const error = storeError("insert")(e)
          return error.reason === "conflict"
            ? conflict(
                `connection ${record.id} (account ${record.accountId} of ${record.providerId}) already exists`
              )
            : error
        }
      }),
    update: (record, expectedVersion, events, options) =>
      Effect.suspend(() => {
        if (record.version !== expectedVersion + 1) {
          return Effect.fail(conflict(`connection ${record.id}: a write must advance the version by one`))
        }
        const lease = options?.releaseLease
        return Effect.try({
          try: () =>
            (events === undefined || events.length === 0) && lease === undefined
              ? updateRow(record, expectedVersion)
              : transaction(() => {
                  const changes = updateRow(record, expectedVersion)
                  // A failed compare-and-set appends nothing and keeps the lease.
                  if (changes === 1) {
                    if (events !== undefined && events.length > 0) appendEvents(events)
                    if (lease !== undefined) releaseRow(lease)
                  }
                  return changes
                }),
          catch: (e) => {
            const error = storeError("update")(e)
            return error.reason === "conflict"
              ? conflict(`connection ${record.id}: account already linked`)
              : error
          }
        }).pipe(
          Effect.flatMap((changes) =>
            Number(changes) === 1
              ? Effect.sync(() => hub.changed(record.id))
              : Effect.fail(
                  conflict(`connection ${record.id} is missing or not at version ${expectedVersion}`)
                )
          )
        )
      }),
    remove: (id, events) =>
      attempt("remove", () =>
        transaction(() => {
          sql("DELETE FROM latchkey_leases WHERE connection_id = ?").run(id)
          sql("DELETE FROM latchkey_claims WHERE connection_id = ?").run(id)
          const removed = Number(sql("DELETE FROM latchkey_connections WHERE id = ?").run(id).changes) > 0
          if (removed && events !== undefined) appendEvents(events)
          return removed
        })
      ).pipe(Effect.tap((removed) => Effect.sync(() => removed && hub.changed(id)))),
    appendEvents: (events) =>
      attempt("appendEvents", () => {
        if (events.length > 0) transaction(() => appendEvents(events))
      }),
    readEvents: (after, limit) =>
      attempt("readEvents", () => {
        const rows = sql("SELECT seq, event FROM latchkey_events WHERE seq > ? ORDER BY seq LIMIT ?").all(
          after,
          Math.max(0, Math.floor(limit))
        ) as Array<{ seq: number; event: string }>
        const events = rows.map((r) => decode(Number(r.seq), r.event))
        return { events, next: events.length === 0 ? after : events[events.length - 1]!.seq }
      }),
    pruneEvents: (before) =>
      attempt("pruneEvents", () =>
        Number(sql("DELETE FROM latchkey_events WHERE at < ?").run(before).changes)
      ),
    getConsumerState: (name) =>
      attempt(
        "getConsumerState",
        () =>
          (
            sql("SELECT state FROM latchkey_event_consumers WHERE name = ?").get(name) as
              | { state: string }
              | undefined
          )?.state
      ),
    setConsumerState: (name, state) =>
      attempt("setConsumerState", () => {
        sql(
          "INSERT INTO latchkey_event_consumers (name, state) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET state = excluded.state"
        ).run(name, state)
      }),
    acquireLease: (connectionId, holder, ttlMs) =>
      attempt("acquireLease", () =>
        transaction((): Lease | undefined => {
          const now = clock()
          const held = sql("SELECT fence, expires_at FROM latchkey_leases WHERE connection_id = ?").get(
            connectionId
          ) as { fence: number; expires_at: number } | undefined
          if (held !== undefined && held.expires_at > now) return undefined
          const fence = (held?.fence ?? 0) + 1
          const expiresAt = now + ttlMs
          // The row stays after release, so fences keep increasing for the life of the connection.
          sql(
            `INSERT INTO latchkey_leases (connection_id, holder, fence, expires_at) VALUES (?, ?, ?, ?)
             ON CONFLICT (connection_id) DO UPDATE SET holder = excluded.holder, fence = excluded.fence, expires_at = excluded.expires_at`
          ).run(connectionId, holder, fence, expiresAt)
          return { connectionId, holder, fence, grantedAt: now, expiresAt }
        })
      ),
    renewLease: (lease, ttlMs) =>
      attempt("renewLease", (): Lease | undefined => {
        const now = clock()
        const changes = sql(
          "UPDATE latchkey_leases SET expires_at = ? WHERE connection_id = ? AND holder = ? AND fence = ?"
        ).run(now + ttlMs, lease.connectionId, lease.holder, lease.fence).changes
        return Number(changes) === 1 ? { ...lease, grantedAt: now, expiresAt: now + ttlMs } : undefined
      }),
    releaseLease: (lease) => attempt("releaseLease", () => releaseRow(lease)),
    releasesLeaseOnUpdate: true,
    // Claims share the pending table (no migration): a row born consumed, so that no callback can
    // take it, kept until `until` (and swept with the pending rows).
    claimOnce: (key, until, now) =>
      attempt("claimOnce", () => {
        const row = sql(
          `INSERT INTO latchkey_pending (state, record, expires_at, consumed_at) VALUES (?, '{}', ?, ?)
           ON CONFLICT (state) DO UPDATE SET expires_at = excluded.expires_at, consumed_at = excluded.consumed_at
           WHERE latchkey_pending.expires_at <= ?
           RETURNING state`
        ).get(`claim:${key}`, until, now, now)
        return row !== undefined
      }),
    putPending: (pending: PendingAuthorization) =>
      attempt("putPending", () =>
        transaction(() => {
          sql(
            `DELETE FROM latchkey_pending
             WHERE MAX(expires_at, COALESCE(consumed_at + ${CONSUMED_TOMBSTONE_MS}, 0)) < ?`
          ).run(pending.createdAt)
          sql(
            "INSERT OR REPLACE INTO latchkey_pending (state, record, expires_at, consumed_at) VALUES (?, ?, ?, NULL)"
          ).run(pending.state, JSON.stringify(pending), pending.expiresAt)
        })
      ),
    takePending: (state, now, ownerId) =>
      attempt("takePending", (): TakePendingResult => {
        // One statement: the owner is compared in the same step that consumes the state.
        const taken = sql(
          "UPDATE latchkey_pending SET consumed_at = ? WHERE state = ? AND consumed_at IS NULL AND (? IS NULL OR json_extract(record, '$.ownerId') = ?) RETURNING record"
        ).get(now, state, ownerId ?? null, ownerId ?? null) as { record: string } | undefined
        if (taken !== undefined)
          return { _tag: "Found", pending: decodePending(taken.record, STORE, undefined, "takePending") }
        const exists = sql("SELECT consumed_at IS NULL AS open FROM latchkey_pending WHERE state = ?").get(
          state
        ) as { open: number } | undefined
        return exists === undefined
          ? { _tag: "Missing" }
          : exists.open === 1 && ownerId !== undefined
            ? { _tag: "Foreign" }
            : { _tag: "Consumed" }
      }),
    close: () =>
      Effect.sync(() => {
        stopPolling()
        if (db.isOpen) db.close()
      })
  }
  return store
}

/** A scoped SQLite store: opened when the layer is built, closed when it is released. */
export const layer = (options: SqliteStoreOptions): Layer.Layer<ConnectionStore, StoreError> =>
  Layer.effect(
    ConnectionStore,
    Effect.acquireRelease(
      Effect.try({ try: () => make(options), catch: storeError(`opening ${options.path}`) }),
      (store) => store.close()
    )
  )
