/**
 * One fleet instance (an OS process) for bench/fleet.ts: a Latchkey instance on the shared store
 * (PostgreSQL or Redis) whose Refresher sweeps until nothing is due. It lives for the whole section,
 * as a long-running instance does: it warms once, prints "ready", then for each line "go <rate>" on
 * stdin (`<rate>`: the Refresher's per-provider rate per second, or "none") sweeps until nothing is
 * due and prints one JSON line of what it did in that run: refreshes, connections it claimed, lease
 * denials (the lease of a connection another instance was refreshing), its CPU time. "exit" ends it.
 */
import diagnostics from "node:diagnostics_channel"
import { createInterface } from "node:readline"
import { type ConnectionStore, createLatchkey } from "@latchkey/core"
import { Generic } from "@latchkey/provider-generic"
import { PostgresStore } from "@latchkey/store-postgres"
import { RedisStore } from "@latchkey/store-redis"
import { Effect } from "effect"
import { refresherRound } from "./engine.ts"

export interface FleetWorkerSettings {
  readonly store: "postgres" | "redis"
  readonly storeSettings: Record<string, unknown>
  /** Another namespace of the same server with due connections to sweep before "ready" (warm-up). */
  readonly warmStoreSettings?: Record<string, unknown> | undefined
  readonly provider: {
    readonly id: string
    readonly clientId: string
    readonly clientSecret: string
    readonly endpoints: Record<string, string>
    readonly redirectUri: string
    readonly scopes: ReadonlyArray<string>
  }
  readonly vaultKeyId: string
  readonly vaultKey: string
  readonly concurrency: number
  /** Refreshes of the engine alone (memory store, in-process answers) before the real warm-up. */
  readonly engineWarmUp?: number | undefined
}

const settings = JSON.parse(process.env.LK_FLEET_WORKER ?? "{}") as FleetWorkerSettings

const open = async (storeSettings: Record<string, unknown>): Promise<ConnectionStore.ConnectionStoreShape> =>
  settings.store === "postgres"
    ? await PostgresStore.make(storeSettings as unknown as PostgresStore.PostgresStoreOptions)
    : RedisStore.make(storeSettings as unknown as RedisStore.RedisStoreOptions)

const main = async () => {
  const inner = await open(settings.storeSettings)
  let denials = 0
  let claimed = 0
  const store: ConnectionStore.ConnectionStoreShape = {
    ...inner,
    acquireLease: (id, holder, ttl) =>
      inner.acquireLease(id, holder, ttl).pipe(
        Effect.tap((lease) =>
          Effect.sync(() => {
            if (lease === undefined) denials++
          })
        )
      ),
    ...(inner.claimDue === undefined
      ? {}
      : {
          claimDue: (now: number, limit: number, holder: string, ttl: number) =>
            inner.claimDue!(now, limit, holder, ttl).pipe(
              Effect.tap((rows) =>
                Effect.sync(() => {
                  claimed += rows.length
                })
              )
            )
        })
  }
  const provider = Generic.provider({
    id: settings.provider.id,
    name: "Example Corp",
    clientId: settings.provider.clientId,
    clientSecret: settings.provider.clientSecret,
    auth: "client_secret_basic",
    redirectUri: settings.provider.redirectUri,
    endpoints: settings.provider.endpoints as never,
    scopes: [...settings.provider.scopes]
  })
  // When each refresh request left this process (ms since the epoch, to compare across processes):
  // what the rate budget paces, before the network and the server's own queue. Noted from Node's
  // HTTP client as the request starts (the only token-endpoint requests of a run are refreshes),
  // so that the engine keeps its own transport: a `fetch` of ours would replace it.
  let departures: Array<number> = []
  const tokenPath = new URL(String((settings.provider.endpoints as { token: string }).token)).pathname
  diagnostics.subscribe("http.client.request.start", (message) => {
    const request = (message as { request?: { path?: string } }).request
    if (request?.path === tokenPath) departures.push(performance.timeOrigin + performance.now())
  })
  const instance = (on: ConnectionStore.ConnectionStoreShape, ratePerSecond = Number.POSITIVE_INFINITY) =>
    createLatchkey({
      providers: [provider],
      store: on,
      vault: { keys: [{ id: settings.vaultKeyId, key: settings.vaultKey }] },
      refresher: {
        concurrency: settings.concurrency,
        ratePerSecond,
        batchSize: 100_000
      }
    })
  // Warm before "go", as a long-running instance is: the refresh path compiled (sweeps of due
  // connections in another namespace of the same server, through the same code), the runtime
  // built, the store's pool connected.
  if (settings.engineWarmUp !== undefined && settings.engineWarmUp > 0) {
    await refresherRound(settings.concurrency, settings.engineWarmUp)
  }
  if (settings.warmStoreSettings !== undefined) {
    const warmStore = await open(settings.warmStoreSettings)
    const warm = instance(warmStore)
    for (let i = 0; i < 10; i++) {
      const report = await warm.refresher.sweep()
      if (report.due === 0) break
    }
    await warm.close()
    await Effect.runPromise(warmStore.close?.() ?? Effect.void)
  }
  // One instance per rate asked for (the runs without a rate share one: what they compiled stays).
  const instances = new Map<number, ReturnType<typeof instance>>()
  const instanceAt = async (rate: number) => {
    let lk = instances.get(rate)
    if (lk === undefined) {
      lk = instance(store, rate)
      await lk.refresher.isRunning()
      instances.set(rate, lk)
    }
    return lk
  }
  await instanceAt(Number.POSITIVE_INFINITY)
  await Effect.runPromise(Effect.ignore(inner.get("warm-up")))
  process.stdout.write("ready\n")
  const lines = createInterface({ input: process.stdin })
  for await (const line of lines) {
    if (line === "exit") break
    if (!line.startsWith("go")) continue
    const asked = line.slice(2).trim()
    const lk = await instanceAt(asked === "" || asked === "none" ? Number.POSITIVE_INFINITY : Number(asked))
    denials = 0
    claimed = 0
    departures = []
    const start = performance.now()
    const cpuStart = process.cpuUsage()
    let refreshed = 0
    let failed = 0
    let storeErrors = 0
    let sweeps = 0
    for (; sweeps < 50; ) {
      const report = await lk.refresher.sweep()
      sweeps++
      refreshed += report.refreshed
      failed += report.failed
      storeErrors += report.storeErrors ?? 0
      if (report.due === 0) break
    }
    const ms = performance.now() - start
    const cpu = process.cpuUsage(cpuStart)
    process.stdout.write(
      `${JSON.stringify({ refreshed, failed, storeErrors, denials, claimed, sweeps, ms: Math.round(ms), cpuMs: Math.round((cpu.user + cpu.system) / 1000), departures })}\n`
    )
  }
  for (const lk of instances.values()) await lk.close()
  await Effect.runPromise(inner.close?.() ?? Effect.void)
  process.exit(0)
}

main().catch((error) => {
  process.stderr.write(`${error instanceof Error ? error.stack : String(error)}\n`)
  process.exit(1)
})
