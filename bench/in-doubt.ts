/**
 * `inDoubtWindow`: the time between the provider's refresh answer arriving and the new tokens being
 * durable in the store — the only window in which a crash can lose a rotated refresh token. Read from
 * the engine's own `refreshed` events (`commitMs`), per store, under a 500-caller load: 100 connections
 * whose tokens are expired, 500 concurrent `accessToken` callers (5 per connection), 5 rounds. The
 * token server is the core sandbox kit in this process (rotating single-use refresh tokens).
 *
 * Baseline, same process and run: one raw compare-and-set `update` of a connection row through the
 * same store (`rawWriteP50Ms` / `rawWriteP99Ms`, awaited one at a time): the window cannot be shorter
 * than one durable write. `ratioP50 = windowP50 / rawWriteP50`.
 */
import { randomUUID } from "node:crypto"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Connection, ConnectionStore, createLatchkey, Provider, SqliteStore, Vault } from "@latchkey/core"
import { startOAuthSandbox } from "@latchkey/core/sandbox"
import { oauthConnection } from "@latchkey/core/testing"
import { PostgresStore } from "@latchkey/store-postgres"
import { RedisStore } from "@latchkey/store-redis"
import { Effect } from "effect"
import { dropRedisPrefix, progress, quantile, round } from "./common.ts"

const CONNECTIONS = 100
const CALLERS = 500
const ROUNDS = 5
const POSTGRES_URL = process.env.LATCHKEY_BENCH_POSTGRES_URL ?? "postgres://postgres@127.0.0.1:5432/test"
const REDIS_URL = process.env.LATCHKEY_BENCH_REDIS_URL ?? "redis://127.0.0.1:6379"

export interface InDoubtWindow {
  readonly samples: number
  readonly p50Ms: number
  readonly p99Ms: number
  readonly maxMs: number
  readonly rawWriteP50Ms: number
  readonly rawWriteP99Ms: number
  readonly ratioP50: number
  readonly refreshes: number
  readonly sentTwice: number
}

export type InDoubtResult = Record<
  "memory" | "sqlite" | "postgres" | "redis",
  InDoubtWindow | { error: string }
>

const run = <A, E>(effect: Effect.Effect<A, E>) => Effect.runPromise(effect)

const measure = async (name: string, store: ConnectionStore.ConnectionStoreShape): Promise<InDoubtWindow> => {
  const sandbox = await startOAuthSandbox({
    name: "InDoubt",
    accounts: [{ id: "acct", label: "Account" }],
    clients: [
      {
        clientId: "bench",
        clientSecret: "bench-secret",
        redirectUris: ["http://127.0.0.1:9/callback"],
        auth: "client_secret_basic"
      }
    ],
    paths: { authorize: "/authorize", token: "/token" },
    refreshTokens: { rotate: true, reuseRevokesGrant: true }
  })
  const vaultOptions = { keys: [{ id: "k1", key: Vault.generateKey() }] }
  const vault = Vault.make(vaultOptions)
  const provider = Provider.make({
    id: "indoubt",
    name: "In-doubt bench",
    clientId: "bench",
    clientSecret: "bench-secret",
    clientAuth: "client_secret_basic",
    endpoints: {
      issuer: sandbox.endpoints.issuer,
      authorization: sandbox.endpoints.authorization,
      token: sandbox.endpoints.token
    },
    redirectUri: "http://127.0.0.1:9/callback",
    identify: async () => ({ accountId: "unused", label: "unused" })
  })
  const lk = createLatchkey({ providers: [provider], store, vault: vaultOptions })
  const windows: Array<number> = []
  lk.on((e) => {
    if (e.type === "refreshed" && e.commitMs !== undefined) windows.push(e.commitMs)
    if (e.type === "refresh_failed") progress("inDoubtWindow", `${name}: ${e.reason}: ${e.message}`)
  })
  try {
    const ids: Array<string> = []
    for (let i = 0; i < CONNECTIONS; i++) {
      const { tokenResponse } = sandbox.issueGrant({ account: "acct", clientId: "bench" })
      const now = Date.now()
      const c = oauthConnection({
        ownerId: "bench",
        providerId: "indoubt",
        accountId: `acct-${i}-${randomUUID()}`,
        label: `acct ${i}`,
        accessToken: String(tokenResponse.access_token),
        refreshToken: String(tokenResponse.refresh_token),
        obtainedAt: now - 7_200_000,
        expiresAt: now - 1_000,
        now
      })
      await run(store.insert(Connection.toRecord(vault, c, null)))
      ids.push(c.id)
    }
    const expireAll = async () => {
      for (const id of ids) {
        const r = (await run(store.get(id)))!
        const now = Date.now()
        await run(
          store.update(
            { ...r, obtainedAt: now - 7_200_000, expiresAt: now - 1_000, version: r.version + 1 },
            r.version
          )
        )
      }
    }
    for (let roundNo = 0; roundNo < ROUNDS; roundNo++) {
      if (roundNo > 0) await expireAll()
      await Promise.all(Array.from({ length: CALLERS }, (_, i) => lk.accessToken(ids[i % CONNECTIONS]!)))
    }
    // The baseline: one compare-and-set write of the same rows, one at a time.
    const raw: Array<number> = []
    for (let i = 0; i < 300; i++) {
      const id = ids[i % CONNECTIONS]!
      const r = (await run(store.get(id)))!
      const started = performance.now()
      await run(store.update({ ...r, version: r.version + 1 }, r.version))
      raw.push(performance.now() - started)
    }
    windows.sort((a, b) => a - b)
    raw.sort((a, b) => a - b)
    const p50 = quantile(windows, 0.5)
    const rawP50 = quantile(raw, 0.5)
    const result: InDoubtWindow = {
      samples: windows.length,
      p50Ms: round(p50, 2),
      p99Ms: round(quantile(windows, 0.99), 2),
      maxMs: round(windows.at(-1) ?? 0, 2),
      rawWriteP50Ms: round(rawP50, 3),
      rawWriteP99Ms: round(quantile(raw, 0.99), 3),
      ratioP50: round(p50 / Math.max(rawP50, 0.001), 2),
      refreshes: sandbox.countCalls({ endpoint: "token", grantType: "refresh_token" }),
      sentTwice: sandbox.registry.reuseCount
    }
    progress("inDoubtWindow", `${name}: ${JSON.stringify(result)}`)
    return result
  } finally {
    await lk.close()
    await sandbox.close()
  }
}

const guard = async (
  name: string,
  f: () => Promise<InDoubtWindow>
): Promise<InDoubtWindow | { error: string }> => {
  try {
    return await f()
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error)
    progress("inDoubtWindow", `${name} failed: ${message}`)
    return { error: message }
  }
}

export const benchInDoubtWindow = async (): Promise<InDoubtResult> => {
  const memory = await guard("memory", () => measure("memory", ConnectionStore.makeMemory()))
  const sqlite = await guard("sqlite", async () => {
    const dir = mkdtempSync(join(tmpdir(), "latchkey-bench-indoubt-"))
    const store = SqliteStore.make({ path: join(dir, "bench.db") })
    try {
      return await measure("sqlite", store)
    } finally {
      await run(store.close())
      rmSync(dir, { recursive: true, force: true })
    }
  })
  const postgres = await guard("postgres", async () => {
    const schema = `bench_indoubt_${randomUUID().replaceAll("-", "").slice(0, 12)}`
    const store = await PostgresStore.make({ connectionString: POSTGRES_URL, schema, maxConnections: 10 })
    try {
      return await measure("postgres", store)
    } finally {
      await run(store.close())
      await dropSchema(schema)
    }
  })
  const redis = await guard("redis", async () => {
    const store = RedisStore.make({ url: REDIS_URL, keyPrefix: RedisStore.randomPrefix("bench-indoubt") })
    try {
      return await measure("redis", store)
    } finally {
      await dropPrefix(store.keyPrefix)
      await run(store.close())
    }
  })
  return { memory, sqlite, postgres, redis }
}

/** Drop the bench's schema with the store package's own driver. */
const dropSchema = async (schema: string) => {
  const { createRequire } = await import("node:module")
  const { fileURLToPath } = await import("node:url")
  const require = createRequire(fileURLToPath(import.meta.resolve("@latchkey/store-postgres")))
  const pg = require("pg") as {
    Pool: new (config: object) => { query(text: string): Promise<unknown>; end(): Promise<void> }
  }
  const pool = new pg.Pool({ connectionString: POSTGRES_URL, max: 1 })
  try {
    await pool.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`)
  } finally {
    await pool.end()
  }
}

const dropPrefix = (prefix: string) => dropRedisPrefix(REDIS_URL, prefix)
