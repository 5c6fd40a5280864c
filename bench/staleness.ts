/**
 * Staleness of the token cache: after ANOTHER instance replaces or revokes a token, how long (ms) and
 * how many answers this instance still serves the old one, per store.
 *
 * Two Latchkey instances per store, in this process: the reader, calling `accessToken(id)` in a loop
 * (yielding to the event loop every 32 calls, as an app doing I/O between calls would), and the
 * writer on its OWN store object — for SQLite another handle on the file, for PostgreSQL another pool
 * (and LISTEN connection), for Redis another client — so the reader learns of the write only through
 * the store's channel (SQLite `data_version` polling, 100 ms; PostgreSQL LISTEN/NOTIFY; Redis pub/sub).
 * Memory has one store object in one process: the writer shares it (a write announced synchronously).
 *
 * `replace`: the writer stores a new access token (compare-and-set `update`); `revoke`: the writer
 * marks the connection revoked (`Latchkey.markRevoked`). Measured from the moment the writer's write
 * completed: `staleMs` until the reader's first answer that is not the old token, `staleAnswers` the
 * old-token answers after that moment. Trials: `trials` each; median and max reported. The cache's
 * `maxStaleMs` is an hour here, so only the store's announcements can end the staleness.
 */

import { randomUUID } from "node:crypto"
import { mkdtempSync, rmSync } from "node:fs"
import { createRequire } from "node:module"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import {
  Connection,
  type ConnectionStore,
  createLatchkey,
  Latchkey,
  type LatchkeyClient,
  SqliteStore,
  Vault
} from "@latchkey/core"
import { oauthConnection, unreachableProvider } from "@latchkey/core/testing"
import { PostgresStore } from "@latchkey/store-postgres"
import { RedisStore } from "@latchkey/store-redis"
import { Effect } from "effect"
import { dropRedisPrefix, median, progress, round } from "./common.ts"

const POSTGRES_URL = process.env.LATCHKEY_BENCH_POSTGRES_URL ?? "postgres://postgres@127.0.0.1:5432/test"
const REDIS_URL = process.env.LATCHKEY_BENCH_REDIS_URL ?? "redis://127.0.0.1:6379"
const HOUR = 3_600_000

export interface StalenessFigures {
  readonly staleMsMedian: number
  readonly staleMsMax: number
  readonly staleAnswersMedian: number
  readonly staleAnswersMax: number
}
export interface StoreStaleness {
  readonly channel: string
  readonly trials: number
  readonly replace: StalenessFigures
  readonly revoke: StalenessFigures
}
export type StalenessResult = Record<
  "memory" | "sqlite" | "postgres" | "redis",
  StoreStaleness | { error: string }
>

const vaultOptions = { keys: [{ id: "staleness", key: Vault.generateKey() }] }
const vault = Vault.make(vaultOptions)

const provider = () => unreachableProvider("Staleness bench provider")

const connection = (id: string, token: string, version: number): Connection.Connection => {
  const now = Date.now()
  return oauthConnection({
    id,
    ownerId: "staleness",
    providerId: "p",
    accountId: `acct-${id}`,
    label: id,
    accessToken: token,
    refreshToken: `refresh-${randomUUID()}`,
    obtainedAt: now,
    expiresAt: now + HOUR,
    version,
    now
  })
}

interface Pair {
  readonly channel: string
  /**
   * How long the insert's own announcement may take to reach the reader (a trial waits that long
   * before it starts reading, so the insert's notice does not end the loop): one poll for SQLite,
   * a notification round trip for the others.
   */
  readonly settleMs: number
  readonly reader: ConnectionStore.ConnectionStoreShape
  readonly writer: ConnectionStore.ConnectionStoreShape
  readonly close: () => Promise<void>
}

const pairs: Record<keyof StalenessResult, () => Promise<Pair>> = {
  memory: async () => {
    const { ConnectionStore } = await import("@latchkey/core")
    const store = ConnectionStore.makeMemory()
    return {
      channel: "same store object (synchronous)",
      settleMs: 5,
      reader: store,
      writer: store,
      close: async () => {}
    }
  },
  sqlite: async () => {
    const dir = mkdtempSync(join(tmpdir(), "latchkey-bench-staleness-"))
    const path = join(dir, "s.db")
    const reader = SqliteStore.make({ path })
    const writer = SqliteStore.make({ path })
    return {
      channel: "PRAGMA data_version polled every 100 ms",
      settleMs: 120,
      reader,
      writer,
      close: async () => {
        await Effect.runPromise(reader.close())
        await Effect.runPromise(writer.close())
        rmSync(dir, { recursive: true, force: true })
      }
    }
  },
  postgres: async () => {
    const schema = `lk_stale_${randomUUID().replaceAll("-", "").slice(0, 16)}`
    const reader = await PostgresStore.make({ connectionString: POSTGRES_URL, schema, maxConnections: 2 })
    const writer = await PostgresStore.make({ connectionString: POSTGRES_URL, schema, maxConnections: 2 })
    return {
      channel: "LISTEN/NOTIFY (NOTIFY in the writing transaction)",
      settleMs: 30,
      reader,
      writer,
      close: async () => {
        await Effect.runPromise(reader.close())
        await Effect.runPromise(writer.close())
        const Pg = createRequire(fileURLToPath(import.meta.resolve("@latchkey/store-postgres")))("pg") as {
          Pool: new (c: object) => { query(t: string): Promise<unknown>; end(): Promise<void> }
        }
        const pool = new Pg.Pool({ connectionString: POSTGRES_URL, max: 1 })
        await pool.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch(() => {})
        await pool.end()
      }
    }
  },
  redis: async () => {
    const keyPrefix = RedisStore.randomPrefix("lk-stale")
    const reader = RedisStore.make({ url: REDIS_URL, keyPrefix })
    const writer = RedisStore.make({ url: REDIS_URL, keyPrefix })
    await Effect.runPromise(reader.ready)
    return {
      channel: "pub/sub (PUBLISH in the write script)",
      settleMs: 30,
      reader,
      writer,
      close: async () => {
        await Effect.runPromise(reader.close())
        await Effect.runPromise(writer.close())
        // Every key of the prefix: the connections, and the event log their writes appended to.
        await dropRedisPrefix(REDIS_URL, keyPrefix)
      }
    }
  }
}

/** Read in a loop until told to stop; records each answer's time and whether it is `old`. */
const readLoop = (lk: LatchkeyClient, id: string, old: string) => {
  let stopped = false
  const answers: Array<{ at: number; stale: boolean }> = []
  const done = (async () => {
    for (let i = 0; !stopped; i++) {
      const stale = await lk.accessToken(id).then(
        (token) => token === old,
        () => false
      )
      answers.push({ at: performance.now(), stale })
      if (i % 32 === 31) await new Promise((r) => setImmediate(r))
    }
  })()
  return {
    answers,
    stop: async () => {
      stopped = true
      await done
    }
  }
}

const trial = async (
  pair: Pair,
  reader: LatchkeyClient,
  writerLk: LatchkeyClient,
  id: string,
  kind: "replace" | "revoke"
) => {
  await Effect.runPromise(
    pair.writer.insert(Connection.toRecord(vault, connection(id, `old-${id}`, 1), null))
  )
  // Warm: the reader caches the old token.
  for (let i = 0; i < 50; i++) await reader.accessToken(id)
  await new Promise((r) => setTimeout(r, pair.settleMs))
  const loop = readLoop(reader, id, `old-${id}`)
  await new Promise((r) => setTimeout(r, 20))
  if (kind === "replace") {
    await Effect.runPromise(
      pair.writer.update(Connection.toRecord(vault, connection(id, `new-${id}`, 2), null), 1)
    )
  } else {
    await writerLk.run(Latchkey.markRevoked(id))
  }
  const wroteAt = performance.now()
  const deadline = wroteAt + 3_000
  while (performance.now() < deadline) {
    const last = loop.answers.at(-1)
    if (last !== undefined && last.at > wroteAt && !last.stale) break
    await new Promise((r) => setTimeout(r, 5))
  }
  await loop.stop()
  const after = loop.answers.filter((a) => a.at > wroteAt)
  const staleAnswers = after.filter((a) => a.stale).length
  const firstFresh = after.find((a) => !a.stale)
  return { staleMs: firstFresh === undefined ? 3_000 : firstFresh.at - wroteAt, staleAnswers }
}

const figures = (xs: ReadonlyArray<{ staleMs: number; staleAnswers: number }>): StalenessFigures => ({
  staleMsMedian: round(median(xs.map((x) => x.staleMs)), 2),
  staleMsMax: round(Math.max(...xs.map((x) => x.staleMs)), 2),
  staleAnswersMedian: median(xs.map((x) => x.staleAnswers)),
  staleAnswersMax: Math.max(...xs.map((x) => x.staleAnswers))
})

export const benchStaleness = async (quick: boolean): Promise<StalenessResult> => {
  const trials = quick ? 5 : 15
  const out: Partial<StalenessResult> = {}
  for (const name of ["memory", "sqlite", "postgres", "redis"] as const) {
    let pair: Pair | undefined
    try {
      pair = await pairs[name]()
      const options = { providers: [provider()], vault: vaultOptions, tokenCache: { maxStaleMs: HOUR } }
      const reader = createLatchkey({ ...options, store: pair.reader })
      const writerLk = createLatchkey({ ...options, store: pair.writer })
      try {
        const replace: Array<{ staleMs: number; staleAnswers: number }> = []
        const revoke: Array<{ staleMs: number; staleAnswers: number }> = []
        for (let i = 0; i < trials; i++) {
          replace.push(await trial(pair, reader, writerLk, `stale-${2 * i}`, "replace"))
          revoke.push(await trial(pair, reader, writerLk, `stale-${2 * i + 1}`, "revoke"))
        }
        const result = { channel: pair.channel, trials, replace: figures(replace), revoke: figures(revoke) }
        progress(
          "staleness",
          `${name}: replace ${result.replace.staleMsMedian} ms / ${result.replace.staleAnswersMedian} answers (max ${result.replace.staleMsMax} ms / ${result.replace.staleAnswersMax}); revoke ${result.revoke.staleMsMedian} ms / ${result.revoke.staleAnswersMedian} (max ${result.revoke.staleMsMax} / ${result.revoke.staleAnswersMax})`
        )
        out[name] = result
      } finally {
        await reader.close()
        await writerLk.close()
      }
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error)
      progress("staleness", `${name}: failed: ${message}`)
      out[name] = { error: message }
    } finally {
      await pair?.close().catch(() => {})
    }
  }
  return out as StalenessResult
}
