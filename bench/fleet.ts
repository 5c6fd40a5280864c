/**
 * Fleet: N OS processes (1, 2, 4), each a Latchkey instance whose Refresher sweeps one shared store
 * (PostgreSQL, Redis) holding `connections` due connections (5,000; `--quick`: 1,000), against the
 * bench token server (oidc-provider, rotating single-use refresh tokens, in a worker thread of this
 * process). The Refresher claims due connections a few at a time (`claimDue`), so the processes split
 * the work instead of chasing one batch.
 *
 * The section's 4 processes live through all of its runs, as the instances of a fleet do: they are
 * started and warmed together once, then the first one sweeps alone, the first two together, all
 * four, and the first one alone again. Each is warmed as a long-running instance is: first the engine
 * alone (`ENGINE_WARM_PER_PROCESS` refreshes on a memory store answered in process), then the four
 * sweep `4 x WARM_PER_PROCESS` due connections in another namespace of the same store server
 * (another schema, another key prefix), so their code is compiled and their pools connected. Without
 * it each process pays its own JIT warm-up inside the measured wall (about twice the CPU per refresh
 * with 4 processes of 250 refreshes each), which is a cost of starting processes, not of splitting
 * the work. With the 400 real warm-up refreshes alone, 4 processes (1,250 refreshes each) spent
 * 1.9-2.1 x the CPU per refresh of one on Redis and 2.0-2.4 x on PostgreSQL; with the engine's 3,000
 * first, 1.4 x and 1.7-1.8 x (the rest is what 4 processes and the store's server sharing 2 cores
 * cost). Started once instead of for every run (8 process starts and warm-ups per store), the section
 * takes about 100 s instead of about 140 s.
 *
 * Runs with 1, 2, 4 and again 1 process. Per run: `wallMs` (from "go" to the last process done),
 * `machineBusy` (the share of the machine's cores busy meanwhile: what the machine had left to give),
 * `wallVsOne` (wall / the mean of the two 1-process walls, so that a drift during the section does not
 * land on the runs measured last),
 * `refreshesPerProcess`, `leaseDenials` (a process asked for the lease of a connection another one was
 * refreshing; target about 0), `refreshCalls` at the server (must equal `connections`: one refresh
 * each), `stillDue` after the run, `storeErrors`.
 *
 * Provider rates (`providerRates`): the same fleet with the Refresher's per-provider rate set to
 * `rate`/s (taken from the store's shared budget, `takeRateBudget`) on `rateConnections` due
 * connections, with 1 and 4 processes, from the times the server answered each refresh: `seenPerSec`
 * = the answers after the first / the seconds from the first answer to the last, `maxInAnySecond` =
 * the most answers within any 1,000 ms, and `perWallSec` = refresh calls / the run's wall seconds
 * (from "go" to the last process done: the figure before the server noted its answers); from the
 * times each request left its process (the workers' `fetch`): `departedPerSec` and
 * `departedMaxInAnySecond`, what the budget paces; `answerLagMs`, the k-th answer after the k-th
 * departure (the network, the server's queue and its work). The budget spaces the slots
 * `(1000 + rateJitterMs) / rate` ms apart on the store's clock (the Refresher's default 50 ms of
 * jitter), each request leaves when its slot comes, after its journal write, and one that would leave
 * more than `rateJitterMs` late takes the next slot: no second holds more than `rate` departures.
 * Without a shared budget 4 processes would reach 4 x `rate`.
 */
import { spawn } from "node:child_process"
import { randomUUID } from "node:crypto"
import { createRequire } from "node:module"
import { createInterface } from "node:readline"
import { fileURLToPath } from "node:url"
import { Connection, type ConnectionStore, Vault } from "@latchkey/core"
import { PostgresStore } from "@latchkey/store-postgres"
import { RedisStore } from "@latchkey/store-redis"
import { Effect } from "effect"
import { connectionOf } from "./background.ts"
import { cpuMeter, dropRedisPrefix, PROVIDER_ID, progress, REDIRECT, round } from "./common.ts"
import type { FleetWorkerSettings } from "./fleet-worker.ts"
import { type BenchServer, CLIENT_ID, SCOPES } from "./server.ts"

const POSTGRES_URL = process.env.LATCHKEY_BENCH_POSTGRES_URL ?? "postgres://postgres@127.0.0.1:5432/test"
const REDIS_URL = process.env.LATCHKEY_BENCH_REDIS_URL ?? "redis://127.0.0.1:6379"
const VAULT_KEY_ID = "bench-fleet"
const vaultKey = Vault.generateKey()
const vault = Vault.make({ keys: [{ id: VAULT_KEY_ID, key: vaultKey }] })
/** Due connections each process refreshes before "go" (in the warm-up namespace). */
export const WARM_PER_PROCESS = 400
/**
 * Refreshes of the engine alone each process makes first (bench/engine.ts: a memory store, answers
 * in process, about 0.5 ms of CPU each): the engine's code compiled as in a long-running instance, for
 * a fraction of what as many real refreshes would cost the token server and the store.
 */
export const ENGINE_WARM_PER_PROCESS = 3_000
const workerFile = fileURLToPath(new URL("./fleet-worker.ts", import.meta.url))

export interface FleetRun {
  readonly processes: number
  readonly wallMs: number
  readonly wallVsOne: number
  readonly refreshesPerProcess: ReadonlyArray<number>
  readonly claimedPerProcess: ReadonlyArray<number>
  readonly sweepsPerProcess: ReadonlyArray<number>
  readonly leaseDenials: number
  /** CPU time (user + system) of each process during its sweeps, ms. */
  readonly cpuMsPerProcess: ReadonlyArray<number>
  /** All the processes' CPU time per refresh, µs: what splitting the work costs in CPU. */
  readonly cpuUsPerRefresh: number
  /**
   * Share of the machine's cores busy from "go" to the last process done (every process: the
   * instances, the store server, the token server): near 1, the machine had no CPU left to give
   * more processes.
   */
  readonly machineBusy: number | undefined
  readonly refreshCalls: number
  readonly stillDue: number
  readonly failed: number
  readonly storeErrors: number
}

export interface FleetStoreResult {
  readonly connections: number
  readonly concurrencyPerProcess: number
  readonly runs: ReadonlyArray<FleetRun>
  readonly providerRates: {
    readonly ratePerSec: number
    readonly connections: number
    readonly oneInstance: {
      readonly seenPerSec: number
      readonly maxInAnySecond: number
      readonly departedPerSec: number
      readonly departedMaxInAnySecond: number
      readonly answerLagMs: { readonly p50: number; readonly p99: number; readonly max: number }
      readonly perWallSec: number
      readonly wallMs: number
      readonly refreshCalls: number
    }
    readonly fourInstances: {
      readonly seenPerSec: number
      readonly maxInAnySecond: number
      readonly departedPerSec: number
      readonly departedMaxInAnySecond: number
      readonly answerLagMs: { readonly p50: number; readonly p99: number; readonly max: number }
      readonly perWallSec: number
      readonly wallMs: number
      readonly refreshCalls: number
    }
  }
}

export type FleetResult = Record<"postgres" | "redis", FleetStoreResult | { error: string }> & {
  readonly cpus: number
  readonly note: string
}

interface OpenedFleetStore {
  readonly store: ConnectionStore.ConnectionStoreShape
  readonly settings: Record<string, unknown>
  /** Make these connections due again (see `expireAll`); on PostgreSQL, then analyze the table. */
  readonly expire: (ids: ReadonlyArray<string>) => Promise<void>
  readonly close: () => Promise<void>
}

const openPostgres = async (): Promise<OpenedFleetStore> => {
  const schema = `lk_fleet_${randomUUID().replaceAll("-", "").slice(0, 16)}`
  const settings = { connectionString: POSTGRES_URL, schema, maxConnections: 8 }
  const store = await PostgresStore.make(settings)
  const pg = createRequire(fileURLToPath(import.meta.resolve("@latchkey/store-postgres")))("pg") as {
    Pool: new (
      c: object
    ) => {
      query(t: string, values?: ReadonlyArray<unknown>): Promise<unknown>
      end(): Promise<void>
    }
  }
  const admin = new pg.Pool({ connectionString: POSTGRES_URL, max: 1 })
  return {
    store,
    settings,
    // One statement instead of a read and a compare-and-set write per row (5,000 of them took about
    // 7 s of the section, three times per store): the version moves on, in the column and in the
    // record, as the store's own write would move it, so any claim or copy of the row is stale.
    expire: async (ids) => {
      const now = Date.now()
      await admin.query(
        `UPDATE "${schema}".latchkey_connections
           SET version = version + 1, refresh_due_at = $1,
               record = (record::jsonb || jsonb_build_object('version', version + 1, 'obtainedAt', $2::bigint,
                 'expiresAt', $1::bigint, 'refreshDueAt', $1::bigint))::text
         WHERE id = ANY($3::text[])`,
        [now - 3_600_000, now - 2 * 3_600_000, ids]
      )
      // The planner's statistics of a live table (autovacuum keeps them within a minute or so).
      await admin.query(`ANALYZE "${schema}".latchkey_connections`)
    },
    close: async () => {
      await Effect.runPromise(store.close())
      await admin.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch(() => {})
      await admin.end()
    }
  }
}

const openRedis = async (): Promise<OpenedFleetStore> => {
  const keyPrefix = RedisStore.randomPrefix("lk-fleet")
  const settings = { url: REDIS_URL, keyPrefix }
  const store = RedisStore.make(settings)
  await Effect.runPromise(store.ready)
  return {
    store,
    settings,
    expire: (ids) => expireAll(store, ids),
    close: async () => {
      await Effect.runPromise(store.close())
      await dropRedisPrefix(REDIS_URL, keyPrefix)
    }
  }
}

/** Insert fresh grants as due connections (tokens sealed with the run's key). */
const seed = async (
  server: BenchServer,
  store: ConnectionStore.ConnectionStoreShape,
  count: number,
  tag: string
) => {
  const grants = await server.mint(count, `fleet-${tag}`)
  const now = Date.now()
  await Effect.runPromise(
    Effect.forEach(
      grants,
      (minted, i) => {
        const c = { ...connectionOf(minted, i, now), id: `conn_fleet_${tag}_${i}` }
        return store.insert(Connection.toRecord(vault, c, now - 3_600_000))
      },
      { concurrency: 16, discard: true }
    )
  )
  return grants.map((_, i) => `conn_fleet_${tag}_${i}`)
}

/** Make every connection due again (its access token expired an hour ago), through compare-and-set. */
const expireAll = (store: ConnectionStore.ConnectionStoreShape, ids: ReadonlyArray<string>) =>
  Effect.runPromise(
    Effect.forEach(
      ids,
      (id) =>
        Effect.gen(function* () {
          const r = yield* store.get(id)
          if (r === undefined) return
          const now = Date.now()
          yield* store.update(
            {
              ...r,
              obtainedAt: now - 2 * 3_600_000,
              expiresAt: now - 3_600_000,
              refreshDueAt: now - 3_600_000,
              version: r.version + 1
            },
            r.version
          )
        }),
      { concurrency: 16, discard: true }
    )
  )

interface WorkerResult {
  refreshed: number
  failed: number
  storeErrors: number
  denials: number
  claimed: number
  sweeps: number
  ms: number
  cpuMs: number
  /** When each refresh request left the process (ms since the epoch). */
  departures: Array<number>
}

/** A fleet process, alive for the whole store's section: warmed once, then one result per "go". */
interface FleetWorker {
  readonly child: ReturnType<typeof spawn>
  readonly ready: Promise<void>
  /** Start a run at this rate (per second; `null`: none) and wait for its result. */
  readonly run: (ratePerSecond: number | null) => Promise<WorkerResult>
}

const startWorker = (settings: FleetWorkerSettings): FleetWorker => {
  const child = spawn(
    process.execPath,
    [...(process.env.BENCH_WORKER_ARGS ?? "").split(" ").filter(Boolean), workerFile],
    {
      env: { ...process.env, LK_FLEET_WORKER: JSON.stringify(settings) },
      stdio: ["pipe", "pipe", "pipe"]
    }
  )
  let stderr = ""
  child.stderr.on("data", (d) => {
    stderr += d
  })
  let exited: Error | undefined
  const lines = createInterface({ input: child.stdout })
  let onReady: () => void = () => {}
  const waiting: Array<{ resolve: (r: WorkerResult) => void; reject: (e: Error) => void }> = []
  const ready = new Promise<void>((resolve, reject) => {
    onReady = resolve
    child.once("exit", (code) => reject(new Error(`fleet worker exited (${code}): ${stderr.slice(-500)}`)))
  })
  child.once("exit", (code) => {
    exited = new Error(`fleet worker exited (${code}): ${stderr.slice(-500)}`)
    for (const w of waiting.splice(0)) w.reject(exited)
  })
  lines.on("line", (line) => {
    if (line === "ready") onReady()
    else if (line.startsWith("{")) waiting.shift()?.resolve(JSON.parse(line) as WorkerResult)
  })
  ready.catch(() => {})
  return {
    child,
    ready,
    run: (ratePerSecond) =>
      new Promise<WorkerResult>((resolve, reject) => {
        if (exited !== undefined) {
          reject(exited)
          return
        }
        waiting.push({ resolve, reject })
        child.stdin?.write(`go ${ratePerSecond ?? "none"}\n`)
      })
  }
}

/** One run: the first `processes` workers sweep the store until nothing is due. */
const runFleet = async (
  server: BenchServer,
  opened: OpenedFleetStore,
  workers: ReadonlyArray<FleetWorker>,
  processes: number,
  ratePerSecond: number | null
) => {
  const taking = workers.slice(0, processes)
  const before = (await server.grants()).refresh_token
  const start = performance.now()
  const meter = cpuMeter()
  const results = await Promise.all(taking.map((w) => w.run(ratePerSecond)))
  const wallMs = performance.now() - start
  const { machineBusy } = meter()
  const refreshCalls = (await server.grants()).refresh_token - before
  const stillDue = (await Effect.runPromise(opened.store.listDue(Date.now(), 100_000))).length
  return { wallMs, results, refreshCalls, stillDue, machineBusy }
}

const benchFleetStore = async (
  server: BenchServer,
  kind: "postgres" | "redis",
  connections: number,
  rateConnections: number,
  rate: number
): Promise<FleetStoreResult> => {
  const concurrency = 16
  const open = kind === "postgres" ? openPostgres : openRedis
  const opened = await open()
  const warm = await open().catch(async (error) => {
    await opened.close()
    throw error
  })
  let workers: Array<FleetWorker> = []
  try {
    progress(
      "fleet",
      `${kind}: seeding ${connections} due connections, and ${4 * WARM_PER_PROCESS} to warm up on`
    )
    const ids = await seed(server, opened.store, connections, "w")
    const warmIds = await seed(server, warm.store, 4 * WARM_PER_PROCESS, "warm")
    // Due as seeded; made due once more through `expire` so that PostgreSQL's tables are analyzed.
    await opened.expire(ids)
    await warm.expire(warmIds)
    const settings: FleetWorkerSettings = {
      store: kind,
      storeSettings: opened.settings,
      warmStoreSettings: warm.settings,
      provider: {
        id: PROVIDER_ID,
        clientId: CLIENT_ID,
        clientSecret: server.clientSecret,
        endpoints: server.endpoints as unknown as Record<string, string>,
        redirectUri: REDIRECT,
        scopes: [...SCOPES]
      },
      vaultKeyId: VAULT_KEY_ID,
      vaultKey,
      concurrency,
      engineWarmUp: ENGINE_WARM_PER_PROCESS
    }
    // The 4 processes of the section, started and warmed together (they split the warm-up set as
    // they split the work), then used by every run: the first one alone, the first two, all four.
    progress("fleet", `${kind}: starting and warming 4 processes`)
    workers = Array.from({ length: 4 }, () => startWorker(settings))
    await Promise.all(workers.map((w) => w.ready))
    const runs: Array<Omit<FleetRun, "wallVsOne">> = []
    // 1, 2, 4, then 1 process again: the baseline is the mean of the two 1-process walls, so a drift
    // of the machine or the token server during the section (its grant store grows with every run)
    // does not land on the runs measured last.
    for (const [n, processes] of [1, 2, 4, 1].entries()) {
      if (n > 0) await opened.expire(ids)
      const r = await runFleet(server, opened, workers, processes, null)
      const run = {
        processes,
        wallMs: Math.round(r.wallMs),
        refreshesPerProcess: r.results.map((x) => x.refreshed),
        claimedPerProcess: r.results.map((x) => x.claimed),
        sweepsPerProcess: r.results.map((x) => x.sweeps),
        leaseDenials: r.results.reduce((n, x) => n + x.denials, 0),
        cpuMsPerProcess: r.results.map((x) => x.cpuMs),
        cpuUsPerRefresh: Math.round(
          (r.results.reduce((n, x) => n + x.cpuMs, 0) * 1000) /
            Math.max(
              1,
              r.results.reduce((n, x) => n + x.refreshed, 0)
            )
        ),
        machineBusy: r.machineBusy,
        refreshCalls: r.refreshCalls,
        stillDue: r.stillDue,
        failed: r.results.reduce((n, x) => n + x.failed, 0),
        storeErrors: r.results.reduce((n, x) => n + x.storeErrors, 0)
      }
      progress(
        "fleet",
        `${kind}: ${processes} process(es): ${run.wallMs} ms, refreshes ${run.refreshesPerProcess.join("/")} (claimed ${run.claimedPerProcess.join("/")}, sweeps ${run.sweepsPerProcess.join("/")}), denials ${run.leaseDenials}, CPU ${run.cpuUsPerRefresh} µs/refresh (${run.cpuMsPerProcess.join("/")} ms), cores busy ${run.machineBusy === undefined ? "unknown" : `${Math.round(run.machineBusy * 100)} %`}, server calls ${run.refreshCalls}, still due ${run.stillDue}`
      )
      runs.push(run)
    }
    const oneWalls = runs.filter((r) => r.processes === 1).map((r) => r.wallMs)
    const oneWall = oneWalls.reduce((a, b) => a + b, 0) / oneWalls.length
    const rated = runs.map((r) => ({ ...r, wallVsOne: round(r.wallMs / oneWall, 3) }))
    progress(
      "fleet",
      `${kind}: wall vs one process (mean of ${oneWalls.join(" and ")} ms): ${rated
        .slice(1, 3)
        .map((r) => `${r.processes} processes x${r.wallVsOne}`)
        .join(", ")}`
    )

    // Provider rates: a smaller due set at a configured rate, 1 then 4 processes.
    const rateIds = await seed(server, opened.store, rateConnections, "r")
    // Only the rate set is due now (the big set was refreshed by the last run).
    // The server notes when it answered each refresh: the rate is that of its answers (calls after
    // the first / ms from the first to the last), and the most it answered in any second.
    const atRate = async (processes: number) => {
      await server.recordRefreshes()
      const r = await runFleet(server, opened, workers, processes, rate)
      const times = [...(await server.takeRefreshes())].sort((a, b) => a - b)
      const left = r.results.flatMap((w) => w.departures).sort((a, b) => a - b)
      const mostInASecond = (at: ReadonlyArray<number>) => {
        let most = 0
        for (let i = 0, j = 0; i < at.length; i++) {
          while (at[i]! - at[j]! >= 1_000) j++
          most = Math.max(most, i - j + 1)
        }
        return most
      }
      const perSec = (at: ReadonlyArray<number>) =>
        at.length > 1 ? round(((at.length - 1) * 1000) / (at.at(-1)! - at[0]!), 1) : Number.NaN
      // How much later than the request's departure the server noted its answer: the network, the
      // server's queue and its work (the k-th departure against the k-th answer, both in order).
      const lags = times.map((t, k) => t - (left[k] ?? t)).sort((a, b) => a - b)
      return {
        seenPerSec: perSec(times),
        maxInAnySecond: mostInASecond(times),
        departedPerSec: perSec(left),
        departedMaxInAnySecond: mostInASecond(left),
        answerLagMs: {
          p50: round(lags[Math.floor(lags.length * 0.5)] ?? Number.NaN, 1),
          p99: round(lags[Math.floor(lags.length * 0.99)] ?? Number.NaN, 1),
          max: round(lags.at(-1) ?? Number.NaN, 1)
        },
        perWallSec: round(r.refreshCalls / (r.wallMs / 1000), 1),
        wallMs: Math.round(r.wallMs),
        refreshCalls: r.refreshCalls
      }
    }
    const oneInstance = await atRate(1)
    await opened.expire(rateIds)
    const fourInstances = await atRate(4)
    progress(
      "fleet",
      `${kind}: provider rate ${rate}/s configured: answered ${oneInstance.seenPerSec}/s with 1 instance (at most ${oneInstance.maxInAnySecond} in a second), ${fourInstances.seenPerSec}/s with 4 (at most ${fourInstances.maxInAnySecond}); requests left at ${oneInstance.departedPerSec}/s (at most ${oneInstance.departedMaxInAnySecond}) and ${fourInstances.departedPerSec}/s (at most ${fourInstances.departedMaxInAnySecond}); answer after departure p50/p99/max ${fourInstances.answerLagMs.p50}/${fourInstances.answerLagMs.p99}/${fourInstances.answerLagMs.max} ms with 4`
    )
    return {
      connections,
      concurrencyPerProcess: concurrency,
      runs: rated,
      providerRates: { ratePerSec: rate, connections: rateConnections, oneInstance, fourInstances }
    }
  } finally {
    for (const w of workers) {
      w.child.stdin?.end("exit\n")
      w.child.kill("SIGKILL")
    }
    await opened.close()
    await warm.close()
  }
}

export const benchFleet = async (server: BenchServer, quick: boolean, cpus: number): Promise<FleetResult> => {
  const connections = quick ? 1_000 : 5_000
  const rateConnections = quick ? 150 : 300
  const rate = 100
  const out: Record<string, unknown> = {
    cpus,
    note: `${cpus} cores shared by the token server (a worker thread), the store server and the N processes: wall near 1/N needs N free cores`
  }
  for (const kind of (process.env.BENCH_FLEET_STORES ?? "postgres,redis").split(",") as Array<
    "postgres" | "redis"
  >) {
    try {
      out[kind] = await benchFleetStore(server, kind, connections, rateConnections, rate)
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error)
      progress("fleet", `${kind}: failed: ${message}`)
      out[kind] = { error: message }
    }
  }
  return out as FleetResult
}
