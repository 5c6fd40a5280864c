/**
 * Scale: SQLite and PostgreSQL holding 10k, 100k and 1M connections (`--quick`: 10k and 100k).
 *
 * - Rows are written in bulk by the raw driver (one transaction per 50,000 for SQLite, one
 *   `INSERT ... SELECT ... generate_series` for PostgreSQL): 10 connections per owner, 1% due, tokens
 *   in the vault's plain form (`vault.plaintext`: the AES cost is the hot path's business, not this
 *   section's).
 * - Latency at each size, through the store (`Effect.runPromise`), awaited one at a time: `listDue`
 *   (limit 100; median of 20), `get` of a random id and `listByOwner` of a random owner (median of 500
 *   each), in µs.
 * - Memory: a FRESH process per store (`scale-worker.ts`; the two stores' processes run side by side,
 *   after every latency figure was taken) calls `accessToken` on distinct connections (64 at a time)
 *   and reports its RSS and heap (with `--expose-gc`, after a
 *   GC) before, after the first 100k and after 1M (`--quick`: 10k and 100k), in one process: the
 *   decoded-connection cache and the token cache are LRUs, so the heap must not grow with N.
 */
import { spawn } from "node:child_process"
import { randomUUID } from "node:crypto"
import { mkdtempSync, rmSync } from "node:fs"
import { createRequire } from "node:module"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { DatabaseSync } from "node:sqlite"
import { fileURLToPath } from "node:url"
import { type ConnectionStore, SqliteStore } from "@latchkey/core"
import { sampleRecord } from "@latchkey/core/testing"
import { PostgresStore } from "@latchkey/store-postgres"
import { Effect } from "effect"
import { median, progress, round } from "./common.ts"

const POSTGRES_URL = process.env.LATCHKEY_BENCH_POSTGRES_URL ?? "postgres://postgres@127.0.0.1:5432/test"
const workerFile = fileURLToPath(new URL("./scale-worker.ts", import.meta.url))

export interface ScaleLatency {
  readonly connections: number
  readonly listDueUs: number
  readonly getUs: number
  readonly listByOwnerUs: number
}
export interface ScaleMemory {
  readonly touched: number
  readonly rssBeforeMb: number
  readonly rssAfterMb: number
  readonly heapBeforeMb: number
  readonly heapAfterMb: number
  readonly touchesPerSec: number
  readonly failed: number
}
export interface ScaleStoreResult {
  readonly latency: ReadonlyArray<ScaleLatency>
  readonly memory: ReadonlyArray<ScaleMemory>
}
export type ScaleResult = {
  readonly sizes: ReadonlyArray<number>
  readonly touched: ReadonlyArray<number>
  readonly quick: boolean
} & Record<"sqlite" | "postgres", ScaleStoreResult | { error: string }>

const idOf = (i: number) => `c${String(i).padStart(7, "0")}`

/** The record of connection i as JSON text, from one template (placeholders replaced). */
const template = (() => {
  const now = Date.now()
  const record = sampleRecord("__ID__", {
    ownerId: "__OWNER__",
    accountId: "__ID__",
    accessToken: "plain.access-token-for-the-scale-bench",
    refreshToken: "plain.refresh-token-for-the-scale-bench",
    extras: "plain.{}",
    obtainedAt: now,
    expiresAt: now + 10 * 365 * 24 * 3_600_000,
    createdAt: now,
    updatedAt: now,
    refreshDueAt: 0
  })
  return JSON.stringify(record).replace('"refreshDueAt":0', '"refreshDueAt":__DUE__')
})()
const dueOf = (i: number, now: number) => (i % 100 === 0 ? now - 60_000 - i : now + 3_600_000 + i)
const ownerOf = (i: number) => `o${String(Math.floor(i / 10)).padStart(6, "0")}`

const time = async (n: number, f: (i: number) => Promise<unknown>) => {
  const samples: Array<number> = []
  for (let i = 0; i < n; i++) {
    const t = performance.now()
    await f(i)
    samples.push((performance.now() - t) * 1000)
  }
  return round(median(samples), 1)
}

const measure = async (store: ConnectionStore.ConnectionStoreShape, size: number): Promise<ScaleLatency> => {
  const run = Effect.runPromise
  const rand = () => Math.floor(Math.random() * size)
  await time(20, () => run(store.get(idOf(rand()))))
  return {
    connections: size,
    listDueUs: await time(20, () => run(store.listDue(Date.now(), 100))),
    getUs: await time(500, () => run(store.get(idOf(rand())))),
    listByOwnerUs: await time(500, () => run(store.listByOwner(ownerOf(rand()))))
  }
}

/**
 * A fresh process touching connections up to each of `counts` (cumulative, one process: its RSS after
 * 100k and after 1M), `concurrency` at a time.
 */
const touch = (
  store: "sqlite" | "postgres",
  settings: Record<string, unknown>,
  counts: ReadonlyArray<number>,
  concurrency: number
) =>
  new Promise<ReadonlyArray<ScaleMemory>>((resolve, reject) => {
    const child = spawn(process.execPath, ["--expose-gc", workerFile], {
      env: { ...process.env, LK_SCALE_WORKER: JSON.stringify({ store, settings, counts, concurrency }) },
      stdio: ["ignore", "pipe", "pipe"]
    })
    let out = ""
    let err = ""
    child.stdout.on("data", (d) => {
      out += d
    })
    child.stderr.on("data", (d) => {
      err += d
    })
    child.on("exit", (code) => {
      const lines = out.split("\n").filter((l) => l.startsWith("{"))
      if (code !== 0 || lines.length !== counts.length)
        reject(new Error(`scale worker exited ${code}: ${err.slice(-400)}`))
      else {
        resolve(
          lines.map((line) => {
            const r = JSON.parse(line) as {
              count: number
              failed: number
              rssBeforeMb: number
              rssAfterMb: number
              heapBeforeMb: number
              heapAfterMb: number
              touchesPerSec: number
            }
            return {
              touched: r.count,
              rssBeforeMb: r.rssBeforeMb,
              rssAfterMb: r.rssAfterMb,
              heapBeforeMb: r.heapBeforeMb,
              heapAfterMb: r.heapAfterMb,
              touchesPerSec: r.touchesPerSec,
              failed: r.failed
            }
          })
        )
      }
    })
  })

/**
 * One store's part: `latency` (seeded and measured at once), then `touch` (its fresh process) and
 * `close`. benchScale measures every store's latency first, alone on the machine, then runs the
 * stores' touch processes side by side.
 */
interface ScaleStore {
  readonly latency: ReadonlyArray<ScaleLatency>
  readonly touch: () => Promise<ReadonlyArray<ScaleMemory>>
  readonly close: () => Promise<void>
}

const scaleSqlite = async (
  sizes: ReadonlyArray<number>,
  touched: ReadonlyArray<number>
): Promise<ScaleStore> => {
  const dir = mkdtempSync(join(tmpdir(), "latchkey-bench-scale-"))
  const path = join(dir, "scale.db")
  const store = SqliteStore.make({ path })
  const db = new DatabaseSync(path)
  const close = async () => {
    db.close()
    await Effect.runPromise(store.close())
    rmSync(dir, { recursive: true, force: true })
  }
  try {
    const insert = db.prepare(
      `INSERT INTO latchkey_connections (id, owner_id, provider_id, account_id, version, status, refresh_due_at, created_at, record)
       VALUES (?, ?, 'p', ?, 1, 'active', ?, ?, ?)`
    )
    const now = Date.now()
    let have = 0
    const latency: Array<ScaleLatency> = []
    for (const size of sizes) {
      while (have < size) {
        const end = Math.min(size, have + 50_000)
        db.exec("BEGIN")
        for (let i = have; i < end; i++) {
          const id = idOf(i)
          const due = dueOf(i, now)
          insert.run(
            id,
            ownerOf(i),
            id,
            due,
            now,
            template.replaceAll("__ID__", id).replace("__OWNER__", ownerOf(i)).replace("__DUE__", String(due))
          )
        }
        db.exec("COMMIT")
        have = end
      }
      latency.push(await measure(store, size))
      progress("scale", `sqlite ${size}: ${JSON.stringify(latency.at(-1))}`)
    }
    return { latency, touch: () => touch("sqlite", { path }, touched, 64), close }
  } catch (error) {
    await close()
    throw error
  }
}

const scalePostgres = async (
  sizes: ReadonlyArray<number>,
  touched: ReadonlyArray<number>
): Promise<ScaleStore> => {
  const schema = `lk_scale_${randomUUID().replaceAll("-", "").slice(0, 16)}`
  const settings = { connectionString: POSTGRES_URL, schema, maxConnections: 8 }
  const store = await PostgresStore.make(settings)
  const Pg = createRequire(fileURLToPath(import.meta.resolve("@latchkey/store-postgres")))("pg") as {
    Pool: new (c: object) => { query(t: string, v?: Array<unknown>): Promise<unknown>; end(): Promise<void> }
  }
  const admin = new Pg.Pool({ connectionString: POSTGRES_URL, max: 1 })
  const close = async () => {
    await Effect.runPromise(store.close())
    await admin.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch(() => {})
    await admin.end()
  }
  try {
    const now = Date.now()
    let have = 0
    const latency: Array<ScaleLatency> = []
    for (const size of sizes) {
      // One statement per chunk: ids, owners and due times computed by the server.
      while (have < size) {
        const end = Math.min(size, have + 200_000)
        await admin.query(
          `INSERT INTO "${schema}".latchkey_connections (id, owner_id, provider_id, account_id, version, status, refresh_due_at, created_at, record)
           SELECT id, owner, 'p', id, 1, 'active', due, $2, replace(replace(replace($1, '__ID__', id), '__OWNER__', owner), '__DUE__', due::text)
           FROM (SELECT 'c' || lpad(i::text, 7, '0') AS id, 'o' || lpad((i / 10)::text, 6, '0') AS owner,
                        CASE WHEN i % 100 = 0 THEN $2::bigint - 60000 - i ELSE $2::bigint + 3600000 + i END AS due
                 FROM generate_series($3::int, $4::int) AS i) AS g`,
          [template, now, have, end - 1]
        )
        have = end
      }
      await admin.query(`ANALYZE "${schema}".latchkey_connections`)
      latency.push(await measure(store, size))
      progress("scale", `postgres ${size}: ${JSON.stringify(latency.at(-1))}`)
    }
    // 64 in flight on the store's pool of 8: more (256 on 32) was slower here, CPU-bound on 2 cores.
    return { latency, touch: () => touch("postgres", settings, touched, 64), close }
  } catch (error) {
    await close()
    throw error
  }
}

export const benchScale = async (quick: boolean): Promise<ScaleResult> => {
  const sizes = quick ? [10_000, 100_000] : [10_000, 100_000, 1_000_000]
  const touched = quick ? [10_000, 100_000] : [100_000, 1_000_000]
  const out: Record<string, unknown> = { sizes, touched, quick }
  const failed = (name: string, error: unknown) => {
    const message = error instanceof Error ? error.message : String(error)
    progress("scale", `${name}: failed: ${message}`)
    out[name] = { error: message }
  }
  // Latency first, one store at a time, alone on the machine.
  const opened: Array<readonly ["sqlite" | "postgres", ScaleStore]> = []
  for (const [name, f] of [
    ["sqlite", scaleSqlite],
    ["postgres", scalePostgres]
  ] as const) {
    try {
      opened.push([name, await f(sizes, touched)])
    } catch (error) {
      failed(name, error)
    }
  }
  // Then the touch processes side by side: each reports its own RSS and heap, which the other does
  // not change; their touchesPerSec are those of a shared machine.
  progress(
    "scale",
    `touching ${touched.join(", then ")} connections: ${opened.map(([n]) => n).join(" and ")} at once`
  )
  await Promise.all(
    opened.map(async ([name, s]) => {
      try {
        const memory = await s.touch()
        for (const m of memory) progress("scale", `${name} touched ${m.touched}: ${JSON.stringify(m)}`)
        out[name] = { latency: s.latency, memory }
      } catch (error) {
        failed(name, error)
      } finally {
        await s.close().catch(() => {})
      }
    })
  )
  return out as ScaleResult
}
