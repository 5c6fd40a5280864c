/**
 * One refresh worker of the demo's fleet: an OS process (forked by `fleet.ts`) that opens the same
 * SQLite file as the web process and every other worker, runs Latchkey's background Refresher, and
 * reports what its engine does (`latchkey.on`) to the parent over the IPC channel. Its settings —
 * the providers, the vault key, the engine settings — arrive in the first IPC message, never in
 * the environment or argv. It answers SIGTERM as an app should: `await latchkey.close()` (refreshes
 * in flight finish their write), then exit 0. Its engine keeps metrics (`telemetry: { prometheus: true }`)
 * and answers the parent's `metrics` requests with their Prometheus text, for the page's charts.
 */
import { createLatchkey, SqliteStore } from "@latchkey/core"
import { Effect } from "effect"
import { type ProviderSettings, providerFromSettings } from "./providers.ts"

export interface WorkerInit {
  readonly type: "init"
  /** e.g. `worker-2`: the fleet slot. */
  readonly name: string
  readonly databasePath: string
  readonly vaultKey: { readonly id: string; readonly key: string }
  readonly providers: ReadonlyArray<ProviderSettings>
  readonly refresherIntervalMs: number
  readonly config: {
    readonly refreshAheadMs: number
    readonly leaseTtlMs: number
    readonly inDoubtAfterMs: number
    readonly drainTimeoutMs: number
  }
}

/** What a worker tells its parent. Events carry ids, times and reasons, never a token. */
export type WorkerMessage =
  | { readonly type: "ready"; readonly holderId: string }
  | { readonly type: "event"; readonly event: unknown }
  | { readonly type: "drained"; readonly ms: number }
  | { readonly type: "metrics"; readonly id: number; readonly text: string }

/** What the parent asks a running worker. */
export type WorkerRequest = { readonly type: "metrics"; readonly id: number }

/** Resolves once the message is handed to the channel (so that an exit right after does not drop it). */
const send = (message: WorkerMessage) =>
  new Promise<void>((resolve) => {
    if (!process.connected || process.send === undefined) return resolve()
    process.send(message, undefined, {}, () => resolve())
  })

const start = async (init: WorkerInit) => {
  const store = SqliteStore.make({ path: init.databasePath })
  // The holder id is what the refresh journal records: the page maps it back to this worker.
  const holderId = `${init.name}#${process.pid}`
  const latchkey = createLatchkey({
    providers: init.providers.map(providerFromSettings),
    store,
    vault: { keys: [init.vaultKey] },
    config: { ...init.config, holderId },
    refresher: { intervalMs: init.refresherIntervalMs },
    telemetry: { prometheus: true }
  })
  latchkey.on((event) => void send({ type: "event", event }))
  let stopping = false
  const stop = async (code: number) => {
    if (stopping) return
    stopping = true
    const started = Date.now()
    await latchkey.close().catch(() => {})
    await send({ type: "drained", ms: Date.now() - started })
    await Effect.runPromise(store.close()).catch(() => {})
    process.exit(code)
  }
  // A rolling restart: drain, then exit.
  process.once("SIGTERM", () => void stop(0))
  // The web process went away: nobody to report to.
  process.once("disconnect", () => void stop(0))
  process.on("message", (message: WorkerRequest) => {
    if (message?.type !== "metrics" || stopping) return
    latchkey
      .metrics()
      .then((text) => send({ type: "metrics", id: message.id, text }))
      .catch(() => send({ type: "metrics", id: message.id, text: "" }))
  })
  await latchkey.refresher.start()
  await send({ type: "ready", holderId })
}

process.once("message", (message: WorkerInit) => {
  if (message?.type !== "init") process.exit(2)
  start(message).catch((error: unknown) => {
    console.error(`[${message.name}] cannot start:`, (error as Error)?.message ?? error)
    process.exit(1)
  })
})
