/**
 * The PostgreSQL store, for apps that run many instances: connections, pending authorizations and
 * the refresh lease in four tables of one schema.
 *
 * - Migrations ship with the package and are applied on start, idempotently: in one transaction
 *   holding `pg_advisory_xact_lock` (so instances starting together do not race), `CREATE ... IF NOT
 *   EXISTS` statements and a `schema_version` row in `latchkey_meta`.
 * - The refresh lease is a row per connection (`holder`, `fence`, `expires_at`) taken by one atomic
 *   `INSERT ... ON CONFLICT DO UPDATE ... WHERE expires_at <= now RETURNING`: one winner under any
 *   contention, a fence that only grows (the row stays after release), and a crashed holder's lease
 *   simply expires. Lease time is the server's `clock_timestamp()`, never a caller's clock, so
 *   instances whose clocks disagree still agree on who holds the lease.
 * - Writes that only coordinate instances (leases, claims, rate budgets) commit without waiting for
 *   the WAL flush (`SET LOCAL synchronous_commit = off`); every write a refresh or a link depends on
 *   after a crash waits for it. Why that is safe: `Commit`.
 * - No session state: reads are single self-contained statements; every write runs in one
 *   transaction that starts with `SET LOCAL lock_timeout` and `SET LOCAL statement_timeout`. Nothing
 *   uses session-level settings, session advisory locks, named prepared statements or temporary
 *   tables, so the store is safe behind PgBouncer in transaction pooling mode. The one exception is
 *   `watch`: every write of a connection row sends `pg_notify` in its own transaction, and `watch`
 *   keeps one dedicated connection (outside the pool) in `LISTEN`; see `listen` and
 *   `listenConnectionString` for PgBouncer.
 */

import { createHash } from "node:crypto"
import { type Connection, ConnectionStore, LifecycleEvents, StoreError } from "@latchkey/core"
import { Effect, Layer, Redacted } from "effect"
import pg from "pg"

type ConnectionRecord = Connection.ConnectionRecord
type Lease = ConnectionStore.Lease
type PendingAuthorization = ConnectionStore.PendingAuthorization
type TakePendingResult = ConnectionStore.TakePendingResult
type LifecycleEvent = LifecycleEvents.LifecycleEvent

export interface PostgresStoreOptions {
  /** Where to connect (`postgres://user:pass@host:5432/db`); a Redacted value keeps the password out of logs. */
  readonly connectionString?: string | Redacted.Redacted<string> | undefined
  /** Your own pool instead (then `close()` leaves it open). */
  readonly pool?: pg.Pool | undefined
  /** The schema holding Latchkey's tables (default `"latchkey"`); created when missing. */
  readonly schema?: string | undefined
  /** How long a write waits for a row lock before failing with `StoreError("timeout")` (default 5 s). */
  readonly lockTimeoutMs?: number | undefined
  /** Longest run of a statement inside a write transaction (default 10 s). */
  readonly statementTimeoutMs?: number | undefined
  /** Size of the pool this store creates from `connectionString` (default 10). */
  readonly maxConnections?: number | undefined
  /**
   * `watch` (the token cache's view of writes made by other instances) holds one dedicated connection
   * in `LISTEN` (default true). `LISTEN` needs a session: behind PgBouncer in transaction pooling mode
   * give `listenConnectionString` pointing at PostgreSQL itself (or a session-mode pool), or set
   * `listen: false` (then caches trust entries only their bounded `maxStaleMs`).
   */
  readonly listen?: boolean | undefined
  /** Where the `LISTEN` connection goes (default: `connectionString`, or the given pool's settings). */
  readonly listenConnectionString?: string | Redacted.Redacted<string> | undefined
  /**
   * Reads by key run as named prepared statements, parsed and planned once per pooled connection
   * (default true; about 1.5 to 2 times the reads per second of unnamed statements; the due-connection
   * queries are planned each time). Prepared
   * statements live in a server session: behind PgBouncer in transaction pooling mode, set
   * `preparedStatements: false` unless it is PgBouncer 1.21 or later with `max_prepared_statements`
   * above 0.
   */
  readonly preparedStatements?: boolean | undefined
}

export interface PostgresStore extends ConnectionStore.ConnectionStoreShape {
  readonly schema: string
  /** End the pool this store created (a pool you passed in stays open). */
  readonly close: () => Effect.Effect<void>
}

/**
 * Indexes of the current schema version that only speed statements up (see `migrate`): name and
 * statement.
 */
const performanceIndexes = (s: string): ReadonlyArray<readonly [string, string]> => [
  // The claim's order (`claimDue`): due rows by due time, then id, read in order up to the limit.
  [
    "latchkey_connections_claim",
    `CREATE INDEX IF NOT EXISTS latchkey_connections_claim ON ${s}.latchkey_connections (refresh_due_at, id)
       WHERE status = 'active' AND refresh_due_at IS NOT NULL`
  ]
]

/**
 * Tables that hold only what expires within seconds and that a crash may forget: the Refresher's
 * claims (a forgotten claim lets another instance claim the row, whose lease still keeps it to one
 * refresher) and the rate budgets (a forgotten budget starts again from the server's clock).
 * `UNLOGGED` (see `migrate`): their writes skip the WAL, so a claim or a rate slot does not wait
 * for a WAL flush, and the slot's answer arrives as evenly as the network allows. PostgreSQL empties
 * them after a crash, and replicas do not have their rows.
 */
const UNLOGGED_TABLES = ["latchkey_claims", "latchkey_rates"] as const

/** The schema version this release migrates to; kept in `latchkey_meta`. */
export const SCHEMA_VERSION = 3
const CONSUMED_TOMBSTONE_MS = 60 * 60 * 1000
/** The most ids one statement of batched `get`s carries. */
const GET_BATCH = 256

const migrations = (
  s: string
): ReadonlyArray<{ readonly version: number; readonly statements: ReadonlyArray<string> }> => [
  {
    version: 1,
    statements: [
      `CREATE TABLE IF NOT EXISTS ${s}.latchkey_connections (
         id text COLLATE "C" PRIMARY KEY,
         owner_id text NOT NULL,
         provider_id text NOT NULL,
         account_id text NOT NULL,
         version bigint NOT NULL,
         status text NOT NULL,
         refresh_due_at bigint,
         created_at bigint NOT NULL,
         record text NOT NULL,
         UNIQUE (owner_id, provider_id, account_id)
       )`,
      `CREATE INDEX IF NOT EXISTS latchkey_connections_owner ON ${s}.latchkey_connections (owner_id, created_at, id)`,
      `CREATE INDEX IF NOT EXISTS latchkey_connections_due ON ${s}.latchkey_connections (refresh_due_at)
         WHERE status = 'active' AND refresh_due_at IS NOT NULL`,
      `CREATE TABLE IF NOT EXISTS ${s}.latchkey_leases (
         connection_id text PRIMARY KEY,
         holder text,
         fence bigint NOT NULL,
         expires_at bigint NOT NULL
       )`,
      `CREATE TABLE IF NOT EXISTS ${s}.latchkey_pending (
         state text PRIMARY KEY,
         record text NOT NULL,
         expires_at bigint NOT NULL,
         consumed_at bigint,
         keep_until bigint NOT NULL
       )`,
      `CREATE INDEX IF NOT EXISTS latchkey_pending_keep ON ${s}.latchkey_pending (keep_until)`
    ]
  },
  {
    // The lifecycle event log and the state of its consumers (the webhook worker's cursor and dead
    // letters). Appends hold a transaction-level advisory lock until commit, so that the identity's
    // order is the commit order: a reader at cursor n never sees n + 2 and later n + 1 commit.
    version: 2,
    statements: [
      `CREATE TABLE IF NOT EXISTS ${s}.latchkey_events (
         seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
         at bigint NOT NULL,
         connection_id text NOT NULL,
         event text NOT NULL
       )`,
      `CREATE INDEX IF NOT EXISTS latchkey_events_at ON ${s}.latchkey_events (at)`,
      `CREATE TABLE IF NOT EXISTS ${s}.latchkey_event_consumers (
         name text PRIMARY KEY,
         state text NOT NULL
       )`
    ]
  },
  {
    // Claimed batches for the Refresher (`claimDue`): a claim per connection, on the server's clock.
    version: 3,
    statements: [
      `CREATE TABLE IF NOT EXISTS ${s}.latchkey_claims (
         connection_id text PRIMARY KEY,
         holder text NOT NULL,
         expires_at bigint NOT NULL,
         version bigint NOT NULL
       )`,
      // Rate budgets shared by the fleet (`takeRateBudget`): the next free slot of each key.
      `CREATE TABLE IF NOT EXISTS ${s}.latchkey_rates (
         key text PRIMARY KEY,
         next_slot double precision NOT NULL
       )`
    ]
  }
]

const errorCode = (e: unknown): string | undefined => {
  const code = (e as { code?: unknown } | null)?.code
  return typeof code === "string" ? code : undefined
}

const describeError = (e: unknown): string => {
  const code = errorCode(e)
  const message = String((e as Error)?.message ?? e)
  return code === undefined ? message : `${message} [${code}]`
}

/** SQLSTATEs of waiting too long: lock and statement timeouts, serialization failures, deadlocks. */
const TIMEOUT_CODES = new Set(["55P03", "57014", "40001", "40P01"])

/** SQLSTATEs of damaged data (`XX001` data_corrupted, `XX002` index_corrupted). */
const CORRUPT_CODES = new Set(["XX001", "XX002"])

/** The driver's own timeouts: waiting for a pooled connection, or for a read's answer. */
const DRIVER_TIMEOUT =
  /timeout exceeded when trying to connect|Query read timeout|Connection terminated due to connection timeout/i

/**
 * The driver's error reduced to its name, message and SQLSTATE: a pg error also carries the query's
 * context (`where`, `internalQuery`, `detail` with row values), none of which belongs in an error
 * that apps log.
 */
const safeCause = (cause: unknown): Error => {
  const error = new Error(String((cause as Error)?.message ?? cause))
  error.name = String((cause as Error)?.name ?? "Error")
  const code = errorCode(cause)
  if (code !== undefined) Object.assign(error, { code })
  error.stack = `${error.name}: ${error.message}`
  return error
}

const STORE = "PostgreSQL store"

/**
 * The PostgreSQL classifier: every failure of `pg` (or of decoding a row) as a `StoreError` with the
 * reasons every store shares, by SQLSTATE: `23505` is `conflict`; lock and statement timeouts,
 * serialization failures and deadlocks (and the driver's own timeouts) `timeout`; `XX001`/`XX002`
 * `corrupt`; anything else (connection refused or lost, server shutting down) `unavailable`.
 */
export const classifyPostgresError =
  (operation: string) =>
  (rawCause: unknown): StoreError => {
    if (rawCause instanceof StoreError) return rawCause
    const cause = safeCause(rawCause)
    const code = errorCode(cause)
    if (code === "23505") {
      return new StoreError({
        reason: "conflict",
        operation,
        message: `${STORE}: ${operation}: already exists`,
        cause
      })
    }
    const timedOut =
      (code !== undefined && TIMEOUT_CODES.has(code)) ||
      DRIVER_TIMEOUT.test(String((cause as Error)?.message ?? ""))
    return new StoreError({
      reason: timedOut
        ? "timeout"
        : code !== undefined && CORRUPT_CODES.has(code)
          ? "corrupt"
          : "unavailable",
      operation,
      message: `${STORE}: ${operation} failed (${describeError(cause)})`,
      cause
    })
  }

const storeError = classifyPostgresError

const invalidOption = (field: string, what: string) =>
  new StoreError({ reason: "invalid_options", field, message: `PostgresStore: ${field} ${what}` })

const conflict = (message: string) => new StoreError({ reason: "conflict", message: `${STORE}: ${message}` })

const positive = (name: string, value: number) => {
  if (!Number.isSafeInteger(value) || value < 1) throw invalidOption(name, "must be a positive integer")
  return value
}

interface Settings {
  readonly schemaName: string
  readonly lockTimeoutMs: number
  readonly statementTimeoutMs: number
  readonly preparedStatements: boolean
}

/** Check the options; throws `StoreError("invalid_options")` naming the bad one. */
const validate = (options: PostgresStoreOptions): Settings => {
  const schemaName = options.schema ?? "latchkey"
  if (!/^[A-Za-z_][A-Za-z0-9_]{0,62}$/.test(schemaName)) {
    throw invalidOption(
      "schema",
      "must be letters, digits and '_', not starting with a digit, at most 63 characters"
    )
  }
  if (options.pool === undefined && options.connectionString === undefined) {
    throw invalidOption("connectionString", "is required when no pool is given")
  }
  if (options.maxConnections !== undefined) positive("maxConnections", options.maxConnections)
  if (options.preparedStatements !== undefined && typeof options.preparedStatements !== "boolean") {
    throw invalidOption("preparedStatements", "must be true or false")
  }
  return {
    schemaName,
    lockTimeoutMs: positive("lockTimeoutMs", options.lockTimeoutMs ?? 5_000),
    statementTimeoutMs: positive("statementTimeoutMs", options.statementTimeoutMs ?? 10_000),
    preparedStatements: options.preparedStatements ?? true
  }
}

/**
 * Open the store (Effect): connects, applies the migrations, and returns the store. Invalid options
 * throw `StoreError("invalid_options")` when this is called.
 */
export const makeEffect = (options: PostgresStoreOptions): Effect.Effect<PostgresStore, StoreError> => {
  const { schemaName, lockTimeoutMs, statementTimeoutMs, preparedStatements } = validate(options)
  return Effect.suspend(() => {
    const ownPool = options.pool === undefined
    const pool =
      options.pool ??
      new pg.Pool({
        connectionString: Redacted.isRedacted(options.connectionString)
          ? Redacted.value(options.connectionString)
          : options.connectionString,
        max: options.maxConnections ?? 10,
        connectionTimeoutMillis: statementTimeoutMs,
        // A bound on the client side too, for a server (or a network) that stops answering: the
        // server's own statement_timeout fires first whenever the server is there to fire it.
        query_timeout: statementTimeoutMs + 2_000,
        keepAlive: true,
        keepAliveInitialDelayMillis: 10_000,
        idleTimeoutMillis: 10_000,
        allowExitOnIdle: true
      })
    // An idle client losing its server (restart, failover) must not crash the process.
    if (ownPool) pool.on("error", () => {})
    const listenTarget = options.listenConnectionString ?? options.connectionString
    const listenConfig: pg.ClientConfig | undefined =
      options.listen === false
        ? undefined
        : listenTarget !== undefined
          ? {
              connectionString: Redacted.isRedacted(listenTarget)
                ? Redacted.value(listenTarget)
                : listenTarget,
              keepAlive: true
            }
          : { ...(pool as unknown as { options: pg.ClientConfig }).options, keepAlive: true }
    const store = build(
      pool,
      ownPool,
      schemaName,
      lockTimeoutMs,
      statementTimeoutMs,
      listenConfig,
      preparedStatements
    )
    return migrate(pool, schemaName, lockTimeoutMs, statementTimeoutMs).pipe(
      Effect.as(store),
      Effect.tapError(() => store.close())
    )
  })
}

/**
 * Open the store: connects, applies the migrations, and resolves the store (or rejects with a
 * `StoreError`). Pass it to `createLatchkey({ store })`; call `close()` when done. Invalid options
 * throw `StoreError("invalid_options")` at once.
 */
export const make = (options: PostgresStoreOptions): Promise<PostgresStore> => {
  const effect = makeEffect(options)
  return Effect.runPromise(effect)
}

/**
 * A scoped store: opened (and migrated) when the layer is built, its pool ended when the layer is
 * released. Invalid options throw `StoreError("invalid_options")` when this is called.
 */
export const layer = (
  options: PostgresStoreOptions
): Layer.Layer<ConnectionStore.ConnectionStore, StoreError> => {
  const effect = makeEffect(options)
  return Layer.effect(
    ConnectionStore.ConnectionStore,
    Effect.acquireRelease(effect, (store) => store.close())
  )
}

const quote = (identifier: string) => `"${identifier}"`

/**
 * Run `f` on a client of the pool; on any failure roll back (a transaction may be open), and discard
 * the client when even that fails.
 */
const onClient = async <A>(pool: pg.Pool, f: (client: pg.PoolClient) => Promise<A>): Promise<A> => {
  const client = await pool.connect()
  let broken = false
  try {
    return await f(client)
  } catch (error) {
    try {
      await client.query("ROLLBACK")
    } catch {
      broken = true
    }
    throw error
  } finally {
    client.release(broken)
  }
}

/**
 * How a write's transaction commits.
 * - `durable`: the server's own `synchronous_commit` (on by default): COMMIT answers once the write is
 *   on disk. Every write a refresh or a link depends on after a crash: connections (the refresh
 *   journal, the new tokens), pending authorizations, the event log.
 * - `coordination`: `SET LOCAL synchronous_commit = off`. COMMIT answers before the WAL flush; the
 *   write is visible to every other session at once, and on disk within a few hundred milliseconds
 *   (`wal_writer_delay`), or with the next durable commit, whichever comes first, since the WAL is
 *   one sequence. Only a crash of the PostgreSQL server itself can lose such a write. Leases, claims
 *   and rate budgets: losing one costs no token. A lease is only what keeps two instances from
 *   preparing the same refresh; the journal's durable compare-and-set is what keeps a refresh token
 *   from being sent twice, and it holds without the lease (a lapsed lease is the same case). A
 *   durable journal written under a lease also puts that lease on disk first, so a fence once
 *   recorded in a journal is never handed out again. Saves a WAL flush per refresh: about half the
 *   server's CPU of the lease write, and most of its latency, on the development machine.
 */
type Commit = "durable" | "coordination"

const begin = (lockTimeoutMs: number, statementTimeoutMs: number, commit: Commit) =>
  `BEGIN; SET LOCAL lock_timeout = ${lockTimeoutMs}; SET LOCAL statement_timeout = ${statementTimeoutMs}${
    commit === "coordination" ? "; SET LOCAL synchronous_commit = off" : ""
  }`

/**
 * One statement in its own transaction with local lock and statement timeouts, in ONE round trip:
 * `BEGIN; SET LOCAL ...; <statement>; COMMIT` as one simple-protocol batch (the same transaction as
 * `inTransaction` with one statement, without its three round trips). `statement` writes its values
 * as literals through the client's escaping. Rolls back on any failure; answers the statement's result.
 */
const oneTrip = <R extends pg.QueryResultRow>(
  pool: pg.Pool,
  lockTimeoutMs: number,
  statementTimeoutMs: number,
  statement: (client: pg.PoolClient) => string,
  commit: Commit = "durable"
): Promise<pg.QueryResult<R>> =>
  onClient(pool, async (client) => {
    const batch = `${begin(lockTimeoutMs, statementTimeoutMs, commit)};
${statement(client)};
COMMIT`
    const results = (await client.query({
      text: batch,
      query_timeout: statementTimeoutMs + 2_000
    } as pg.QueryConfig)) as unknown as Array<pg.QueryResult<R>>
    // The statement's result is the one before COMMIT's.
    return results[results.length - 2]!
  })

/** Run `f` in one transaction with local lock and statement timeouts; roll back on any failure. */
const inTransaction = <A>(
  pool: pg.Pool,
  lockTimeoutMs: number,
  statementTimeoutMs: number,
  f: (client: pg.PoolClient) => Promise<A>,
  commit: Commit = "durable"
): Promise<A> =>
  onClient(pool, async (client) => {
    // One round trip; the values are validated integers.
    await client.query(begin(lockTimeoutMs, statementTimeoutMs, commit))
    const result = await f(client)
    await client.query("COMMIT")
    return result
  })

/** Client-side bound of one migration statement (the server's own limits are set in the transaction). */
const MIGRATION_QUERY_TIMEOUT_MS = 120_000

const migrate = (pool: pg.Pool, schemaName: string, lockTimeoutMs: number, statementTimeoutMs: number) =>
  Effect.tryPromise({
    try: () =>
      inTransaction(
        pool,
        Math.max(lockTimeoutMs, 30_000),
        Math.max(statementTimeoutMs, 60_000),
        async (pooled) => {
          // Migration statements may wait for another instance's migration: a longer client-side bound.
          const client = {
            query: <R extends pg.QueryResultRow>(text: string, values?: Array<unknown>) =>
              pooled.query<R>({
                text,
                ...(values === undefined ? {} : { values }),
                query_timeout: MIGRATION_QUERY_TIMEOUT_MS
              } as pg.QueryConfig)
          }
          const s = quote(schemaName)
          // Serialize concurrent starts on this schema until this transaction ends.
          await client.query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", [
            `latchkey:migrate:${schemaName}`
          ])
          await client.query(`CREATE SCHEMA IF NOT EXISTS ${s}`)
          await client.query(
            `CREATE TABLE IF NOT EXISTS ${s}.latchkey_meta (key text PRIMARY KEY, value text NOT NULL)`
          )
          const row = await client.query<{ value: string }>(
            `SELECT value FROM ${s}.latchkey_meta WHERE key = 'schema_version'`
          )
          const current = row.rows[0] === undefined ? 0 : Number(row.rows[0].value)
          if (!Number.isInteger(current) || current > SCHEMA_VERSION) {
            throw new StoreError({
              reason: "corrupt",
              message: `PostgreSQL store: schema "${schemaName}" is at version ${row.rows[0]?.value}, newer than this release (${SCHEMA_VERSION}); upgrade @latchkey/store-postgres`
            })
          }
          for (const step of migrations(s)) {
            if (step.version <= current) continue
            for (const statement of step.statements) await client.query(statement)
          }
          // Indexes that only make statements faster, which releases of the same schema version work
          // with or without: created where missing, with no version change (a rolling upgrade leaves
          // older instances running). Looked up first, so that a start where they exist takes no lock
          // on the table.
          for (const [name, statement] of performanceIndexes(s)) {
            const exists = await client.query(
              "SELECT 1 FROM pg_indexes WHERE schemaname = $1 AND indexname = $2",
              [schemaName, name]
            )
            if (exists.rows.length === 0) await client.query(statement)
          }
          // The coordination tables made UNLOGGED where they are not (`UNLOGGED_TABLES`), with no
          // version change either: every release works with both. A server that refuses (some
          // hosted variants do), or a table busy for more than a second, keeps them logged (a
          // warning says so), which only makes claims and slots slower.
          for (const table of UNLOGGED_TABLES) {
            const kind = await client.query<{ relpersistence: string }>(
              `SELECT c.relpersistence FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = $1 AND c.relname = $2`,
              [schemaName, table]
            )
            if (kind.rows[0]?.relpersistence !== "p") continue
            const lockTimeout = (
              await client.query<{ v: string }>("SELECT current_setting('lock_timeout') AS v")
            ).rows[0]!.v
            await client.query("SAVEPOINT latchkey_unlogged")
            try {
              // The ALTER needs the table to itself, and every session of the fleet that touches it
              // queues behind an ALTER waiting for its lock: wait a second at most, and leave it to
              // the next start otherwise. The rewrite copies the live rows only: expired claims,
              // which no claim honours, are dropped first.
              await client.query("SET LOCAL lock_timeout = '1s'")
              if (table === "latchkey_claims") {
                await client.query(
                  `DELETE FROM ${s}.latchkey_claims WHERE expires_at <= (extract(epoch FROM clock_timestamp()) * 1000)::bigint`
                )
              }
              await client.query(`ALTER TABLE ${s}.${table} SET UNLOGGED`)
              await client.query("RELEASE SAVEPOINT latchkey_unlogged")
              await client.query("SELECT set_config('lock_timeout', $1, true)", [lockTimeout])
            } catch (error) {
              await client.query("ROLLBACK TO SAVEPOINT latchkey_unlogged")
              process.emitWarning(
                `Latchkey PostgreSQL store: ${schemaName}.${table} stays WAL-logged for now (${describeError(error)}); the next start tries again`,
                { code: "LATCHKEY_PG_LOGGED" }
              )
            }
          }
          await client.query(
            `INSERT INTO ${s}.latchkey_meta (key, value) VALUES ('schema_version', $1)
           ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value`,
            [String(SCHEMA_VERSION)]
          )
        }
      ),
    catch: storeError(`migrating schema "${schemaName}"`)
  })

/**
 * `watch` for PostgreSQL: one dedicated connection (outside the pool) in `LISTEN` on the schema's
 * channel while anyone listens. `Live` once the `LISTEN` is in place (and after every reconnect),
 * `Lost` when the connection ends or a heartbeat gets no answer; reconnects with backoff.
 */
const makeListener = (
  config: pg.ClientConfig,
  channel: string,
  hub: ReturnType<typeof ConnectionStore.makeChangeHub>
) => {
  let client: pg.Client | undefined
  let active = false
  let attempt = 0
  let timer: ReturnType<typeof setTimeout> | undefined
  let heartbeat: ReturnType<typeof setInterval> | undefined
  let live = false

  const lost = (which: pg.Client) => {
    if (client !== which) {
      which.end().catch(() => {})
      return
    }
    client = undefined
    if (heartbeat !== undefined) clearInterval(heartbeat)
    heartbeat = undefined
    which.end().catch(() => {})
    if (live) {
      live = false
      hub.emit({ _tag: "Lost" })
    }
    schedule()
  }
  const schedule = () => {
    if (!active || timer !== undefined) return
    const wait = Math.min(2_000, 50 * 2 ** attempt++)
    timer = setTimeout(() => {
      timer = undefined
      void connect()
    }, wait)
    timer.unref?.()
  }
  const connect = async () => {
    if (!active || client !== undefined) return
    const next = new pg.Client({
      ...config,
      query_timeout: 5_000,
      application_name: `latchkey_listen:${channel}`.slice(0, 63)
    } as pg.ClientConfig)
    client = next
    next.on("error", () => lost(next))
    next.on("end", () => lost(next))
    next.on("notification", (message) => {
      if (message.channel === channel && message.payload) hub.emit({ _tag: "Changed", id: message.payload })
    })
    try {
      await next.connect()
      await next.query(`LISTEN ${quote(channel)}`)
    } catch {
      return lost(next)
    }
    if (client !== next || !active) {
      // Stopped (or replaced) while connecting: this connection is nobody's.
      if (client === next) client = undefined
      await next.end().catch(() => {})
      return
    }
    attempt = 0
    live = true
    hub.emit({ _tag: "Live" })
    heartbeat = setInterval(() => {
      next.query("SELECT 1").catch(() => lost(next))
    }, 5_000)
    heartbeat.unref?.()
  }
  const stop = async () => {
    active = false
    if (timer !== undefined) clearTimeout(timer)
    timer = undefined
    if (heartbeat !== undefined) clearInterval(heartbeat)
    heartbeat = undefined
    const current = client
    client = undefined
    live = false
    await current?.end().catch(() => {})
  }
  return {
    add: (listener: ConnectionStore.StoreChangeListener) => {
      const remove = hub.add(listener)
      if (!active) {
        active = true
        void connect()
      } else if (live) listener({ _tag: "Live" })
      return () => {
        remove()
        if (hub.listeners.size === 0) void stop()
      }
    },
    close: stop
  }
}

const build = (
  pool: pg.Pool,
  ownPool: boolean,
  schemaName: string,
  lockTimeoutMs: number,
  statementTimeoutMs: number,
  listenConfig: pg.ClientConfig | undefined,
  preparedStatements: boolean
): PostgresStore => {
  const s = quote(schemaName)
  /** The NOTIFY channel of this schema's connection writes (payload: the connection id). */
  const channel = `latchkey_changes_${schemaName}`.slice(0, 63)
  const hub = ConnectionStore.makeChangeHub()
  const watch = listenConfig === undefined ? undefined : makeListener(listenConfig, channel, hub)
  const C = `${s}.latchkey_connections`
  const L = `${s}.latchkey_leases`
  const P = `${s}.latchkey_pending`
  const E = `${s}.latchkey_events`
  const EC = `${s}.latchkey_event_consumers`
  /** The advisory lock every append holds until commit (per schema): seq order is commit order. */
  const eventsLock = `pg_advisory_xact_lock(hashtextextended(${pg.escapeLiteral(`latchkey:events:${schemaName}`)}, 0))`
  /** Event columns as arrays for `unnest` (order kept by ORDINALITY). */
  const eventArrays = (events: ReadonlyArray<LifecycleEvent>) => [
    events.map((e) => e.at),
    events.map((e) => e.connectionId),
    events.map((e) => LifecycleEvents.encode(e))
  ]
  const insertEventsFrom = (source: string, first: number) =>
    `INSERT INTO ${E} (at, connection_id, event)
     SELECT v.at, v.connection_id, v.event FROM ${source}
       unnest($${first}::bigint[], $${first + 1}::text[], $${first + 2}::text[]) WITH ORDINALITY AS v(at, connection_id, event, n)
     ORDER BY v.n`
  const K = `${s}.latchkey_claims`
  const R = `${s}.latchkey_rates`
  /**
   * The claim of due connections, on the server's clock. Rows another claimer is picking right now are
   * skipped (FOR UPDATE SKIP LOCKED); the claim row's ON CONFLICT ... WHERE is the arbiter for one
   * picked from an older snapshot (another claimer committed it meanwhile), so two claimers never
   * both get a connection.
   *
   * Its cost does not grow with the table: the rows are taken in the order of the index
   * `latchkey_connections_claim` (`refresh_due_at, id`), and each is checked against the leases and
   * the claims by their primary keys. The ids are compared under the database's default collation, the
   * one of those keys (the connections' ids are `COLLATE "C"`; with mixed collations no index can be
   * used, and every claim read every lease and claim row). Before both, a claim read and sorted every
   * due row and both tables: 15 ms for 3,000 due rows of 5,000 here, against 1-2.5 ms.
   */
  const claimText = `WITH t AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS now),
   picked AS (
     SELECT c.id, c.version, c.refresh_due_at FROM ${C} c
     WHERE c.status = 'active' AND c.refresh_due_at IS NOT NULL AND c.refresh_due_at <= $1
       AND NOT EXISTS (SELECT 1 FROM ${L} l, t WHERE l.connection_id = c.id COLLATE "default" AND l.expires_at > t.now)
       AND NOT EXISTS (SELECT 1 FROM ${K} k, t WHERE k.connection_id = c.id COLLATE "default" AND k.expires_at > t.now AND k.version = c.version)
     ORDER BY c.refresh_due_at, c.id
     LIMIT $2
     FOR UPDATE OF c SKIP LOCKED
   ),
   claimed AS (
     INSERT INTO ${K} AS k (connection_id, holder, expires_at, version)
     SELECT picked.id, $3, t.now + $4::bigint, picked.version FROM picked, t
     ON CONFLICT (connection_id) DO UPDATE
       SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at, version = EXCLUDED.version
       WHERE k.expires_at <= EXCLUDED.expires_at - $4::bigint OR k.version <> EXCLUDED.version
     RETURNING connection_id
   )
   SELECT (SELECT count(*) FROM picked)::int AS picked,
          (SELECT json_agg(c.record ORDER BY c.refresh_due_at, c.id)
             FROM ${C} c JOIN claimed ON claimed.connection_id = c.id) AS records`

  /**
   * The name a statement is prepared under, from its text: stores of other schemas sharing one pool
   * never give one name two texts (the driver refuses that), and each text is parsed and planned once
   * per pooled connection.
   */
  const statementNames = new Map<string, string>()
  const named = (text: string): { readonly name?: string } => {
    if (!preparedStatements) return {}
    let name = statementNames.get(text)
    if (name === undefined) {
      name = `latchkey_${createHash("sha256").update(text).digest("base64url").slice(0, 32)}`
      statementNames.set(text, name)
    }
    return { name }
  }

  /**
   * One self-contained statement (reads: they take no row locks). Bounded on the client side: a read
   * that gets no answer within the statement timeout fails, and its connection is discarded.
   */
  const query = <R extends pg.QueryResultRow, A>(
    what: string,
    text: string,
    values: ReadonlyArray<unknown>,
    f: (result: pg.QueryResult<R>) => A,
    prepare = true
  ): Effect.Effect<A, StoreError> =>
    Effect.tryPromise({
      try: async () =>
        f(
          await pool.query<R>({
            text,
            ...(prepare ? named(text) : {}),
            values: values as Array<unknown>,
            query_timeout: statementTimeoutMs
          } as pg.QueryConfig)
        ),
      catch: storeError(what)
    })

  /**
   * Concurrent `get`s share statements: the ids asked for in one turn of the event loop (a cold token
   * cache under load, a sweep) go as `WHERE id = ANY($1)`, up to `GET_BATCH` ids a statement, instead of
   * one round trip each (on a loopback socket the write of a statement cost more than its execution).
   * Each caller gets its own row, or undefined; a failed statement fails the gets it carried.
   */
  const getText = `SELECT id, record FROM ${C} WHERE id = ANY($1::text[])`
  let waiting: Array<{
    readonly id: string
    readonly resolve: (record: string | undefined) => void
    readonly reject: (error: unknown) => void
  }> = []
  const flushGets = () => {
    const all = waiting
    waiting = []
    for (let at = 0; at < all.length; at += GET_BATCH) {
      const part = all.slice(at, at + GET_BATCH)
      pool
        .query<{ id: string; record: string }>({
          text: getText,
          ...named(getText),
          values: [[...new Set(part.map((w) => w.id))]],
          query_timeout: statementTimeoutMs
        } as pg.QueryConfig)
        .then(
          (result) => {
            const byId = new Map(result.rows.map((row) => [row.id, row.record]))
            for (const w of part) w.resolve(byId.get(w.id))
          },
          (error: unknown) => {
            for (const w of part) w.reject(error)
          }
        )
    }
  }
  const getRecordText = (id: string) =>
    new Promise<string | undefined>((resolve, reject) => {
      if (waiting.push({ id, resolve, reject }) === 1) setImmediate(flushGets)
    })

  /** Statements in one transaction with local timeouts (writes). */
  const transaction = <A>(
    what: string,
    f: (client: pg.PoolClient) => Promise<A>,
    commit: Commit = "durable"
  ): Effect.Effect<A, StoreError> =>
    Effect.tryPromise({
      try: () => inTransaction(pool, lockTimeoutMs, statementTimeoutMs, f, commit),
      catch: storeError(what)
    })

  const records = (what: string) => (result: pg.QueryResult<{ record: string }>) =>
    result.rows.map((row) => ConnectionStore.decodeRecord(row.record, STORE, what))
  const first = (what: string) => (result: pg.QueryResult<{ record: string }>) =>
    result.rows[0] === undefined
      ? undefined
      : ConnectionStore.decodeRecord(result.rows[0].record, STORE, what)

  /**
   * The compare-and-set write of a connection in ONE round trip: the transaction, its local timeouts,
   * the UPDATE and the COMMIT as one simple-protocol batch, values as escaped literals. This write is
   * what stands between a provider's refresh answer and its durability (the in-doubt window), so it
   * waits for nothing it can avoid.
   */
  const updateInOneTrip = async (
    record: ConnectionRecord,
    expectedVersion: number,
    events: ReadonlyArray<LifecycleEvent>,
    quiet: boolean,
    lease: Lease | undefined
  ): Promise<void> => {
    let result: pg.QueryResult
    try {
      result = await oneTrip(pool, lockTimeoutMs, statementTimeoutMs, (client) => {
        const text = (v: string) => client.escapeLiteral(v)
        const int = (v: number | null) => (v === null ? "NULL" : Number.isFinite(v) ? String(v) : "NULL")
        const update = `UPDATE ${C} SET owner_id = ${text(record.ownerId)}, provider_id = ${text(record.providerId)},
  account_id = ${text(record.accountId)}, version = ${int(record.version)}, status = ${text(record.status)},
  refresh_due_at = ${int(record.refreshDueAt)}, record = ${text(JSON.stringify(record))}
  WHERE id = ${text(record.id)} AND version = ${int(expectedVersion)}`
        // With events: one statement, so that they are appended only when the compare-and-set wrote
        // (the lock, and so the seq, are taken after the row was updated).
        // The NOTIFY of the change (`watch`) is sent by the same transaction: delivered at its commit.
        // A quiet write (nothing a token cache holds changed) is not announced to other processes.
        const notify = quiet ? "SELECT u.id FROM u" : `SELECT pg_notify(${text(channel)}, u.id) FROM u`
        // The lease released by the same statement, only when the compare-and-set wrote (joined to u).
        const release =
          lease === undefined
            ? ""
            : `,
  r AS (UPDATE ${L} SET holder = NULL, expires_at = 0 FROM u
    WHERE ${L}.connection_id = ${text(lease.connectionId)} AND ${L}.holder = ${text(lease.holder)}
      AND ${L}.fence = ${int(lease.fence)})`
        return events.length === 0
          ? `WITH u AS (${update} RETURNING id)${release} ${notify}`
          : `WITH u AS (${update} RETURNING id)${release},
  l AS (SELECT ${eventsLock} FROM u),
  e AS (INSERT INTO ${E} (at, connection_id, event)
    SELECT v.at, v.connection_id, v.event FROM l, (VALUES ${events
      .map(
        (e, n) => `(${n}, ${int(e.at)}::bigint, ${text(e.connectionId)}, ${text(LifecycleEvents.encode(e))})`
      )
      .join(", ")}) AS v(n, at, connection_id, event) ORDER BY v.n)
${notify}`
      })
    } catch (error) {
      if (errorCode(error) === "23505") throw conflict(`connection ${record.id}: account already linked`)
      throw error
    }
    if ((result.rowCount ?? 0) !== 1) {
      throw conflict(`connection ${record.id} is missing or not at version ${expectedVersion}`)
    }
  }

  /**
   * `oneTrip` for a statement with parameters ($1, $2, ...), written as escaped literals (strings,
   * finite numbers, null): the lease and the rate budget are on every refresh's path.
   */
  const statementInOneTrip = <R extends pg.QueryResultRow>(
    what: string,
    statement: string,
    values: ReadonlyArray<string | number | null>,
    commit: Commit
  ): Effect.Effect<pg.QueryResult<R>, StoreError> =>
    Effect.tryPromise({
      try: () =>
        oneTrip<R>(
          pool,
          lockTimeoutMs,
          statementTimeoutMs,
          (client) =>
            statement.replace(/\$(\d+)/g, (_, n: string) => {
              const v = values[Number(n) - 1]
              if (v === null) return "NULL"
              if (typeof v === "string") return client.escapeLiteral(v)
              if (typeof v === "number" && Number.isFinite(v)) return String(v)
              throw new TypeError(`${what}: parameter $${n} is not a string, a finite number or null`)
            }),
          commit
        ),
      catch: storeError(what)
    })

  let closed = false

  return {
    schema: schemaName,
    get: (id) =>
      Effect.tryPromise({
        try: async () => {
          const text = await getRecordText(id)
          return text === undefined
            ? undefined
            : ConnectionStore.decodeRecord(text, STORE, `connection ${id}`)
        },
        catch: storeError("get")
      }),
    findByAccount: (ownerId, providerId, accountId) =>
      query(
        "findByAccount",
        `SELECT record FROM ${C} WHERE owner_id = $1 AND provider_id = $2 AND account_id = $3`,
        [ownerId, providerId, accountId],
        first("a connection")
      ),
    listByOwner: (ownerId) =>
      query(
        "listByOwner",
        `SELECT record FROM ${C} WHERE owner_id = $1 ORDER BY created_at, id`,
        [ownerId],
        records("a connection")
      ),
    listDue: (now, limit) =>
      query(
        "listDue",
        `SELECT record FROM ${C}
         WHERE status = 'active' AND refresh_due_at IS NOT NULL AND refresh_due_at <= $1
         ORDER BY refresh_due_at, id LIMIT $2`,
        [now, Math.max(0, Math.floor(limit))],
        records("a connection"),
        // Planned each time: a generic plan of the claim's `refresh_due_at <= $1 … LIMIT $2` made
        // sweeps 3 times slower.
        false
      ),
    scan: (after, limit) => {
      const size = Math.max(0, Math.floor(limit))
      return query(
        "scan",
        after === undefined
          ? `SELECT id, record FROM ${C} ORDER BY id LIMIT $1`
          : `SELECT id, record FROM ${C} WHERE id > $2 ORDER BY id LIMIT $1`,
        after === undefined ? [size + 1] : [size + 1, after],
        (result: pg.QueryResult<{ id: string; record: string }>) => {
          const page = result.rows.slice(0, size)
          return {
            records: page.map((row) =>
              ConnectionStore.decodeRecord(row.record, STORE, `connection ${row.id}`, "scan")
            ),
            next: result.rows.length > size && size > 0 ? page[page.length - 1]!.id : undefined
          }
        }
      )
    },
    describe: () =>
      query(
        "describe",
        `SELECT (extract(epoch FROM clock_timestamp()) * 1000)::float8 AS now, current_setting('server_version') AS server_version, (SELECT value FROM ${s}.latchkey_meta WHERE key = 'schema_version') AS version`,
        [],
        (result: pg.QueryResult<{ now: number; server_version: string; version: string | null }>) => ({
          kind: "postgres",
          serverTime: Math.round(Number(result.rows[0]!.now)),
          schemaVersion: result.rows[0]!.version === null ? undefined : Number(result.rows[0]!.version),
          settings: { schema: schemaName, server_version: result.rows[0]!.server_version }
        })
      ),
    count: () =>
      query("count", `SELECT count(*) AS n FROM ${C}`, [], (result: pg.QueryResult<{ n: string }>) =>
        Number(result.rows[0]?.n ?? 0)
      ),
    ...(watch === undefined ? {} : { watch: watch.add }),
    takeRateBudget: (key, limit, windowMs, cost = 1) =>
      Effect.suspend(() => {
        // One statement on the server's clock: the slot is max(stored next slot, now).
        const step = (windowMs / Math.max(1e-9, limit)) * Math.max(1, cost)
        return statementInOneTrip<{ wait: number }>(
          "takeRateBudget",
          `WITH t AS (SELECT extract(epoch FROM clock_timestamp()) * 1000 AS now)
           INSERT INTO ${R} AS r (key, next_slot) SELECT $1, t.now + $2::float8 FROM t
           ON CONFLICT (key) DO UPDATE SET next_slot = GREATEST(r.next_slot, EXCLUDED.next_slot - $2::float8) + $2::float8
           RETURNING (next_slot - $2::float8 - (SELECT now FROM t))::float8 AS wait`,
          [key, step],
          "coordination"
        ).pipe(Effect.map((result) => Math.max(0, Number(result.rows[0]?.wait ?? 0))))
      }),
    claimDue: (now, limit, holder, ttlMs) =>
      Math.floor(limit) <= 0
        ? Effect.succeed([])
        : transaction(
            "claimDue",
            async (client) => {
              // `claimText`, one statement. Rows lost to its arbiter are made up for by asking again
              // (a new statement sees the other's claims).
              const ttl = Math.max(1, Math.floor(ttlMs))
              const out: Array<ConnectionRecord> = []
              for (let attempt = 0; attempt < 5 && out.length < Math.floor(limit); attempt++) {
                // Unnamed: a generic plan for `refresh_due_at <= $1 … LIMIT $2` made sweeps 3 times slower.
                const result = await client.query<{ picked: number; records: Array<string> | null }>(
                  claimText,
                  [now, Math.floor(limit) - out.length, holder, ttl]
                )
                const row = result.rows[0]
                const records = row?.records ?? []
                for (const text of records)
                  out.push(ConnectionStore.decodeRecord(text, STORE, "a claimed connection", "claimDue"))
                // Nothing free, or nothing lost to another claimer: what there is was claimed.
                if ((row?.picked ?? 0) === 0 || records.length === Number(row?.picked ?? 0)) break
              }
              return out.sort(
                (x, y) => (x.refreshDueAt ?? 0) - (y.refreshDueAt ?? 0) || (x.id < y.id ? -1 : 1)
              )
            },
            "coordination"
          ),
    insert: (record, events) =>
      transaction("insert", async (client) => {
        try {
          await client.query(
            `INSERT INTO ${C} (id, owner_id, provider_id, account_id, version, status, refresh_due_at, created_at, record)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
            [
              record.id,
              record.ownerId,
              record.providerId,
              record.accountId,
              record.version,
              record.status,
              record.refreshDueAt,
              record.createdAt,
              JSON.stringify(record)
            ]
          )
          await client.query("SELECT pg_notify($1, $2)", [channel, record.id])
        } catch (error) {
          if (errorCode(error) === "23505") {
            throw conflict(
              `connection ${record.id} (account ${record.accountId} of ${record.providerId}) already exists`
            )
          }
          throw error
        }
        if (events !== undefined && events.length > 0) {
          await client.query(`SELECT ${eventsLock}`)
          await client.query(insertEventsFrom("", 1), eventArrays(events))
        }
      }).pipe(Effect.tap(() => Effect.sync(() => hub.changed(record.id)))),
    update: (record, expectedVersion, events, options) =>
      record.version !== expectedVersion + 1
        ? Effect.fail(conflict(`connection ${record.id}: a write must advance the version by one`))
        : Effect.tryPromise({
            try: () =>
              updateInOneTrip(
                record,
                expectedVersion,
                events ?? [],
                options?.quiet === true,
                options?.releaseLease
              ),
            catch: storeError("update")
          }).pipe(Effect.tap(() => Effect.sync(() => hub.changed(record.id)))),
    remove: (id, events) =>
      transaction("remove", async (client) => {
        const list = events ?? []
        // The events are appended, and the change announced, only when a row was removed.
        const removal = `WITH lease AS (DELETE FROM ${L} WHERE connection_id = $1),
             claim AS (DELETE FROM ${K} WHERE connection_id = $1),
             d AS (DELETE FROM ${C} WHERE id = $1 RETURNING id)`
        const result = await client.query(
          list.length === 0
            ? `${removal} SELECT pg_notify($2, d.id) FROM d`
            : `${removal}, l AS (SELECT ${eventsLock} FROM d), e AS (${insertEventsFrom("l,", 3)})
               SELECT pg_notify($2, d.id) FROM d`,
          list.length === 0 ? [id, channel] : [id, channel, ...eventArrays(list)]
        )
        return (result.rowCount ?? 0) > 0
      }).pipe(Effect.tap((removed) => Effect.sync(() => removed && hub.changed(id)))),
    appendEvents: (events) =>
      events.length === 0
        ? Effect.void
        : transaction("appendEvents", async (client) => {
            await client.query(`SELECT ${eventsLock}`)
            await client.query(insertEventsFrom("", 1), eventArrays(events))
          }),
    readEvents: (after, limit) =>
      query(
        "readEvents",
        `SELECT seq, event FROM ${E} WHERE seq > $1 ORDER BY seq LIMIT $2`,
        [after, Math.max(0, Math.floor(limit))],
        (result: pg.QueryResult<{ seq: string; event: string }>) => {
          const events = result.rows.map((row) => {
            try {
              return LifecycleEvents.decode(Number(row.seq), row.event)
            } catch {
              throw new StoreError({
                reason: "corrupt",
                message: `PostgreSQL store: event ${row.seq} is not valid JSON`
              })
            }
          })
          return { events, next: events.length === 0 ? after : events[events.length - 1]!.seq }
        }
      ),
    pruneEvents: (before) =>
      transaction("pruneEvents", async (client) => {
        const result = await client.query(`DELETE FROM ${E} WHERE at < $1`, [before])
        return result.rowCount ?? 0
      }),
    getConsumerState: (name) =>
      query(
        "getConsumerState",
        `SELECT state FROM ${EC} WHERE name = $1`,
        [name],
        (result: pg.QueryResult<{ state: string }>) => result.rows[0]?.state
      ),
    setConsumerState: (name, state) =>
      transaction("setConsumerState", async (client) => {
        await client.query(
          `INSERT INTO ${EC} (name, state) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET state = EXCLUDED.state`,
          [name, state]
        )
      }),
    acquireLease: (connectionId, holder, ttlMs) =>
      // One statement, judged by the server's clock: insert the first lease, or take over an
      // expired one; the fence only grows. clock_timestamp(), not now(): the time of the statement.
      statementInOneTrip<{ fence: string; granted_at: string; expires_at: string }>(
        "acquireLease",
        `WITH t AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS now)
         INSERT INTO ${L} AS l (connection_id, holder, fence, expires_at)
         SELECT $1, $2, 1, t.now + $3::bigint FROM t
         ON CONFLICT (connection_id) DO UPDATE
           SET holder = EXCLUDED.holder, fence = l.fence + 1, expires_at = EXCLUDED.expires_at
           WHERE l.expires_at <= EXCLUDED.expires_at - $3::bigint
         RETURNING fence, expires_at - $3::bigint AS granted_at, expires_at`,
        [connectionId, holder, Math.max(1, Math.floor(ttlMs))],
        "coordination"
      ).pipe(
        Effect.map((result): Lease | undefined => {
          const row = result.rows[0]
          return row === undefined
            ? undefined
            : {
                connectionId,
                holder,
                fence: Number(row.fence),
                grantedAt: Number(row.granted_at),
                expiresAt: Number(row.expires_at)
              }
        })
      ),
    renewLease: (lease, ttlMs) =>
      statementInOneTrip<{ granted_at: string; expires_at: string }>(
        "renewLease",
        `UPDATE ${L} SET expires_at = (extract(epoch FROM clock_timestamp()) * 1000)::bigint + $4::bigint
         WHERE connection_id = $1 AND holder = $2 AND fence = $3
         RETURNING expires_at - $4::bigint AS granted_at, expires_at`,
        [lease.connectionId, lease.holder, lease.fence, Math.max(1, Math.floor(ttlMs))],
        "coordination"
      ).pipe(
        Effect.map((result): Lease | undefined => {
          const row = result.rows[0]
          return row === undefined
            ? undefined
            : { ...lease, grantedAt: Number(row.granted_at), expiresAt: Number(row.expires_at) }
        })
      ),
    releasesLeaseOnUpdate: true,
    releaseLease: (lease) =>
      statementInOneTrip(
        "releaseLease",
        `UPDATE ${L} SET holder = NULL, expires_at = 0 WHERE connection_id = $1 AND holder = $2 AND fence = $3`,
        [lease.connectionId, lease.holder, lease.fence],
        "coordination"
      ).pipe(Effect.asVoid),
    // Claims share the pending table (no migration): a row born consumed, so that no callback can
    // take it, kept until `until` (and swept with the pending rows).
    claimOnce: (key, until, now) =>
      transaction("claimOnce", async (client) => {
        const result = await client.query(
          `INSERT INTO ${P} AS t (state, record, expires_at, consumed_at, keep_until) VALUES ($1, '{}', $2, $3, $2)
           ON CONFLICT (state) DO UPDATE
             SET expires_at = EXCLUDED.expires_at, consumed_at = EXCLUDED.consumed_at, keep_until = EXCLUDED.keep_until
             WHERE t.expires_at <= $3
           RETURNING state`,
          [`claim:${key}`, until, now]
        )
        return (result.rowCount ?? 0) > 0
      }),
    putPending: (pending: PendingAuthorization) =>
      transaction("putPending", async (client) => {
        await client.query(`DELETE FROM ${P} WHERE keep_until < $1 AND state <> $2`, [
          pending.createdAt,
          pending.state
        ])
        await client.query(
          `INSERT INTO ${P} (state, record, expires_at, consumed_at, keep_until) VALUES ($1, $2, $3, NULL, $3)
           ON CONFLICT (state) DO UPDATE
             SET record = EXCLUDED.record, expires_at = EXCLUDED.expires_at, consumed_at = NULL,
                 keep_until = EXCLUDED.keep_until`,
          [pending.state, JSON.stringify(pending), pending.expiresAt]
        )
      }),
    takePending: (state, now, ownerId) =>
      transaction("takePending", async (client): Promise<TakePendingResult> => {
        // No state we issued holds a NUL (nor can PostgreSQL take one): a hostile callback's is unknown.
        if (state.includes("\u0000")) return { _tag: "Missing" }
        // One statement: the owner is compared in the same step that consumes the state.
        const result = await client.query<{ record: string | null; present: boolean; open: boolean }>(
          `WITH taken AS (
             UPDATE ${P} SET consumed_at = $2, keep_until = GREATEST(expires_at, $2::bigint + ${CONSUMED_TOMBSTONE_MS})
             WHERE state = $1 AND consumed_at IS NULL AND NOT $4::boolean
               AND ($3::text IS NULL OR (record::json ->> 'ownerId') = $3::text)
             RETURNING record
           )
           SELECT (SELECT record FROM taken) AS record,
                  EXISTS (SELECT 1 FROM ${P} WHERE state = $1) AS present,
                  EXISTS (SELECT 1 FROM ${P} WHERE state = $1 AND consumed_at IS NULL) AS open`,
          // A NUL cannot be sent in a text parameter, nor be in a stored owner id: such an owner never matches.
          [
            state,
            now,
            ownerId?.includes("\u0000") ? null : (ownerId ?? null),
            ownerId?.includes("\u0000") === true
          ]
        )
        const row = result.rows[0]
        if (row?.record != null) {
          return {
            _tag: "Found",
            pending: ConnectionStore.decodePending(row.record, STORE, undefined, "takePending")
          }
        }
        if (row?.present && row.open && ownerId !== undefined) return { _tag: "Foreign" }
        return row?.present ? { _tag: "Consumed" } : { _tag: "Missing" }
      }),
    close: () =>
      Effect.promise(async () => {
        await watch?.close()
        if (closed || !ownPool) return
        closed = true
        await pool.end().catch(() => {})
      })
  }
}
