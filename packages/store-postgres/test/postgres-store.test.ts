/**
 * The PostgreSQL store against the store conformance suite (contract, vault rotation, tokens sealed
 * at rest, 4 OS processes x 50 callers on one expired connection at oidc-provider with single-use
 * refresh tokens, a SIGKILLed lease holder), plus what is Postgres's own: idempotent concurrent
 * migrations, a newer schema refused, lock and read timeouts, no session state left behind
 * (PgBouncer transaction pooling), an unreachable server, bad options, and the scoped layer.
 *
 * Every test uses its own schema and drops it afterwards.
 */
import { randomUUID } from "node:crypto"
import { createLatchkey, LifecycleEvents, StoreError } from "@latchkey/core"
import { sampleRecord, storeConformance, watchRecorder } from "@latchkey/core/testing"
import { conformanceTokenServer as oidcTokenServer } from "@latchkey/testkit-oidc"
import { Effect } from "effect"
import pg from "pg"
import { afterAll, describe, expect, it } from "vitest"
import { PostgresStore } from "../src/index.ts"

const URL_ = process.env.LATCHKEY_TEST_POSTGRES_URL ?? "postgres://postgres@127.0.0.1:5432/test"
const admin = new pg.Pool({ connectionString: URL_, max: 2 })
admin.on("error", () => {})
afterAll(() => admin.end())

const run = <A, E>(effect: Effect.Effect<A, E>) => Effect.runPromise(effect)
const freshSchema = () => `lk_test_${randomUUID().replaceAll("-", "").slice(0, 20)}`
const drop = (schema: string) => admin.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`)

/** Every row of the schema's tables as text: what a database dump would show. */
const dump = async (schema: string) => {
  const parts: Array<string> = []
  for (const table of [
    "latchkey_connections",
    "latchkey_leases",
    "latchkey_pending",
    "latchkey_meta",
    "latchkey_claims",
    "latchkey_rates",
    "latchkey_events",
    "latchkey_event_consumers"
  ]) {
    const { rows } = await admin.query(`SELECT t::text AS row FROM "${schema}".${table} t`)
    parts.push(...rows.map((r: { row: string }) => r.row))
  }
  return parts.join("\n")
}

storeConformance({
  name: "PostgreSQL",
  open: async () => {
    const settings = { connectionString: URL_, schema: freshSchema(), maxConnections: 4 }
    const store = await PostgresStore.make(settings)
    return {
      store,
      settings,
      raw: () => dump(settings.schema),
      close: async () => {
        await run(store.close())
        await drop(settings.schema)
      }
    }
  },
  plantRecord: async (opened, connectionId, text) => {
    const { schema } = opened.settings as { schema: string }
    await admin.query(`UPDATE "${schema}".latchkey_connections SET record = $1 WHERE id = $2`, [
      text,
      connectionId
    ])
  },
  // A stuck transaction in another session holding the connection's row lock.
  lockRow: async (opened, connectionId) => {
    const { schema } = opened.settings as { schema: string }
    const blocker = await admin.connect()
    await blocker.query("BEGIN")
    await blocker.query(`SELECT id FROM "${schema}".latchkey_connections WHERE id = $1 FOR UPDATE`, [
      connectionId
    ])
    return {
      release: async () => {
        await blocker.query("ROLLBACK")
        blocker.release()
      }
    }
  },
  crossProcess: {
    quietWrites: true,
    opener: { module: new URL("../src/index.ts", import.meta.url).href, export: "PostgresStore.make" },
    tokenServer: oidcTokenServer
  }
})

describe("PostgreSQL specifics", () => {
  const schemas: Array<string> = []
  const schema = () => {
    const s = freshSchema()
    schemas.push(s)
    return s
  }
  afterAll(async () => {
    for (const s of schemas) await drop(s)
  })

  it("watch: a dropped LISTEN connection is reported (Lost), reconnected and announced (Live), and still delivers changes", async () => {
    const s = schema()
    const store = await PostgresStore.make({ connectionString: URL_, schema: s })
    const writer = await PostgresStore.make({ connectionString: URL_, schema: s })
    const { seen, waitFor, stop } = watchRecorder(store)
    try {
      expect(await waitFor("Live")).toBe(true)
      await run(writer.insert(sampleRecord("w1")))
      expect(await waitFor("Changed:w1")).toBe(true)
      // The server ends the LISTEN session (a restart, a failover, an idle-session killer).
      const mark = seen.length
      await admin.query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
        [`latchkey_listen:latchkey_changes_${s}`.slice(0, 63)]
      )
      expect(await waitFor("Lost", mark)).toBe(true)
      expect(await waitFor("Live", mark)).toBe(true)
      const after = seen.length
      await run(writer.update(sampleRecord("w1", { version: 2 }), 1))
      expect(await waitFor("Changed:w1", after)).toBe(true)
    } finally {
      stop()
      await run(store.close())
      await run(writer.close())
    }
  })

  it("creates its tables once, even when several instances start at the same time", async () => {
    const s = schema()
    const open = () => PostgresStore.make({ connectionString: URL_, schema: s, maxConnections: 1 })
    const stores = await Promise.all([open(), open(), open(), open()])
    // Starting again on existing tables is a no-op that keeps the data.
    await run(stores[0]!.insert(sampleRecord("a")))
    const again = await open()
    expect((await run(again.get("a")))?.id).toBe("a")
    const tables = await admin.query(
      "SELECT table_name FROM information_schema.tables WHERE table_schema = $1 ORDER BY table_name",
      [s]
    )
    expect(tables.rows.map((r: { table_name: string }) => r.table_name)).toEqual([
      "latchkey_claims",
      "latchkey_connections",
      "latchkey_event_consumers",
      "latchkey_events",
      "latchkey_leases",
      "latchkey_meta",
      "latchkey_pending",
      "latchkey_rates"
    ])
    const version = await admin.query(`SELECT value FROM "${s}".latchkey_meta WHERE key = 'schema_version'`)
    expect(version.rows).toEqual([{ value: String(PostgresStore.SCHEMA_VERSION) }])
    for (const store of [...stores, again]) await run(store.close())
  })

  it("upgrades a schema of version 1 (no event log) in place, keeping its connections", async () => {
    const s = schema()
    const first = await PostgresStore.make({ connectionString: URL_, schema: s, maxConnections: 1 })
    await run(first.insert(sampleRecord("kept")))
    await run(first.close())
    // What version 1 left: no event log (version 2), no claims or rate budgets (version 3).
    await admin.query(
      `DROP TABLE "${s}".latchkey_events, "${s}".latchkey_event_consumers, "${s}".latchkey_claims, "${s}".latchkey_rates`
    )
    await admin.query(`UPDATE "${s}".latchkey_meta SET value = '1' WHERE key = 'schema_version'`)
    const upgraded = await PostgresStore.make({ connectionString: URL_, schema: s, maxConnections: 1 })
    expect((await run(upgraded.get("kept")))?.id).toBe("kept")
    await run(
      upgraded.update(sampleRecord("kept", { version: 2 }), 1, [
        LifecycleEvents.make("refreshed", sampleRecord("kept"), { expiresAt: null, recovered: false }, 5)
      ])
    )
    expect((await run(upgraded.readEvents!(0, 10))).events.map((e) => e.type)).toEqual(["refreshed"])
    expect((await run(upgraded.describe!())).schemaVersion).toBe(PostgresStore.SCHEMA_VERSION)
    await run(upgraded.close())
  })

  it("refuses a schema written by a newer version, with a typed error", async () => {
    const s = schema()
    const first = await PostgresStore.make({ connectionString: URL_, schema: s, maxConnections: 1 })
    await run(first.close())
    await admin.query(`UPDATE "${s}".latchkey_meta SET value = '99' WHERE key = 'schema_version'`)
    const error = await PostgresStore.make({ connectionString: URL_, schema: s, maxConnections: 1 }).then(
      () => undefined,
      (e: unknown) => e
    )
    expect(error).toMatchObject({ _tag: "StoreError", isRetryable: false })
    expect(String((error as Error).message)).toContain("version 99")
  })

  it("gives up waiting for a locked lease row with a timeout error, then works once it is free", async () => {
    const s = schema()
    const store = await PostgresStore.make({
      connectionString: URL_,
      schema: s,
      lockTimeoutMs: 200,
      maxConnections: 2
    })
    const first = (await run(store.acquireLease("c1", "A", 60_000)))!
    await run(store.releaseLease(first))
    // Another session holds the row lock (e.g. a stuck transaction).
    const blocker = await admin.connect()
    try {
      await blocker.query("BEGIN")
      await blocker.query(`SELECT * FROM "${s}".latchkey_leases WHERE connection_id = 'c1' FOR UPDATE`)
      const error = await run(Effect.flip(store.acquireLease("c1", "B", 60_000)))
      expect(error).toMatchObject({ _tag: "StoreError", reason: "timeout" })
      expect(error.isRetryable).toBe(true)
      await blocker.query("ROLLBACK")
    } finally {
      blocker.release()
    }
    expect((await run(store.acquireLease("c1", "B", 60_000)))?.fence).toBe(2)
    await run(store.close())
  })

  it("bounds a read that gets no answer (a table locked by a migration elsewhere) with a timeout error", async () => {
    const s = schema()
    const store = await PostgresStore.make({
      connectionString: URL_,
      schema: s,
      statementTimeoutMs: 300,
      maxConnections: 2
    })
    await run(store.insert(sampleRecord("a")))
    const blocker = await admin.connect()
    try {
      await blocker.query("BEGIN")
      await blocker.query(`LOCK TABLE "${s}".latchkey_connections IN ACCESS EXCLUSIVE MODE`)
      const error = await run(Effect.flip(store.get("a")))
      expect(error).toMatchObject({ _tag: "StoreError", reason: "timeout" })
      await blocker.query("ROLLBACK")
    } finally {
      blocker.release()
    }
    expect((await run(store.get("a")))?.id).toBe("a")
    await run(store.close())
  })

  it("with preparedStatements: false, leaves no session state behind (safe behind PgBouncer transaction pooling)", async () => {
    const s = schema()
    // One connection: every operation of the store runs on it, and so do the checks.
    const pool = new pg.Pool({ connectionString: URL_, max: 1 })
    pool.on("error", () => {})
    const store = await PostgresStore.make({
      pool,
      schema: s,
      statementTimeoutMs: 1_234,
      lockTimeoutMs: 567,
      preparedStatements: false
    })
    await run(store.insert(sampleRecord("a")))
    await run(store.update(sampleRecord("a", { version: 2 }), 1))
    expect((await run(store.get("a")))?.version).toBe(2)
    const lease = (await run(store.acquireLease("a", "h", 1_000)))!
    await run(store.releaseLease(lease))
    await run(store.claimDue!(Date.now(), 5, "h", 1_000))
    await run(store.takeRateBudget!("k", 10, 1_000))
    await run(store.takePending("nope", 0))
    await run(Effect.flip(store.insert(sampleRecord("a"))))
    await run(store.remove("a"))
    const state = await pool.query(
      "SELECT current_setting('statement_timeout') AS st, current_setting('lock_timeout') AS lt, " +
        "current_setting('synchronous_commit') AS sc, " +
        "(SELECT count(*)::int FROM pg_prepared_statements) AS prepared, " +
        "(SELECT count(*)::int FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS advisory, " +
        "pg_current_xact_id_if_assigned() IS NULL AS idle"
    )
    expect(state.rows[0]).toEqual({ st: "0", lt: "0", sc: "on", prepared: 0, advisory: 0, idle: true })
    // The store never ends a pool it was given.
    await run(store.close())
    expect((await pool.query("SELECT 1 AS one")).rows).toEqual([{ one: 1 }])
    await pool.end()
  })

  it("waits for the WAL flush on every write a refresh or a link depends on, and only there", async () => {
    const s = schema()
    const pool = new pg.Pool({ connectionString: URL_, max: 1 })
    pool.on("error", () => {})
    // Every text the store sends, from the one pooled connection.
    const sent: Array<string> = []
    pool.on("connect", (client) => {
      const query = client.query.bind(client) as (...args: Array<unknown>) => unknown
      client.query = ((...args: Array<unknown>) => {
        const first = args[0] as string | { text?: string }
        sent.push(typeof first === "string" ? first : (first.text ?? ""))
        return query(...args)
      }) as typeof client.query
    })
    const store = await PostgresStore.make({ pool, schema: s })
    const now = Date.now()
    /** Whether the transaction of `effect` commits without waiting for the WAL flush. */
    const commitsAsync = async (effect: Effect.Effect<unknown, unknown>) => {
      sent.length = 0
      await run(effect)
      const writes = sent.filter((t) => t.includes("BEGIN"))
      expect(writes.length).toBeGreaterThan(0)
      return writes.some((t) => /synchronous_commit\s*=\s*off/i.test(t))
    }
    const leaseOfA = (await run(store.acquireLease("a", "h", 10_000)))!
    const durable: Record<string, Effect.Effect<unknown, unknown>> = {
      insert: store.insert(sampleRecord("a", { refreshDueAt: now - 1_000 })),
      // The journal write of a refresh: durable before the refresh token is sent.
      "update (journal)": store.update(
        sampleRecord("a", {
          version: 2,
          refreshDueAt: now - 1_000,
          journal: { holder: "h", fence: 1, startedAt: now, fingerprint: "f" }
        }),
        1
      ),
      // The commit of a refresh: the new tokens, the lease released in the same write.
      "update (new tokens, lease released)": store.update(
        sampleRecord("a", { version: 3, refreshDueAt: now - 1_000 }),
        2,
        [],
        { releaseLease: leaseOfA }
      ),
      putPending: store.putPending({
        state: "st",
        providerId: "p",
        ownerId: "o",
        redirectUri: "http://127.0.0.1/cb",
        codeVerifier: null,
        scopes: [],
        createdAt: now,
        expiresAt: now + 60_000,
        metadata: null
      }),
      takePending: store.takePending("st", now),
      claimOnce: store.claimOnce!("key", now + 60_000, now),
      appendEvents: store.appendEvents!([
        {
          id: "e1",
          type: "unlinked",
          at: now,
          connectionId: "a",
          ownerId: "o",
          providerId: "p",
          data: { revokedAtProvider: false }
        }
      ]),
      setConsumerState: store.setConsumerState!("consumer", "{}"),
      remove: store.remove("a")
    }
    const coordination: Record<string, Effect.Effect<unknown, unknown>> = {
      acquireLease: store.acquireLease("b", "h", 10_000),
      renewLease: Effect.flatMap(store.acquireLease("c", "h", 10_000), (lease) =>
        store.renewLease(lease!, 10_000)
      ),
      releaseLease: Effect.flatMap(store.acquireLease("d", "h", 10_000), (lease) =>
        store.releaseLease(lease!)
      ),
      claimDue: store.claimDue!(now, 10, "h", 10_000),
      takeRateBudget: store.takeRateBudget!("refresh:p", 100, 1_000)
    }
    const found: Record<string, boolean> = {}
    for (const [name, effect] of Object.entries(durable)) found[name] = await commitsAsync(effect)
    await run(store.insert(sampleRecord("due", { refreshDueAt: now - 1_000 })))
    for (const [name, effect] of Object.entries(coordination)) found[name] = await commitsAsync(effect)
    expect(found).toEqual({
      ...Object.fromEntries(Object.keys(durable).map((name) => [name, false])),
      ...Object.fromEntries(Object.keys(coordination).map((name) => [name, true]))
    })
    // Committed without the flush, a lease is still every other session's to see at once.
    const other = await admin.query(`SELECT holder FROM "${s}".latchkey_leases WHERE connection_id = 'b'`)
    expect(other.rows).toEqual([{ holder: "h" }])
    expect(await run(store.acquireLease("b", "someone-else", 10_000))).toBeUndefined()
    await run(store.close())
    await pool.end()
  })

  it("claims due connections in index order, checking leases and claims by key: the cost does not grow with the table", async () => {
    const s = schema()
    const pool = new pg.Pool({ connectionString: URL_, max: 1 })
    pool.on("error", () => {})
    const sent: Array<{ text: string; values: ReadonlyArray<unknown> }> = []
    pool.on("connect", (client) => {
      const query = client.query.bind(client) as (...args: Array<unknown>) => unknown
      client.query = ((...args: Array<unknown>) => {
        const first = args[0] as string | { text?: string; values?: Array<unknown> }
        if (typeof first === "string") sent.push({ text: first, values: (args[1] as Array<unknown>) ?? [] })
        else sent.push({ text: first.text ?? "", values: first.values ?? [] })
        return query(...args)
      }) as typeof client.query
    })
    const store = await PostgresStore.make({ pool, schema: s })
    // 3,000 connections, all due, each with an expired lease and claim from an earlier sweep: the
    // state of a fleet's tables after a while. Analyzed, as autovacuum keeps a live table.
    const now = Date.now()
    const record = JSON.stringify(sampleRecord("x", { refreshDueAt: now - 60_000 }))
    await admin.query(
      `INSERT INTO "${s}".latchkey_connections (id, owner_id, provider_id, account_id, version, status, refresh_due_at, created_at, record)
       SELECT 'c' || g, 'o' || g, 'p', 'a' || g, 1, 'active', $1::bigint, $1::bigint, $2 FROM generate_series(1, 3000) g`,
      [now - 60_000, record]
    )
    await admin.query(
      `INSERT INTO "${s}".latchkey_leases (connection_id, holder, fence, expires_at) SELECT 'c' || g, 'old', 1, 0 FROM generate_series(1, 3000) g`
    )
    await admin.query(
      `INSERT INTO "${s}".latchkey_claims (connection_id, holder, expires_at, version) SELECT 'c' || g, 'old', 0, 1 FROM generate_series(1, 3000) g`
    )
    for (const table of ["latchkey_connections", "latchkey_leases", "latchkey_claims"])
      await admin.query(`ANALYZE "${s}".${table}`)
    sent.length = 0
    expect(await run(store.claimDue!(now, 32, "h", 10_000))).toHaveLength(32)
    const claim = sent.find((q) => q.text.includes("latchkey_claims") && q.text.includes("SKIP LOCKED"))!
    const plan = (
      await admin.query<{ "QUERY PLAN": string }>(`EXPLAIN ${claim.text}`, [...claim.values])
    ).rows
      .map((row) => row["QUERY PLAN"])
      .join("\n")
    // Due rows read in order, up to the limit: no sort of every due row.
    expect(plan).toContain("latchkey_connections_claim")
    expect(plan).not.toMatch(/\bSort\b/)
    // Leases and claims looked up by key, not read whole.
    expect(plan).toContain("latchkey_leases_pkey")
    expect(plan).toContain("latchkey_claims_pkey")
    expect(plan).not.toMatch(/Seq Scan on latchkey_(leases|claims)/)
    await run(store.close())
    await pool.end()
  })

  it("creates the claim index on a schema of the current version that lacks it, with no version change", async () => {
    const s = schema()
    const first = await PostgresStore.make({ connectionString: URL_, schema: s })
    await run(first.close())
    await admin.query(`DROP INDEX "${s}".latchkey_connections_claim`)
    const again = await PostgresStore.make({ connectionString: URL_, schema: s })
    const indexes = await admin.query(
      "SELECT indexname FROM pg_indexes WHERE schemaname = $1 AND indexname = 'latchkey_connections_claim'",
      [s]
    )
    expect(indexes.rows).toHaveLength(1)
    const version = await admin.query(`SELECT value FROM "${s}".latchkey_meta WHERE key = 'schema_version'`)
    expect(version.rows).toEqual([{ value: String(PostgresStore.SCHEMA_VERSION) }])
    await run(again.close())
  })

  it("keeps claims and rate budgets in UNLOGGED tables, also on a schema an earlier release created logged", async () => {
    const s = schema()
    const persistence = async () =>
      Object.fromEntries(
        (
          await admin.query<{ relname: string; relpersistence: string }>(
            `SELECT c.relname, c.relpersistence FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relkind = 'r' ORDER BY c.relname`,
            [s]
          )
        ).rows.map((r) => [r.relname, r.relpersistence])
      )
    const first = await PostgresStore.make({ connectionString: URL_, schema: s })
    // u: unlogged; p: permanent (WAL-logged). Connections, leases, events: durable.
    expect(await persistence()).toMatchObject({
      latchkey_claims: "u",
      latchkey_rates: "u",
      latchkey_connections: "p",
      latchkey_leases: "p",
      latchkey_events: "p"
    })
    await run(first.takeRateBudget!("refresh:p", 1, 60_000))
    await run(first.close())
    // As an earlier release left them: logged, with a budget in use.
    await admin.query(`ALTER TABLE "${s}".latchkey_claims SET LOGGED`)
    await admin.query(`ALTER TABLE "${s}".latchkey_rates SET LOGGED`)
    const again = await PostgresStore.make({ connectionString: URL_, schema: s })
    expect(await persistence()).toMatchObject({ latchkey_claims: "u", latchkey_rates: "u" })
    // The budget kept its next slot through the change: the next one waits.
    expect(await run(again.takeRateBudget!("refresh:p", 1, 60_000))).toBeGreaterThan(0)
    const version = await admin.query(`SELECT value FROM "${s}".latchkey_meta WHERE key = 'schema_version'`)
    expect(version.rows).toEqual([{ value: String(PostgresStore.SCHEMA_VERSION) }])
    await run(again.close())
  })

  it("leaves a coordination table logged, with a warning, when it is busy for more than a second, and opens all the same", async () => {
    const s = schema()
    const first = await PostgresStore.make({ connectionString: URL_, schema: s })
    await run(first.close())
    await admin.query(`ALTER TABLE "${s}".latchkey_claims SET LOGGED`)
    await admin.query(`ALTER TABLE "${s}".latchkey_rates SET LOGGED`)
    // Another session holds the claims table (a long claim, say) while an instance starts.
    const blocker = await admin.connect()
    const warnings: Array<Error> = []
    const onWarning = (w: Error) => warnings.push(w)
    process.on("warning", onWarning)
    try {
      await blocker.query("BEGIN")
      await blocker.query(`LOCK TABLE "${s}".latchkey_claims IN ACCESS SHARE MODE`)
      const again = await PostgresStore.make({ connectionString: URL_, schema: s })
      await new Promise((r) => setImmediate(r))
      const kinds = await admin.query<{ relname: string; relpersistence: string }>(
        `SELECT c.relname, c.relpersistence FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = $1 AND c.relname IN ('latchkey_claims', 'latchkey_rates') ORDER BY c.relname`,
        [s]
      )
      expect(kinds.rows).toEqual([
        { relname: "latchkey_claims", relpersistence: "p" },
        { relname: "latchkey_rates", relpersistence: "u" }
      ])
      expect(warnings.map((w) => (w as Error & { code?: string }).code)).toContain("LATCHKEY_PG_LOGGED")
      expect(await run(again.takeRateBudget!("refresh:p", 100, 1_000))).toBeGreaterThanOrEqual(0)
      await run(again.close())
    } finally {
      process.off("warning", onWarning)
      await blocker.query("ROLLBACK")
      blocker.release()
    }
    // Free again: the next start switches it.
    const third = await PostgresStore.make({ connectionString: URL_, schema: s })
    const claims = await admin.query<{ relpersistence: string }>(
      `SELECT c.relpersistence FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE n.nspname = $1 AND c.relname = 'latchkey_claims'`,
      [s]
    )
    expect(claims.rows).toEqual([{ relpersistence: "u" }])
    await run(third.close())
  })

  it("concurrent gets share statements: each caller gets its own row, a corrupt one fails only its own get", async () => {
    const s = schema()
    const pool = new pg.Pool({ connectionString: URL_, max: 2 })
    pool.on("error", () => {})
    const store = await PostgresStore.make({ pool, schema: s })
    for (let i = 0; i < 300; i++) await run(store.insert(sampleRecord(`c${i}`, { ownerId: `o${i}` })))
    await pool.query(`UPDATE "${s}".latchkey_connections SET record = 'not json' WHERE id = 'c7'`)
    let statements = 0
    const query = pool.query.bind(pool)
    pool.query = ((...args: Parameters<typeof query>) => {
      statements++
      return query(...args)
    }) as typeof pool.query
    // 300 distinct ids, one of them asked for twice, one that does not exist, one corrupt row.
    const ids = [...Array.from({ length: 300 }, (_, i) => `c${i}`), "c3", "missing"]
    const results = await Promise.all(ids.map((id) => run(Effect.result(store.get(id)))))
    // One turn of the event loop: 302 gets in two statements (at most 256 ids each), not 302.
    expect(statements).toBe(2)
    results.forEach((result, i) => {
      const id = ids[i]!
      if (id === "c7")
        expect(result).toMatchObject({ _tag: "Failure", failure: { _tag: "StoreError", reason: "corrupt" } })
      else if (id === "missing") expect(result).toMatchObject({ _tag: "Success", success: undefined })
      else expect(result).toMatchObject({ _tag: "Success", success: { id, ownerId: `o${id.slice(1)}` } })
    })
    // A statement that fails fails the gets it carried, as typed errors.
    await pool.query(`ALTER TABLE "${s}".latchkey_connections RENAME TO gone`)
    const failed = await Promise.all(["c1", "c2"].map((id) => run(Effect.flip(store.get(id)))))
    for (const error of failed) expect(error).toMatchObject({ _tag: "StoreError" })
    await pool.query(`ALTER TABLE "${s}".gone RENAME TO latchkey_connections`)
    expect((await run(store.get("c1")))?.id).toBe("c1")
    await run(store.close())
    await pool.end()
  })

  it("prepares its reads once per connection, and stores of two schemas share one pool", async () => {
    const [s1, s2] = [schema(), schema()]
    // One connection: both stores' statements are prepared in the same session.
    const pool = new pg.Pool({ connectionString: URL_, max: 1 })
    pool.on("error", () => {})
    const one = await PostgresStore.make({ pool, schema: s1 })
    const two = await PostgresStore.make({ pool, schema: s2 })
    await run(one.insert(sampleRecord("a", { ownerId: "o1" })))
    await run(two.insert(sampleRecord("a", { ownerId: "o2" })))
    for (let i = 0; i < 3; i++) {
      // The same statement text but for the schema: each store reads its own row.
      expect((await run(one.get("a")))?.ownerId).toBe("o1")
      expect((await run(two.get("a")))?.ownerId).toBe("o2")
      expect((await run(one.listByOwner("o1"))).map((r) => r.id)).toEqual(["a"])
      expect(await run(two.listByOwner("o1"))).toEqual([])
    }
    const prepared = await pool.query<{ statement: string }>("SELECT statement FROM pg_prepared_statements")
    const texts = prepared.rows.map((r) => r.statement)
    // get and listByOwner of each schema: four statements, each prepared once.
    expect(texts.filter((t) => t.includes(`"${s1}".latchkey_connections WHERE id = ANY($1`))).toHaveLength(1)
    expect(texts.filter((t) => t.includes(`"${s2}".latchkey_connections WHERE id = ANY($1`))).toHaveLength(1)
    expect(texts.filter((t) => t.includes("WHERE owner_id = $1 ORDER BY"))).toHaveLength(2)
    await run(one.close())
    await run(two.close())
    await pool.end()
  })

  it("an unreachable server is a typed, retryable error, not a crash", async () => {
    const error = await PostgresStore.make({
      connectionString: "postgres://postgres@127.0.0.1:1/test",
      schema: schema(),
      statementTimeoutMs: 1_000
    }).then(
      () => undefined,
      (e: unknown) => e
    )
    expect(error).toMatchObject({ _tag: "StoreError", isRetryable: true })
    expect(String((error as Error).message)).not.toContain("postgres://")
  })

  it("refuses invalid options at construction, naming the option", () => {
    const bad = [
      [{ connectionString: URL_, schema: 'x"; DROP TABLE y; --' }, "schema"],
      [{ connectionString: URL_, lockTimeoutMs: 0 }, "lockTimeoutMs"],
      [{ connectionString: URL_, statementTimeoutMs: 1.5 }, "statementTimeoutMs"],
      // A string from the environment ("false") must not read as true.
      [{ connectionString: URL_, preparedStatements: "false" as unknown as boolean }, "preparedStatements"],
      [{ schema: "ok" }, "connectionString"]
    ] as const
    for (const [options, field] of bad) {
      for (const open of [() => PostgresStore.make(options), () => PostgresStore.layer(options)]) {
        let error: unknown
        try {
          open()
        } catch (e) {
          error = e
        }
        expect(error).toBeInstanceOf(StoreError)
        expect(error).toMatchObject({ reason: "invalid_options", field, isRetryable: false })
      }
    }
  })

  it("as a Layer: creates the tables when built and ends its pool when released", async () => {
    const s = schema()
    const application = `latchkey-layer-test-${s}`
    const lk = createLatchkey({
      providers: [],
      // The pool alone (the token cache's LISTEN connection is tested on its own).
      tokenCache: false,
      store: PostgresStore.layer({
        connectionString: `${URL_}?application_name=${application}`,
        schema: s,
        maxConnections: 1
      })
    })
    expect(await lk.connections("nobody")).toEqual([])
    const tables = await admin.query(
      "SELECT count(*)::int AS n FROM information_schema.tables WHERE table_schema = $1",
      [s]
    )
    expect(tables.rows[0].n).toBe(8)
    const sessions = () =>
      admin
        .query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1", [application])
        .then((r) => r.rows[0].n as number)
    expect(await sessions()).toBe(1)
    await lk.close()
    // The backend notices the disconnect a moment later.
    for (let i = 0; i < 50 && (await sessions()) > 0; i++) await new Promise((r) => setTimeout(r, 20))
    expect(await sessions()).toBe(0)
    // A layer that cannot reach its database fails to build with the store's typed error.
    const unreachable = createLatchkey({
      providers: [],
      store: PostgresStore.layer({
        connectionString: "postgres://postgres@127.0.0.1:1/test",
        schema: s,
        statementTimeoutMs: 1_000
      })
    })
    await expect(unreachable.connections("nobody")).rejects.toMatchObject({ _tag: "StoreError" })
    await unreachable.close()
  })
})
