/**
 * What the store conformance suites share: the options a store passes, and the worker processes of
 * the cross-process checks (`storeConformanceWorker.ts`).
 */
import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process"
import { createInterface } from "node:readline"
import { fileURLToPath } from "node:url"
import type { ConnectionStoreShape } from "../ConnectionStore.ts"
import * as Provider from "../Provider.ts"
import type { ConformanceProviderSettings, StoreOpener, WorkerSettings } from "./storeConformanceWorker.ts"

/** A store the suite opened: fresh and empty, with its own file, schema or key prefix. */
export interface OpenedStore {
  readonly store: ConnectionStoreShape
  /** Close this handle and delete what it stored. */
  readonly close: () => Promise<void>
  /** JSON-safe settings that `crossProcess.opener` turns into another handle on the same data. */
  readonly settings?: unknown
  /** Everything the backend holds for this store, as text: checked for plaintext tokens. */
  readonly raw?: (() => Promise<string>) | undefined
}

/** A token server with rotating single-use refresh tokens, for the cross-process checks. */
export interface ConformanceTokenServer {
  /** How to reach it (JSON: worker processes rebuild the provider from it). */
  readonly provider: ConformanceProviderSettings
  /** How the provider identifies the account after the code exchange. */
  readonly identify: Provider.ProviderDefinition["identify"]
  /** Act as a user approving `authorizeUrl` as `login`; resolve the callback URL. */
  readonly approve: (authorizeUrl: string, login: string) => Promise<string>
  /** Refresh-token grants the server has received so far (counted by the server itself). */
  readonly refreshCount: () => number | Promise<number>
  /** Refresh-token grants it refused so far (e.g. a reused refresh token), when it counts them. */
  readonly refreshErrors?: (() => number | Promise<number>) | undefined
  readonly close: () => Promise<void>
}

export interface StoreConformanceOptions {
  readonly name: string
  /** Open a fresh, empty store. */
  readonly open: () => Promise<OpenedStore>
  /**
   * For stores with row locks (PostgreSQL): lock a connection's row from another session, as a
   * stuck transaction would, until `release`. The fault suite then holds it across a refresh's write.
   */
  readonly lockRow?:
    | ((opened: OpenedStore, connectionId: string) => Promise<{ readonly release: () => Promise<void> }>)
    | undefined
  /**
   * Write `text` as the stored record of connection `connectionId` (which exists) straight through
   * the driver, bypassing the store — as a bug, a manual edit or a damaged backup would. The suite
   * then checks that reading it is `StoreError("corrupt")`, not retryable, and never a made-up record.
   * Every store that keeps records as text provides it (the memory store keeps objects: nothing to corrupt).
   */
  readonly plantRecord?:
    | ((opened: OpenedStore, connectionId: string, text: string) => Promise<void>)
    | undefined
  /** For durable stores that several processes share; omit for a one-process store (memory). */
  readonly crossProcess?:
    | {
        /** How a worker process (and a reopen) gets a handle from `OpenedStore.settings`. */
        readonly opener: StoreOpener
        /** Started once for the cross-process checks, closed after them. */
        readonly tokenServer: () => Promise<ConformanceTokenServer>
        /** OS processes in the storm (default 4). */
        readonly processes?: number | undefined
        /** Concurrent callers per process (default 50). */
        readonly callers?: number | undefined
        /**
         * The store's channel leaves quiet writes out (`UpdateOptions.quiet`): PostgreSQL's NOTIFY,
         * Redis pub/sub. SQLite's `data_version` moves on every write and cannot.
         */
        readonly quietWrites?: boolean | undefined
      }
    | undefined
}

export interface WorkerHandle {
  readonly child: ChildProcessWithoutNullStreams
  readonly ready: Promise<void>
  /** A storm's `{ tokens, failures }` (also resolves with a load's `{ calls, ok, failures }`). */
  readonly result: Promise<{ tokens: Array<string>; failures: Array<string> }>
  /** How the process ended (exit code, or the signal that ended it). */
  readonly exited: Promise<{ readonly code: number | null; readonly signal: NodeJS.Signals | null }>
  /** Every JSON line the worker printed so far. */
  readonly lines: Array<Record<string, unknown>>
}

const workerFile = fileURLToPath(
  new URL(`./storeConformanceWorker${import.meta.url.endsWith(".ts") ? ".ts" : ".js"}`, import.meta.url)
)

/**
 * Spawn the conformance worker: one OS process with one Latchkey instance on the store described by
 * `settings`. It prints "ready"; write "go\n" to its stdin and `result` resolves with its callers' tokens.
 */
export const startStoreWorker = (settings: WorkerSettings): WorkerHandle => {
  const child = spawn(process.execPath, [workerFile], {
    env: { ...process.env, LK_STORE_WORKER: JSON.stringify(settings) },
    stdio: ["pipe", "pipe", "pipe"]
  })
  let stderr = ""
  child.stderr.on("data", (d) => {
    stderr += d
  })
  const lines = createInterface({ input: child.stdout })
  const printed: Array<Record<string, unknown>> = []
  let onReady: () => void = () => {}
  let onFail: (e: Error) => void = () => {}
  const ready = new Promise<void>((resolve, reject) => {
    onReady = resolve
    onFail = reject
  })
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.on("exit", (code, signal) => resolve({ code, signal }))
  })
  const result = new Promise<{ tokens: Array<string>; failures: Array<string> }>((resolve, reject) => {
    lines.on("line", (line) => {
      if (line === "ready") onReady()
      else if (line.startsWith("{")) {
        const parsed = JSON.parse(line) as Record<string, unknown>
        printed.push(parsed)
        if ("tokens" in parsed || "calls" in parsed) resolve(parsed as never)
      }
    })
    child.on("exit", (code, signal) => {
      const error = new Error(`store worker exited (${code ?? signal}): ${stderr.slice(-800)}`)
      onFail(error)
      reject(error)
    })
  })
  ready.catch(() => {})
  result.catch(() => {})
  return { child, ready, result, exited, lines: printed }
}

/** Open a store for one test and always close it. */
export const withStore = async (
  options: StoreConformanceOptions,
  f: (store: ConnectionStoreShape, opened: OpenedStore) => Promise<void>
) => {
  const opened = await options.open()
  try {
    await f(opened.store, opened)
  } finally {
    await opened.close()
  }
}

/**
 * A provider nobody answers for (nothing listens on port 9): a refresh through it fails fast. `name`
 * (or `options.name`), `options.id` (default "p") and `options.apiBaseUrl` (for the ApiClient) as given.
 */
export const unreachableProvider = (
  nameOrOptions: string | { readonly id?: string; readonly name?: string; readonly apiBaseUrl?: string } = {}
) => {
  const options = typeof nameOrOptions === "string" ? { name: nameOrOptions } : nameOrOptions
  return Provider.make({
    id: options.id ?? "p",
    name: options.name ?? "Store suite provider",
    clientId: "client",
    clientSecret: "unused-secret",
    clientAuth: "client_secret_basic",
    endpoints: {
      issuer: "http://127.0.0.1:9",
      authorization: "http://127.0.0.1:9/authorize",
      token: "http://127.0.0.1:9/token"
    },
    redirectUri: "http://127.0.0.1:9/callback",
    ...(options.apiBaseUrl === undefined ? {} : { apiBaseUrl: options.apiBaseUrl }),
    identify: async () => ({ accountId: "unused", label: "unused" })
  })
}

/**
 * What a store's `watch` announces, recorded as strings (`Live`, `Lost`, `Changed:<id>`), and
 * `waitFor(what, from)`: whether it was announced (at or after index `from`) within 5 s.
 */
export const watchRecorder = (store: ConnectionStoreShape) => {
  if (store.watch === undefined) throw new Error("this store has no watch")
  const seen: Array<string> = []
  const stop = store.watch((change) =>
    seen.push(change._tag === "Changed" ? `Changed:${change.id}` : change._tag)
  )
  const waitFor = async (what: string, from = 0) => {
    for (let i = 0; i < 250 && !seen.slice(from).includes(what); i++)
      await new Promise((r) => setTimeout(r, 20))
    return seen.slice(from).includes(what)
  }
  return { seen, waitFor, stop }
}
