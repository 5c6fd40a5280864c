/**
 * One fresh process for bench/scale.ts: a Latchkey instance on the store, `accessToken` of `count`
 * distinct connections (64 at a time), then its RSS. Prints one JSON line.
 */
import { createLatchkey, Provider, SqliteStore } from "@latchkey/core"
import { PostgresStore } from "@latchkey/store-postgres"
import { pool } from "./common.ts"

const {
  store: kind,
  settings,
  count
} = JSON.parse(process.env.LK_SCALE_WORKER ?? "{}") as {
  store: "sqlite" | "postgres"
  settings: Record<string, unknown>
  count: number
}

const provider = Provider.make({
  id: "p",
  name: "Scale bench provider",
  clientId: "client",
  clientSecret: "unused",
  clientAuth: "client_secret_basic",
  endpoints: {
    issuer: "http://127.0.0.1:9",
    authorization: "http://127.0.0.1:9/authorize",
    token: "http://127.0.0.1:9/token"
  },
  redirectUri: "http://127.0.0.1:9/callback",
  identify: async () => ({ accountId: "unused", label: "unused" })
})

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
const ids = Array.from({ length: count }, (_, i) => `c${String(i).padStart(7, "0")}`)
const start = performance.now()
let failed = 0
await pool(ids, 64, async (id) => {
  await lk.accessToken(id).catch(() => {
    failed++
  })
})
const seconds = (performance.now() - start) / 1000
globalThis.gc?.()
const rssAfterMb = mb()
const heapAfterMb = heapMb()
process.stdout.write(
  `${JSON.stringify({ count, failed, rssBeforeMb, rssAfterMb, heapBeforeMb, heapAfterMb, touchesPerSec: Math.round(count / seconds) })}\n`
)
await lk.close()
process.exit(0)
