/**
 * Background: the Refresher refreshing N connections that are all due (the run's size: 5,000, quick
 * 1,000), against a raw openid-client refresh loop over N other grants at the same concurrency, same
 * server, same run, in alternating rounds.
 *
 * - Grants are minted straight into oidc-provider's models (the consent forms would take minutes
 *   for 20,000 grants); each has a real unused refresh token and a real access token.
 * - Latchkey side, per round: N / rounds connections inserted into a memory store (tokens sealed with
 *   the run's vault key, as in production) with the access token expired an hour ago, so all are due.
 *   Timed: Refresher sweeps (concurrency C, no rate limit) until nothing is due. Each refresh
 *   is the full engine path: lease, re-read, openid-client refresh, seal, compare-and-set write,
 *   event.
 * - Raw side: a pool of C workers calling `refreshTokenGrant` with one shared openid-client
 *   configuration and keeping the new tokens in a Map: the least a refresh loop can do.
 * - Rounds alternate (raw, Refresher, Refresher, raw, raw, ...; see ROUNDS) after a short warm-up of
 *   both paths on separate grants; `throughputRatio` = Refresher refreshes/s ÷ raw refreshes/s over
 *   all rounds, `roundRatios` the same of each pair of rounds next to each other. Run one after the
 *   other, the side measured last paid for the token server's growing grant store and any drift of
 *   the machine.
 */
import { Connection, ConnectionStore, createLatchkey, Vault } from "@latchkey/core"
import { Effect, Redacted } from "effect"
import * as oidc from "openid-client"
import {
  cpuMeter,
  makeProvider,
  median,
  PROVIDER_ID,
  pool,
  progress,
  round,
  runEffect,
  vaultOptions
} from "./common.ts"
import { type BenchServer, type Minted, SCOPES } from "./server.ts"

export const DEFAULT_CONNECTIONS = 10_000

const busyText = (busy: number | undefined) =>
  busy === undefined ? "unknown" : `${Math.round(busy * 100)} %`
const WARMUP = 200

export interface BackgroundResult {
  readonly connections: number
  readonly concurrency: number
  readonly rounds: number
  readonly seconds: number
  readonly refreshesPerSec: number
  readonly sweeps: number
  readonly refreshed: number
  readonly failed: number
  readonly refreshCalls: number
  readonly stillDue: number
  /** The main thread's CPU (user + system) per refresh, in µs, median round: the engine's own cost shows here. */
  readonly cpuUsPerRefresh: number
  /**
   * The process's other threads' CPU per refresh, µs, median round: the token server's worker thread,
   * and V8's helper threads (concurrent GC and compilation) of both.
   */
  readonly otherUsPerRefresh: number
  /** Share of the machine's cores busy during the rounds (median round; 1 = no CPU left). */
  readonly machineBusy: number | undefined
  readonly raw: {
    readonly seconds: number
    readonly refreshesPerSec: number
    readonly failed: number
    readonly cpuUsPerRefresh: number
    readonly otherUsPerRefresh: number
    readonly machineBusy: number | undefined
  }
  /**
   * The raw loop's CPU per refresh (all threads) ÷ the Refresher's: what
   * `throughputRatio` comes to when the cores are the limit (`machineBusy` near 1).
   */
  readonly cpuRatio: number
  /** Refresher refreshes/s ÷ raw refreshes/s of each round (a Refresher round and the raw round next to it). */
  readonly roundRatios: ReadonlyArray<number>
  /** Refresher refreshes/s ÷ raw refreshes/s over all rounds. */
  readonly throughputRatio: number
}

export const connectionOf = (minted: Minted, index: number, now: number): Connection.Connection => ({
  id: `conn_bench_${index}`,
  ownerId: `bench-owner-${index}`,
  providerId: PROVIDER_ID,
  accountId: minted.accountId,
  label: `${minted.accountId}@example.com`,
  kind: "oauth",
  tokens: {
    accessToken: Redacted.make(minted.accessToken),
    refreshToken: Redacted.make(minted.refreshToken),
    tokenType: "Bearer",
    obtainedAt: now - 2 * 3600_000,
    expiresAt: now - 3600_000,
    refreshExpiresAt: now + 29 * 24 * 3600_000,
    scopes: [...SCOPES],
    extras: {}
  },
  status: "active",
  version: 1,
  createdAt: now - 2 * 3600_000,
  updatedAt: now - 2 * 3600_000,
  lastRefreshAt: undefined,
  lastError: undefined,
  profile: undefined
})

/** Insert `grants` as due connections into a fresh memory store. */
const seedStore = async (grants: ReadonlyArray<Minted>, offset: number) => {
  // Memory store; ids offset so warm-up and measured sets never collide.
  const store = ConnectionStore.makeMemory()
  const vault = Vault.make(vaultOptions)
  const now = Date.now()
  await runEffect(
    Effect.forEach(
      grants,
      (minted, i) =>
        store.insert(Connection.toRecord(vault, connectionOf(minted, offset + i, now), now - 3600_000)),
      { discard: true }
    )
  )
  return store
}

const rawLoop = async (server: BenchServer, grants: ReadonlyArray<Minted>, concurrency: number) => {
  const config = server.openidConfig()
  const kept = new Map<string, { accessToken: string; refreshToken: string | undefined; expiresAt: number }>()
  let failed = 0
  const start = performance.now()
  const meter = cpuMeter()
  await pool(grants, concurrency, async (minted) => {
    try {
      const tokens = await oidc.refreshTokenGrant(config, minted.refreshToken)
      kept.set(minted.accountId, {
        accessToken: tokens.access_token,
        refreshToken: tokens.refresh_token,
        expiresAt: Date.now() + (tokens.expires_in ?? 3600) * 1000
      })
    } catch {
      failed++
    }
  })
  const used = meter()
  return {
    seconds: (performance.now() - start) / 1000,
    failed,
    kept: kept.size,
    cpuUsPerRefresh: Math.round(used.threadUs / grants.length),
    otherUsPerRefresh: Math.round(used.otherThreadsUs / grants.length),
    machineBusy: used.machineBusy
  }
}

const latchkeySweeps = async (
  server: BenchServer,
  store: ConnectionStore.ConnectionStoreShape,
  concurrency: number,
  CONNECTIONS: number
) => {
  const lk = createLatchkey({
    providers: [makeProvider(server)],
    store,
    vault: vaultOptions,
    refresher: { concurrency, ratePerSecond: Number.POSITIVE_INFINITY, batchSize: CONNECTIONS }
  })
  try {
    const before = (await server.grants()).refresh_token
    let sweeps = 0
    let refreshed = 0
    let failed = 0
    const start = performance.now()
    const meter = cpuMeter()
    for (; sweeps < 5; ) {
      const report = await lk.refresher.sweep()
      sweeps++
      refreshed += report.refreshed
      failed += report.failed
      if (report.due === 0 || report.refreshed === 0) break
    }
    const seconds = (performance.now() - start) / 1000
    const used = meter()
    const cpuUsPerRefresh = Math.round(used.threadUs / Math.max(1, refreshed))
    const otherUsPerRefresh = Math.round(used.otherThreadsUs / Math.max(1, refreshed))
    const refreshCalls = (await server.grants()).refresh_token - before
    const stillDue = (await runEffect(store.listDue(Date.now(), CONNECTIONS))).length
    return {
      seconds,
      sweeps,
      refreshed,
      failed,
      refreshCalls,
      stillDue,
      cpuUsPerRefresh,
      otherUsPerRefresh,
      machineBusy: used.machineBusy
    }
  } finally {
    await lk.close()
  }
}

/**
 * Rounds of each side (even), in the order raw, Refresher, Refresher, raw, raw, ...: each side runs
 * as many rounds right after the other side as right after itself (switching sides costs the next
 * round about 15 % more CPU, whichever side it is), and a drift of the machine or of the token
 * server (its grant store grows with every refresh) lands on both sides alike.
 */
export const ROUNDS = 4

export const benchBackground = async (
  server: BenchServer,
  concurrency: number,
  CONNECTIONS = DEFAULT_CONNECTIONS,
  ROUNDS_RUN = ROUNDS
): Promise<BackgroundResult> => {
  const ROUNDS = Math.max(2, 2 * Math.round(ROUNDS_RUN / 2))
  const perRound = Math.ceil(CONNECTIONS / ROUNDS)
  progress("background", `minting ${2 * (perRound * ROUNDS + WARMUP)} grants`)
  const [warmLk, warmRaw, lkGrants, rawGrants] = await Promise.all([
    server.mint(WARMUP, `bg-warm-latchkey-${concurrency}`),
    server.mint(WARMUP, `bg-warm-raw-${concurrency}`),
    server.mint(perRound * ROUNDS, `bg-latchkey-${concurrency}`),
    server.mint(perRound * ROUNDS, `bg-raw-${concurrency}`)
  ])

  progress("background", `warm-up: ${WARMUP} Refresher refreshes and ${WARMUP} raw refreshes`)
  // The raw loop warms last: the first round (raw) then follows its own side, as the order needs.
  await latchkeySweeps(server, await seedStore(warmLk, perRound * ROUNDS), concurrency, WARMUP)
  await rawLoop(server, warmRaw, concurrency)

  const raws: Array<Awaited<ReturnType<typeof rawLoop>>> = []
  const lks: Array<Awaited<ReturnType<typeof latchkeySweeps>>> = []
  const pairRatios: Array<number> = []
  for (let r = 0; r < ROUNDS; r++) {
    const rawSet = rawGrants.slice(r * perRound, (r + 1) * perRound)
    const lkSet = lkGrants.slice(r * perRound, (r + 1) * perRound)
    const runRaw = async () => {
      const raw = await rawLoop(server, rawSet, concurrency)
      raws.push(raw)
      progress(
        "background",
        `round ${r + 1}/${ROUNDS} raw: ${perRound} refreshes in ${round(raw.seconds)} s (${Math.round(perRound / raw.seconds)}/s), ${raw.failed} failed, CPU per refresh: main thread ${raw.cpuUsPerRefresh} µs, other threads (token server, V8 helpers) ${raw.otherUsPerRefresh} µs; cores busy ${busyText(raw.machineBusy)}`
      )
      return raw
    }
    const runLk = async () => {
      const store = await seedStore(lkSet, r * perRound)
      const lk = await latchkeySweeps(server, store, concurrency, perRound)
      lks.push(lk)
      progress(
        "background",
        `round ${r + 1}/${ROUNDS} Refresher: ${lk.refreshed} refreshed in ${round(lk.seconds)} s (${Math.round(lk.refreshed / lk.seconds)}/s), ${lk.failed} failed, ${lk.stillDue} still due, CPU per refresh: main thread ${lk.cpuUsPerRefresh} µs, other threads ${lk.otherUsPerRefresh} µs; cores busy ${busyText(lk.machineBusy)}`
      )
      return lk
    }
    const [raw, lk] =
      r % 2 === 0
        ? [await runRaw(), await runLk()]
        : await runLk().then(async (l) => [await runRaw(), l] as const)
    pairRatios.push(lk.refreshed / lk.seconds / (rawSet.length / raw.seconds))
  }
  const sum = <T>(list: ReadonlyArray<T>, f: (t: T) => number) => list.reduce((n, t) => n + f(t), 0)
  const lkSeconds = sum(lks, (l) => l.seconds)
  const lkRefreshed = sum(lks, (l) => l.refreshed)
  const rawSeconds = sum(raws, (r) => r.seconds)
  const rawCount = perRound * ROUNDS
  const lkPerSec = lkRefreshed / lkSeconds
  const rawPerSec = rawCount / rawSeconds
  const cpu = (list: ReadonlyArray<{ readonly cpuUsPerRefresh: number }>) =>
    Math.round(median(list.map((x) => x.cpuUsPerRefresh)))
  const other = (list: ReadonlyArray<{ readonly otherUsPerRefresh: number }>) =>
    Math.round(median(list.map((x) => x.otherUsPerRefresh)))
  const busy = (list: ReadonlyArray<{ readonly machineBusy: number | undefined }>) => {
    const known = list.flatMap((x) => (x.machineBusy === undefined ? [] : [x.machineBusy]))
    return known.length === 0 ? undefined : round(median(known), 3)
  }
  const cpuRatio = round((cpu(raws) + other(raws)) / (cpu(lks) + other(lks)), 3)
  // Every round has the same size, so the total rates weigh each round alike.
  const ratio = lkPerSec / rawPerSec
  progress(
    "background",
    `C=${concurrency}: Refresher ${Math.round(lkPerSec)}/s vs raw ${Math.round(rawPerSec)}/s (${round(ratio, 3)}); round pairs ${pairRatios.map((x) => round(x, 3)).join(", ")}; CPU per refresh, main thread + other threads: raw ${cpu(raws)} + ${other(raws)} µs, Refresher ${cpu(lks)} + ${other(lks)} µs (ratio ${cpuRatio}), cores busy ${busyText(busy(raws))} / ${busyText(busy(lks))}`
  )

  return {
    connections: rawCount,
    concurrency,
    rounds: ROUNDS,
    seconds: round(lkSeconds),
    refreshesPerSec: Math.round(lkPerSec),
    sweeps: sum(lks, (l) => l.sweeps),
    refreshed: lkRefreshed,
    failed: sum(lks, (l) => l.failed),
    refreshCalls: sum(lks, (l) => l.refreshCalls),
    stillDue: sum(lks, (l) => l.stillDue),
    cpuUsPerRefresh: cpu(lks),
    otherUsPerRefresh: other(lks),
    machineBusy: busy(lks),
    raw: {
      seconds: round(rawSeconds),
      refreshesPerSec: Math.round(rawPerSec),
      failed: sum(raws, (r) => r.failed),
      cpuUsPerRefresh: cpu(raws),
      otherUsPerRefresh: other(raws),
      machineBusy: busy(raws)
    },
    cpuRatio,
    roundRatios: pairRatios.map((x) => round(x, 3)),
    throughputRatio: round(ratio, 3)
  }
}
