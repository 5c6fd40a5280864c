/**
 * One fresh process for bench/scale.ts: a Latchkey instance on the store, `accessToken` of distinct
 * connections (`concurrency` at a time) up to each of `counts` in turn (cumulative: 100k, then on to
 * 1M), and its RSS and heap after a GC at each. Prints one JSON line per count.
 */
import { createLatchkey, SqliteStore } from "@latchkey/core"
import { unreachableProvider } from "@latchkey/core/testing"
import { PostgresStore } from "@latchkey/store-postgres"
import { pool } from "./common.ts"

const {
  store: kind,
  settings,
  counts,
  concurrency
} = JSON.parse(process.env.LK_SCALE_WORKER ?? "{}") as {
  store: "sqlite" | "postgres"
  settings: Record<string, unknown>
  counts: ReadonlyArray<number>
  concurrency: number
}

const provider = unreachableProvider("Scale bench provider")

const store =
  kind === "sqlite"
    ? SqliteStore.make(settings as unknown as SqliteStore.SqliteStoreOptions)
    : await PostgresStore.make(settings as unknown as PostgresStore.PostgresStoreOptions)
const lk = createLatchkey({ providers: [provider], store, vault: { plaintext: true } })
const mb = () => Math.round((process.memoryUsage().rss / 1024 / 1024) * 10) / 10
const heapMb = () => Math.round((process.memoryUsage().heapUsed / 1024 / 1024) * 10) / 10
await lk.accessToken("c0000000")
globalThis.gc?.()
const rssBeforeMb = mb()
const heapBeforeMb = heapMb()
const idOf = (i: number) => `c${String(i).padStart(7, "0")}`
let done = 0
let failed = 0
let seconds = 0
for (const count of counts) {
  const ids = Array.from({ length: count - done }, (_, i) => idOf(done + i))
  const start = performance.now()
  await pool(ids, concurrency, async (id) => {
    await lk.accessToken(id).catch(() => {
      failed++
    })
  })
  seconds += (performance.now() - start) / 1000
  done = count
  globalThis.gc?.()
  const rssAfterMb = mb()
  const heapAfterMb = heapMb()
  process.stdout.write(
    `${JSON.stringify({ count, failed, rssBeforeMb, rssAfterMb, heapBeforeMb, heapAfterMb, touchesPerSec: Math.round(count / seconds) })}\n`
  )
}
await lk.close()
process.exit(0)
