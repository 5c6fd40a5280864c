/**
 * One OS process of the store conformance suite's cross-process checks (`storeConformance` spawns it
 * with `node`). It opens the store under test through the suite's `crossProcess.opener`, builds a
 * Latchkey instance on it, and when the parent writes "go":
 * - `storm` (default): its callers all ask for the same connection's access token at once, and it
 *   prints one JSON line `{ tokens, failures }` (failures are error tags, never token values);
 * - `load`: its callers keep asking for the access tokens of `connectionIds`, round after round, until
 *   SIGTERM; then it prints `{ calls, ok, failures }`.
 * It answers SIGTERM as an app should: `await latchkey.close()` (the drain), then exit 0, printing
 * `{ drained: true }` first. Settings come as JSON in LK_STORE_WORKER; it prints "ready" first.
 */
import { createInterface } from "node:readline"
import { Effect } from "effect"
import type { ConnectionStoreShape } from "../ConnectionStore.ts"
import { createLatchkey } from "../Latchkey.ts"
import * as Provider from "../Provider.ts"

/** How a worker process opens the store: `(await import(module))[export path](settings)`. */
export interface StoreOpener {
  /** An absolute `file:` URL (or a specifier the worker can resolve), e.g. `new URL("../src/index.ts", import.meta.url).href`. */
  readonly module: string
  /** Dotted path of the exported function, e.g. `"PostgresStore.make"`. It may return a Promise. */
  readonly export: string
}

/** What the worker needs to rebuild the provider in another process: JSON only. */
export interface ConformanceProviderSettings {
  readonly clientId: string
  readonly clientSecret?: string | undefined
  readonly clientAuth: Provider.ClientAuth
  readonly endpoints: Provider.Endpoints
  readonly redirectUri: string
  readonly scopes?: ReadonlyArray<string> | undefined
  readonly authorizationParams?: Readonly<Record<string, string>> | undefined
  readonly refreshTokenPolicy?: Provider.RefreshTokenPolicy | undefined
  readonly refreshTokenReuse?: Provider.RefreshTokenReuse | undefined
}

export interface WorkerSettings {
  readonly opener: StoreOpener
  readonly storeSettings: unknown
  readonly providerId: string
  readonly provider: ConformanceProviderSettings
  readonly connectionId: string
  readonly callers: number
  readonly leaseTtlMs: number
  readonly vaultKey: string
  /** The id of `vaultKey` (default "k1"). */
  readonly vaultKeyId?: string | undefined
  /** Hang forever on the refresh request (the parent kills this process while it holds the lease). */
  readonly hang?: boolean | undefined
  /** `storm` (default) or `load` (see the module comment). */
  readonly mode?: "storm" | "load" | undefined
  /** The connections of `load`. */
  readonly connectionIds?: ReadonlyArray<string> | undefined
  /** More engine settings (numbers only). */
  readonly config?: Readonly<Record<string, number>> | undefined
}

export const openWithOpener = async (
  opener: StoreOpener,
  settings: unknown
): Promise<ConnectionStoreShape> => {
  let target: unknown = await import(opener.module)
  for (const part of opener.export.split("."))
    target = (target as Record<string, unknown> | undefined)?.[part]
  if (typeof target !== "function") {
    throw new Error(`store opener: ${opener.export} is not a function exported by ${opener.module}`)
  }
  return (await (target as (settings: unknown) => unknown)(settings)) as ConnectionStoreShape
}

const main = async () => {
  const settings = JSON.parse(process.env.LK_STORE_WORKER ?? "{}") as WorkerSettings
  const store = await openWithOpener(settings.opener, settings.storeSettings)
  const refreshUrl = settings.provider.endpoints.refresh ?? settings.provider.endpoints.token
  const urlOf = (input: string | URL | Request) =>
    typeof input === "string" ? input : input instanceof URL ? input.href : input.url
  const hangingFetch: typeof fetch = (input, init) =>
    urlOf(input) === refreshUrl ? new Promise<Response>(() => {}) : fetch(input, init)
  const provider = Provider.make({
    id: settings.providerId,
    name: "Store conformance",
    ...settings.provider,
    identify: async () => {
      throw new Error("the conformance worker never links an account")
    }
  })
  const latchkey = createLatchkey({
    providers: [provider],
    store,
    vault: { keys: [{ id: settings.vaultKeyId ?? "k1", key: settings.vaultKey }] },
    config: {
      leaseTtlMs: settings.leaseTtlMs,
      baseBackoffMs: 5,
      maxBackoffMs: 50,
      ...settings.config,
      ...(settings.hang ? { fetch: hangingFetch } : {})
    }
  })
  const tagOf = (e: unknown) => {
    const error = e as { _tag?: string; reason?: string } | undefined
    return `${error?._tag ?? "unknown error"}${error?.reason ? `:${error.reason}` : ""}`
  }
  let stopping = false
  let loadDone: Promise<void> = Promise.resolve()
  const shutdown = async (code: number) => {
    await latchkey.close()
    if (store.close) await Effect.runPromise(store.close())
    process.exit(code)
  }
  // What an app adds for rolling restarts: drain on SIGTERM, then exit.
  process.once("SIGTERM", () => {
    stopping = true
    void latchkey
      .close()
      .then(() => loadDone)
      .then(() => {
        process.stdout.write(`${JSON.stringify({ drained: true })}\n`)
        return shutdown(0)
      })
  })
  const lines = createInterface({ input: process.stdin })
  process.stdout.write("ready\n")
  for await (const line of lines) {
    if (line.trim() !== "go") continue
    if (settings.mode === "load") {
      const ids = settings.connectionIds ?? [settings.connectionId]
      const failures: Record<string, number> = {}
      let calls = 0
      let ok = 0
      loadDone = Promise.all(
        Array.from({ length: settings.callers }, async (_, caller) => {
          for (let round = 0; !stopping; round++) {
            const id = ids[(caller + round) % ids.length]!
            calls++
            try {
              await latchkey.accessToken(id)
              ok++
            } catch (e) {
              const tag = tagOf(e)
              failures[tag] = (failures[tag] ?? 0) + 1
            }
            await new Promise((r) => setTimeout(r, 20))
          }
        })
      ).then(() => {
        process.stdout.write(`${JSON.stringify({ calls, ok, failures })}\n`)
      })
      continue
    }
    const results = await Promise.allSettled(
      Array.from({ length: settings.callers }, () => latchkey.accessToken(settings.connectionId))
    )
    const tokens = new Set<string>()
    const failures: Array<string> = []
    for (const r of results) {
      if (r.status === "fulfilled") tokens.add(r.value)
      else failures.push(String((r.reason as { _tag?: string })?._tag ?? "unknown error"))
    }
    process.stdout.write(`${JSON.stringify({ tokens: [...tokens], failures })}\n`)
    if (!stopping) await shutdown(0)
  }
}

if (process.env.LK_STORE_WORKER !== undefined) {
  main().catch((error: unknown) => {
    process.stderr.write(`store conformance worker failed: ${(error as Error)?.message ?? String(error)}\n`)
    process.exit(1)
  })
}
