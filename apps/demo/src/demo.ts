/**
 * `startDemo(...)`: the whole demo in one process. It listens on 127.0.0.1, starts the HeyGen and
 * HighLevel sandboxes and the Example Corp authorization server (oidc-provider) unless real
 * providers are configured, opens the embedded SQLite store with a vault key, starts the background
 * Refresher, and serves the page. `close()` stops all of it.
 */
import { mkdirSync } from "node:fs"
import { createServer, type Server } from "node:http"
import type { AddressInfo } from "node:net"
import { join } from "node:path"
import { createLatchkey, type LatchkeyClient, SqliteStore } from "@latchkey/core"
import { Effect } from "effect"
import { type App, createApp } from "./app.ts"
import { type DemoConfig, readConfig } from "./config.ts"
import { allRows, type Fleet, startFleet } from "./fleet.ts"
import { type Providers, startProviders } from "./providers.ts"
import { USERS } from "./sessions.ts"
import { type LoadedKey, loadVaultKey } from "./vaultKey.ts"

export interface DemoOptions extends Partial<DemoConfig> {
  /** Log lines (default: none; `main.ts` prints them). Never receives a token, code or secret. */
  readonly log?: ((line: string) => void) | undefined
  /** The engine's refresh-ahead window (default 10 minutes; at most half a token's lifetime is used). */
  readonly refreshAheadMs?: number | undefined
  /** The engine's refresh lease (default 5 s: short, so that a crash is recovered within seconds). */
  readonly leaseTtlMs?: number | undefined
  /** How long a crashed holder's refresh is left in doubt before another process resends (default 12 s). */
  readonly inDoubtAfterMs?: number | undefined
  /** The refresh charts' bucket width (default 30 s). */
  readonly chartBucketMs?: number | undefined
  /** How often every process's metrics are read for the charts (default 5 s). */
  readonly metricsSampleMs?: number | undefined
}

export interface Demo {
  /** `http://127.0.0.1:<port>` (or `PUBLIC_URL`). */
  readonly url: string
  readonly port: number
  readonly latchkey: LatchkeyClient
  /** The refresh workers (undefined with `workers: 0`: the web process refreshes). */
  readonly fleet: Fleet | undefined
  readonly providers: Providers
  readonly app: App
  readonly vaultKey: Pick<LoadedKey, "source" | "path">
  /** The SQLite file holding the connections (tokens sealed with the vault key). */
  readonly databasePath: string
  close(): Promise<void>
}

const listen = (server: Server, port: number) =>
  new Promise<number>((resolve, reject) => {
    server.once("error", reject)
    server.listen(port, "127.0.0.1", () => {
      server.off("error", reject)
      resolve((server.address() as AddressInfo).port)
    })
  })

export const startDemo = async (options: DemoOptions = {}): Promise<Demo> => {
  const startedAt = Date.now()
  const config: DemoConfig = { ...readConfig({}), ...stripUndefined(options) }
  const log = options.log ?? (() => {})
  mkdirSync(config.dataDir, { recursive: true })
  const key = loadVaultKey(config.dataDir, config.vaultKey)

  // Listen first: the sandboxes need the redirect URI, and so the port.
  let app: App | undefined
  const pending: Array<() => void> = []
  const server = createServer((req, res) => {
    if (app) return app.handle(req, res)
    pending.push(() => app!.handle(req, res))
  })
  const port = await listen(server, config.port)
  const origin = config.publicUrl ? new URL(config.publicUrl).origin : `http://127.0.0.1:${port}`

  let providers: Providers | undefined
  let latchkey: LatchkeyClient | undefined
  let store: ReturnType<typeof SqliteStore.make> | undefined
  let fleet: Fleet | undefined
  const databasePath = join(config.dataDir, "demo.db")
  try {
    providers = await startProviders(config, origin)
    store = SqliteStore.make({ path: databasePath })
    const refreshAheadMs = options.refreshAheadMs ?? 10 * 60_000
    const engine = {
      refreshAheadMs,
      leaseTtlMs: options.leaseTtlMs ?? 5_000,
      inDoubtAfterMs: options.inDoubtAfterMs ?? 12_000,
      drainTimeoutMs: 10_000
    }
    latchkey = createLatchkey({
      providers: providers.setups.map((s) => s.provider),
      store,
      vault: { keys: [key.key] },
      // The web process refreshes on demand only (an API call, "Refresh now"); the workers run the Refresher.
      config: { ...engine, holderId: `web#${process.pid}` },
      refresher: { intervalMs: config.refresherIntervalMs },
      // Metrics for the refresh charts (Prometheus text through latchkey.metrics(); no port is opened).
      telemetry: { prometheus: true }
    })
    if (config.workers > 0) {
      const st = store
      fleet = startFleet({
        size: config.workers,
        init: {
          databasePath,
          vaultKey: { id: key.key.id, key: String(key.key.key) },
          providers: providers.setups.map((s) => s.settings),
          refresherIntervalMs: config.refresherIntervalMs,
          config: engine
        },
        rows: () =>
          allRows(
            st,
            USERS.map((u) => u.id)
          ),
        log
      })
      await fleet.ready()
    } else {
      await latchkey.refresher.start()
    }
    app = createApp({
      latchkey,
      fleet,
      store,
      vaultKey: key.key,
      setups: providers.setups,
      origin,
      refreshAheadMs,
      startedAt,
      log,
      labelsPath: join(config.dataDir, "labels.json"),
      chartBucketMs: options.chartBucketMs,
      metricsSampleMs: options.metricsSampleMs
    })
    for (const run of pending.splice(0)) run()
    const lk = latchkey
    const fl = fleet
    const ps = providers
    const a = app
    const st = store
    return {
      url: origin,
      port,
      latchkey: lk,
      fleet: fl,
      providers: ps,
      app: a,
      vaultKey: { source: key.source, path: key.path },
      databasePath,
      close: async () => {
        a.close()
        await lk.refresher.stop().catch(() => {})
        await new Promise<void>((resolve) => {
          server.close(() => resolve())
          server.closeAllConnections()
        })
        await fl?.close()
        await lk.close()
        await Effect.runPromise(st.close())
        await ps.close()
      }
    }
  } catch (error) {
    server.closeAllConnections()
    server.close()
    await fleet?.close().catch(() => {})
    await latchkey?.close().catch(() => {})
    if (store) await Effect.runPromise(store.close())
    await providers?.close()
    throw error
  }
}

const stripUndefined = <T extends object>(o: T): Partial<T> =>
  Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>
