/**
 * Stores: memory, SQLite, PostgreSQL (127.0.0.1:5432, database test) and Redis (127.0.0.1:6379),
 * each measured in the same process and the same run against its own token server (oidc-provider
 * with rotating single-use refresh tokens and reuse detection, in a worker thread).
 *
 * - Hot path: `latchkey.accessToken(id)` on a connection whose token is valid (store read, decode —
 *   cached while the record is unchanged —, checks, Redacted unwrap), tokens sealed at rest, against
 *   the raw driver reading the same row: the in-memory store's `get` through `Effect.runPromise`;
 *   a `node:sqlite` prepared `SELECT record ... WHERE id = ?` on its own handle to the same file;
 *   `pg` `SELECT record ... WHERE id = $1` on its own one-connection pool; ioredis `HGET <key> r` on
 *   its own client — each followed by `JSON.parse` of the stored record, as any hand-written read
 *   that wants a field of it does (the stores parse it too). Both loops await one call at a time; they alternate in 5 rounds so drift hits both
 *   alike, and each side's figure is its median round rate (a round of the cached path lasts a few
 *   milliseconds, so one GC pause in it would otherwise decide the figure).
 *   `ratio = readOpsPerSec / rawReadOpsPerSec`.
 * - Storm: one expired connection, `stormProcesses` OS processes (4; memory: 1, it lives in one
 *   process) x 50 callers of `accessToken` at once, each process a Latchkey instance on the same
 *   store (the store conformance suite's worker). `stormRefreshCalls`: refresh grants the server saw;
 *   `stormGrantSurvived`: the refresh token left in the store is active and refreshes once more.
 * - On demand: one caller's `accessToken` on a connection whose token expired just before (store
 *   read, lease, journal, provider round trip, commit), median of 40 (`onDemandRefreshMs`), against a
 *   raw openid-client refresh round trip on the same server (`oneRefreshMs`); `onDemandRatio`.
 *
 * `export async function benchStores()` is what `bench/run.ts` calls; a store that cannot be reached
 * is reported as `{ error }` and the others still run.
 */
import { randomUUID } from "node:crypto"
import { mkdtempSync, rmSync } from "node:fs"
import { createRequire } from "node:module"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { DatabaseSync } from "node:sqlite"
import { fileURLToPath } from "node:url"
import { ConnectionStore, createLatchkey, type LatchkeyClient, SqliteStore, Vault } from "@latchkey/core"
import { startStoreWorker } from "@latchkey/core/testing"
import { PostgresStore } from "@latchkey/store-postgres"
import { RedisStore } from "@latchkey/store-redis"
import { Effect } from "effect"
import {
  expireStored,
  link,
  makeProvider,
  median,
  PROVIDER_ID,
  progress,
  REDIRECT,
  round,
  storedRefreshToken
} from "./common.ts"
import { type BenchServer, CLIENT_ID, SCOPES, startBenchServer } from "./server.ts"
import { measureOneRefresh } from "./storm.ts"

export interface StoreBenchResult {
  /** `latchkey.accessToken` on a valid token, awaited one at a time. */
  readonly readOpsPerSec: number
  /** The raw driver reading the same row, same process, same run. */
  readonly rawReadOpsPerSec: number
  readonly ratio: number
  readonly readIterations: number
  readonly rawRead: string
  readonly stormProcesses: number
  readonly stormCallers: number
  readonly stormRefreshCalls: number
  readonly stormCallersFailed: number
  readonly stormDistinctTokens: number
  readonly stormGrantSurvived: boolean
  /**
   * One caller's `accessToken` on a connection whose token has expired (the refresh on demand: the
   * store read, lease, journal, provider round trip and commit), median of 40 after 5 warm-up ones.
   */
  readonly onDemandRefreshMs: number
  /** The raw openid-client refresh round trip on the same server, median (the baseline). */
  readonly oneRefreshMs: number
  /** `onDemandRefreshMs / oneRefreshMs`: what the store's round trips add to a refresh a caller waits for. */
  readonly onDemandRatio: number
}

export type StoresResult = Record<
  "memory" | "sqlite" | "postgres" | "redis",
  StoreBenchResult | { error: string }
>

const POSTGRES_URL = process.env.LATCHKEY_BENCH_POSTGRES_URL ?? "postgres://postgres@127.0.0.1:5432/test"
const REDIS_URL = process.env.LATCHKEY_BENCH_REDIS_URL ?? "redis://127.0.0.1:6379"
const STORM_PROCESSES = 4
const STORM_CALLERS = 50
const VAULT_KEY_ID = "bench-stores"

/** The drivers, resolved from the store packages that depend on them. */
const requireFromPostgres = createRequire(fileURLToPath(import.meta.resolve("@latchkey/store-postgres")))
const requireFromRedis = createRequire(fileURLToPath(import.meta.resolve("@latchkey/store-redis")))

interface PgPool {
  query(text: string, values?: Array<unknown>): Promise<{ rows: Array<Record<string, unknown>> }>
  on(event: "error", listener: () => void): unknown
  end(): Promise<void>
}
interface RedisClient {
  hget(key: string, field: string): Promise<string | null>
  scan(cursor: string, ...args: Array<string | number>): Promise<[string, Array<string>]>
  del(...keys: Array<string>): Promise<number>
  on(event: "error", listener: () => void): unknown
  quit(): Promise<unknown>
}
const newPgPool = (): PgPool => {
  const pg = requireFromPostgres("pg") as { Pool: new (config: object) => PgPool }
  const pool = new pg.Pool({ connectionString: POSTGRES_URL, max: 1 })
  pool.on("error", () => {})
  return pool
}
const newRedis = (): RedisClient => {
  const { Redis } = requireFromRedis("ioredis") as {
    Redis: new (url: string, options: object) => RedisClient
  }
  const client = new Redis(REDIS_URL, { maxRetriesPerRequest: 2 })
  client.on("error", () => {})
  return client
}

interface Opened {
  readonly name: keyof StoresResult
  readonly store: ConnectionStore.ConnectionStoreShape
  /** How a worker process opens the same store; undefined for memory. */
  readonly opener?: { readonly module: string; readonly export: string; readonly settings: unknown }
  /** Read the row the way the driver does, nothing more. */
  readonly rawRead: (id: string) => Promise<unknown>
  readonly rawReadLabel: string
  readonly close: () => Promise<void>
}

/** The raw side parses the stored JSON, as any hand-written read of the row would to reach a field. */
const parseRow = (text: string | undefined): unknown => (text === undefined ? undefined : JSON.parse(text))

const vaultKey = Vault.generateKey()
const vault: Vault.VaultOptions = { keys: [{ id: VAULT_KEY_ID, key: vaultKey }] }

const openMemory = async (): Promise<Opened> => {
  const store = ConnectionStore.makeMemory()
  return {
    name: "memory",
    store,
    rawRead: (id) => Effect.runPromise(store.get(id)),
    rawReadLabel: "Effect.runPromise(store.get(id)) on the same in-memory store",
    close: async () => {}
  }
}

const openSqlite = async (): Promise<Opened> => {
  const dir = mkdtempSync(join(tmpdir(), "latchkey-bench-stores-"))
  const path = join(dir, "bench.db")
  const store = SqliteStore.make({ path })
  const db = new DatabaseSync(path)
  const select = db.prepare("SELECT record FROM latchkey_connections WHERE id = ?")
  return {
    name: "sqlite",
    store,
    opener: { module: import.meta.resolve("@latchkey/core"), export: "SqliteStore.make", settings: { path } },
    rawRead: async (id) => parseRow((select.get(id) as { record: string } | undefined)?.record),
    rawReadLabel: "node:sqlite prepared SELECT record ... WHERE id = ? + JSON.parse (own handle, same file)",
    close: async () => {
      db.close()
      await Effect.runPromise(store.close())
      rmSync(dir, { recursive: true, force: true })
    }
  }
}

const openPostgres = async (): Promise<Opened> => {
  const schema = `lk_bench_${randomUUID().replaceAll("-", "").slice(0, 16)}`
  const settings = { connectionString: POSTGRES_URL, schema }
  const store = await PostgresStore.make(settings)
  const pool = newPgPool()
  const text = `SELECT record FROM "${schema}".latchkey_connections WHERE id = $1`
  return {
    name: "postgres",
    store,
    opener: {
      module: import.meta.resolve("@latchkey/store-postgres"),
      export: "PostgresStore.make",
      settings
    },
    rawRead: async (id) => parseRow((await pool.query(text, [id])).rows[0]?.record as string | undefined),
    rawReadLabel: "pg pool.query('SELECT record ... WHERE id = $1') + JSON.parse (own one-connection pool)",
    close: async () => {
      await Effect.runPromise(store.close())
      await pool.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch(() => {})
      await pool.end()
    }
  }
}

const openRedis = async (): Promise<Opened> => {
  const keyPrefix = RedisStore.randomPrefix("lk-bench")
  const settings = { url: REDIS_URL, keyPrefix }
  const store = RedisStore.make(settings)
  await Effect.runPromise(store.ready)
  const client = newRedis()
  return {
    name: "redis",
    store,
    opener: { module: import.meta.resolve("@latchkey/store-redis"), export: "RedisStore.make", settings },
    rawRead: async (id) => parseRow((await client.hget(`${keyPrefix}c:${id}`, "r")) ?? undefined),
    rawReadLabel: "ioredis HGET <prefix>c:<id> r + JSON.parse (own client)",
    close: async () => {
      await Effect.runPromise(store.close())
      let cursor = "0"
      for (let i = 0; i < 1_000; i++) {
        const [next, keys] = await client.scan(cursor, "MATCH", `${keyPrefix}*`, "COUNT", 500)
        if (keys.length > 0) await client.del(...keys)
        cursor = next
        if (cursor === "0") break
      }
      await client.quit()
    }
  }
}

/**
 * Awaited calls in alternating rounds; returns each side's median round rate (ops/s), so that one
 * pause of the process (a major GC) in a round of a few milliseconds does not decide the figure.
 */
const measureReads = async (
  latchkey: () => Promise<unknown>,
  raw: () => Promise<unknown>,
  rounds: number,
  perRound: number,
  warmup: number
) => {
  for (let i = 0; i < warmup; i++) {
    await latchkey()
    await raw()
  }
  const lkRates: Array<number> = []
  const rawRates: Array<number> = []
  const timeLoop = async (f: () => Promise<unknown>, into: Array<number>) => {
    const start = performance.now()
    for (let i = 0; i < perRound; i++) await f()
    into.push(perRound / ((performance.now() - start) / 1000))
  }
  for (let r = 0; r < rounds; r++) {
    if (r % 2 === 0) {
      await timeLoop(latchkey, lkRates)
      await timeLoop(raw, rawRates)
    } else {
      await timeLoop(raw, rawRates)
      await timeLoop(latchkey, lkRates)
    }
  }
  return { iterations: rounds * perRound, readOpsPerSec: median(lkRates), rawReadOpsPerSec: median(rawRates) }
}

const storm = async (server: BenchServer, opened: Opened, lk: LatchkeyClient) => {
  const { id } = await link(lk, `stores-storm-${opened.name}`)
  await expireStored(opened.store, id)
  const before = (await server.grants()).refresh_token
  let results: Array<{ readonly tokens: Array<string>; readonly failures: Array<string> }>
  let processes: number
  let callers: number
  if (opened.opener === undefined) {
    // The memory store lives in one process: the storm is one instance's concurrent callers.
    processes = 1
    callers = STORM_PROCESSES * STORM_CALLERS
    const settled = await Promise.allSettled(Array.from({ length: callers }, () => lk.accessToken(id)))
    results = [
      {
        tokens: [...new Set(settled.flatMap((s) => (s.status === "fulfilled" ? [s.value] : [])))],
        failures: settled.flatMap((s) => (s.status === "rejected" ? [String(s.reason?._tag ?? "error")] : []))
      }
    ]
  } else {
    processes = STORM_PROCESSES
    callers = STORM_PROCESSES * STORM_CALLERS
    const workers = Array.from({ length: processes }, () =>
      startStoreWorker({
        opener: { module: opened.opener!.module, export: opened.opener!.export },
        storeSettings: opened.opener!.settings,
        providerId: PROVIDER_ID,
        provider: {
          clientId: CLIENT_ID,
          clientSecret: server.clientSecret,
          clientAuth: "client_secret_basic",
          endpoints: server.endpoints,
          redirectUri: REDIRECT,
          scopes: [...SCOPES]
        },
        connectionId: id,
        callers: STORM_CALLERS,
        leaseTtlMs: 10_000,
        vaultKey,
        vaultKeyId: VAULT_KEY_ID
      })
    )
    try {
      await Promise.all(workers.map((w) => w.ready))
      for (const w of workers) w.child.stdin.write("go\n")
      results = await Promise.all(workers.map((w) => w.result))
    } finally {
      for (const w of workers) w.child.kill("SIGKILL")
    }
  }
  const refreshCalls = (await server.grants()).refresh_token - before
  const failed = results.flatMap((r) => r.failures).length
  const tokens = new Set(results.flatMap((r) => r.tokens))
  // A fresh instance on the same store reads the refresh token the storm left there.
  const reader = createLatchkey({ providers: [makeProvider(server)], store: opened.store, vault })
  let grantSurvived = false
  try {
    const left = await storedRefreshToken(reader, id)
    grantSurvived = failed === 0 && left !== undefined && (await server.grantAlive(left)).alive
  } finally {
    await reader.close()
  }
  return { processes, callers, refreshCalls, failed, distinctTokens: tokens.size, grantSurvived }
}

/** A refresh a caller waits for: `accessToken` on a connection expired just before, one at a time. */
const onDemandRefresh = async (server: BenchServer, opened: Opened, lk: LatchkeyClient) => {
  const { id } = await link(lk, `stores-on-demand-${opened.name}`)
  const times: Array<number> = []
  for (let i = 0; i < 45; i++) {
    await expireStored(opened.store, id)
    const start = performance.now()
    await lk.accessToken(id)
    if (i >= 5) times.push(performance.now() - start)
  }
  return { ms: round(median(times), 2), rawMs: round(await measureOneRefresh(server), 2) }
}

const benchOne = async (server: BenchServer, opened: Opened): Promise<StoreBenchResult> => {
  const lk = createLatchkey({ providers: [makeProvider(server)], store: opened.store, vault })
  try {
    const { id } = await link(lk, `stores-${opened.name}`)
    const first = await lk.accessToken(id)
    if ((await opened.rawRead(id)) === undefined) throw new Error(`${opened.name}: the raw read found no row`)
    const network = opened.name === "postgres" || opened.name === "redis"
    const grantsBefore = (await server.grants()).refresh_token
    const reads = await measureReads(
      () => lk.accessToken(id),
      () => opened.rawRead(id),
      5,
      network ? 1_000 : 4_000,
      network ? 300 : 1_000
    )
    // The hot path never refreshed, and still answers the same token.
    const refreshesDuringReads = (await server.grants()).refresh_token - grantsBefore
    if (refreshesDuringReads !== 0 || (await lk.accessToken(id)) !== first) {
      throw new Error(`${opened.name}: accessToken refreshed a valid token during the reads`)
    }
    progress(
      "stores",
      `${opened.name}: ${Math.round(reads.readOpsPerSec)} accessToken/s vs ${Math.round(reads.rawReadOpsPerSec)} raw reads/s`
    )
    const onDemand = await onDemandRefresh(server, opened, lk)
    progress(
      "stores",
      `${opened.name}: a refresh on demand ${onDemand.ms} ms vs one raw refresh ${onDemand.rawMs} ms`
    )
    const s = await storm(server, opened, lk)
    progress(
      "stores",
      `${opened.name}: storm ${s.processes} process(es) x ${s.callers / s.processes} callers → ${s.refreshCalls} refresh call(s), grant survived: ${s.grantSurvived}`
    )
    return {
      readOpsPerSec: Math.round(reads.readOpsPerSec),
      rawReadOpsPerSec: Math.round(reads.rawReadOpsPerSec),
      ratio: round(reads.readOpsPerSec / reads.rawReadOpsPerSec, 3),
      readIterations: reads.iterations,
      rawRead: opened.rawReadLabel,
      stormProcesses: s.processes,
      stormCallers: s.callers,
      stormRefreshCalls: s.refreshCalls,
      stormCallersFailed: s.failed,
      stormDistinctTokens: s.distinctTokens,
      stormGrantSurvived: s.grantSurvived,
      onDemandRefreshMs: onDemand.ms,
      oneRefreshMs: onDemand.rawMs,
      onDemandRatio: round(onDemand.ms / onDemand.rawMs, 2)
    }
  } finally {
    await lk.close()
  }
}

export async function benchStores(): Promise<StoresResult> {
  const server = await startBenchServer(REDIRECT)
  const results: Partial<StoresResult> = {}
  try {
    const openers: ReadonlyArray<[keyof StoresResult, () => Promise<Opened>]> = [
      ["memory", openMemory],
      ["sqlite", openSqlite],
      ["postgres", openPostgres],
      ["redis", openRedis]
    ]
    for (const [name, open] of openers) {
      progress("stores", `${name}: hot path and storm`)
      let opened: Opened | undefined
      try {
        opened = await open()
        results[name] = await benchOne(server, opened)
      } catch (error) {
        const message = error instanceof Error ? error.message : String(error)
        progress("stores", `${name}: failed: ${message}`)
        results[name] = { error: message }
      } finally {
        await opened?.close().catch(() => {})
      }
    }
  } finally {
    await server.close()
  }
  return results as StoresResult
}
