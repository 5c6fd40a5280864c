/**
 * What every section shares: the generic provider pointed at the bench token server (linked exactly
 * as packages/provider-generic/test/oidc-provider.test.ts does), a vault key (tokens sealed at rest,
 * as in production), linking through the real consent forms, reading a connection's stored refresh
 * token, timing helpers and progress output.
 */

import { readFileSync } from "node:fs"
import { createRequire } from "node:module"
import { fileURLToPath } from "node:url"
import {
  type Connection,
  type ConnectionStore,
  type LatchkeyClient,
  type Provider,
  TokenManager,
  Vault
} from "@latchkey/core"
import { Generic } from "@latchkey/provider-generic"
import { consent } from "@latchkey/testkit-oidc"
import { Effect, Redacted } from "effect"
import { type BenchServer, CLIENT_ID, SCOPES } from "./server.ts"

export const REDIRECT = "http://127.0.0.1:9/callback"
export const PROVIDER_ID = "example"

export const makeProvider = (server: BenchServer): Provider.Provider =>
  Generic.provider({
    id: PROVIDER_ID,
    name: "Example Corp",
    clientId: CLIENT_ID,
    clientSecret: server.clientSecret,
    auth: "client_secret_basic",
    redirectUri: REDIRECT,
    endpoints: server.endpoints,
    scopes: [...SCOPES],
    authorizationParams: { prompt: "consent" }
  })

/** One vault key per run: every Latchkey instance of the bench seals tokens at rest. */
export const vaultOptions: Vault.VaultOptions = { keys: [{ id: "bench", key: Vault.generateKey() }] }

/** Link an account through the authorize URL, the server's login and consent forms, and the callback. */
export const link = async (
  lk: LatchkeyClient,
  login: string,
  ownerId = "bench-user"
): Promise<Connection.ConnectionSummary> => {
  const { url } = await lk.startAuthorization({ providerId: PROVIDER_ID, ownerId })
  const callback = await consent(url, { login, redirectUri: REDIRECT })
  const { connection } = await lk.completeAuthorization({ callback, providerId: PROVIDER_ID, ownerId })
  return connection
}

/** The refresh token Latchkey holds for a connection (opened through the instance's vault). */
export const storedRefreshToken = async (lk: LatchkeyClient, id: string): Promise<string | undefined> => {
  const connection = await lk.run(TokenManager.TokenManager.use((t) => t.get(id)))
  return connection.tokens.refreshToken === undefined
    ? undefined
    : Redacted.value(connection.tokens.refreshToken)
}

export const runEffect = Effect.runPromise

/** Move a stored access token an hour into the past, through the store's compare-and-set. */
export const expireStored = async (store: ConnectionStore.ConnectionStoreShape, id: string) => {
  const record = await runEffect(store.get(id))
  if (record === undefined) throw new Error(`connection ${id} is not in the store`)
  const now = Date.now()
  await runEffect(
    store.update(
      {
        ...record,
        obtainedAt: now - 2 * 3600_000,
        expiresAt: now - 3600_000,
        refreshDueAt: now - 3600_000,
        updatedAt: now,
        version: record.version + 1
      },
      record.version
    )
  )
}

/** Progress lines go to stderr; the table goes to stdout. */
const benchStarted = performance.now()

/** A progress line on stderr, with the seconds since the bench started (to see where the time goes). */
export const progress = (section: string, message: string) => {
  const elapsed = ((performance.now() - benchStarted) / 1000).toFixed(1)
  process.stderr.write(`[bench ${section} +${elapsed}s] ${message}\n`)
}

/** The q-quantile (0..1) of a sample, nearest-rank. */
export const quantile = (sorted: ArrayLike<number>, q: number): number => {
  if (sorted.length === 0) return Number.NaN
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))
  return sorted[rank]!
}

export const median = (values: ReadonlyArray<number>) =>
  quantile(
    [...values].sort((a, b) => a - b),
    0.5
  )

/** Round to `digits` significant decimals for the JSON and the table. */
export const round = (value: number, digits = 2) => {
  const f = 10 ** digits
  return Math.round(value * f) / f
}

/** Run `worker` over `items` with at most `concurrency` in flight. */
export const pool = async <A>(
  items: ReadonlyArray<A>,
  concurrency: number,
  worker: (item: A, index: number) => Promise<void>
) => {
  let next = 0
  await Promise.all(
    Array.from({ length: Math.min(concurrency, items.length) }, async () => {
      while (next < items.length) {
        const index = next++
        await worker(items[index]!, index)
      }
    })
  )
}

/** The machine's CPU counters (all cores, /proc/stat): not-idle and total ticks; undefined off Linux. */
const machineTicks = (): { readonly busy: number; readonly total: number } | undefined => {
  try {
    const fields = readFileSync("/proc/stat", "utf8")
      .split("\n", 1)[0]!
      .trim()
      .split(/\s+/)
      .slice(1, 9)
      .map(Number)
    if (fields.length < 5 || fields.some((n) => !Number.isFinite(n))) return undefined
    const total = fields.reduce((a, b) => a + b, 0)
    // idle and iowait are the time no core had work; steal (time the host gave elsewhere) counts as busy.
    return { busy: total - fields[3]! - fields[4]!, total }
  } catch {
    return undefined
  }
}

/**
 * What a stretch of work cost in CPU: `stop()` gives this thread's CPU time, the whole process's (so
 * the rest of it: the token server's worker thread, V8's helper threads) and the share of the
 * machine's cores that were busy meanwhile (every process: the store servers too), which says
 * whether the machine had any CPU left to give.
 */
export const cpuMeter = () => {
  const thread = process.threadCpuUsage()
  const whole = process.cpuUsage()
  const ticks = machineTicks()
  return () => {
    const t = process.threadCpuUsage(thread)
    const w = process.cpuUsage(whole)
    const end = machineTicks()
    const threadUs = t.user + t.system
    return {
      /** This thread's CPU time, µs. */
      threadUs,
      /** The process's other threads' CPU time, µs. */
      otherThreadsUs: Math.max(0, w.user + w.system - threadUs),
      /** Share of all cores busy (0..1), or undefined where /proc/stat is not there. */
      machineBusy:
        ticks === undefined || end === undefined || end.total === ticks.total
          ? undefined
          : round((end.busy - ticks.busy) / (end.total - ticks.total), 3)
    }
  }
}

/** Delete every Redis key under `prefix` (a section's own key prefix), with the store package's own driver. */
export const dropRedisPrefix = async (url: string, prefix: string) => {
  const require = createRequire(fileURLToPath(import.meta.resolve("@latchkey/store-redis")))
  const { Redis } = require("ioredis") as {
    Redis: new (
      url: string
    ) => {
      scan(cursor: string, ...args: Array<string | number>): Promise<[string, Array<string>]>
      del(...keys: Array<string>): Promise<number>
      quit(): Promise<unknown>
    }
  }
  const client = new Redis(url)
  try {
    let cursor = "0"
    do {
      const [next, keys] = await client.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 1000)
      if (keys.length > 0) await client.del(...keys)
      cursor = next
    } while (cursor !== "0")
  } finally {
    await client.quit()
  }
}
