/**
 * Background: the Refresher refreshing 10,000 connections that are all due, against a raw
 * openid-client refresh loop over 10,000 other grants at the same concurrency, same server, same run.
 *
 * - Grants are minted straight into oidc-provider's models (the consent forms would take minutes
 *   for 20,000 grants); each has a real unused refresh token and a real access token.
 * - Latchkey side: 10,000 connections inserted into a memory store (tokens sealed with the run's
 *   vault key, as in production) with the access token expired an hour ago, so all are due. Timed:
 *   Refresher sweeps (concurrency C, no rate limit, batch 10,000) until nothing is due. Each refresh
 *   is the full engine path: lease, re-read, openid-client refresh, seal, compare-and-set write,
 *   event.
 * - Raw side: a pool of C workers calling `refreshTokenGrant` with one shared openid-client
 *   configuration and keeping the new tokens in a Map: the least a refresh loop can do.
 * - `throughputRatio` = Latchkey refreshes/s ÷ raw refreshes/s. The raw loop runs first, after a
 *   short warm-up of both paths on separate grants.
 */
import { Connection, ConnectionStore, createLatchkey, Vault } from "@latchkey/core"
import { Effect, Redacted } from "effect"
import * as oidc from "openid-client"
import { makeProvider, PROVIDER_ID, pool, progress, round, runEffect, vaultOptions } from "./common.ts"
import { type BenchServer, type Minted, SCOPES } from "./server.ts"

export const DEFAULT_CONNECTIONS = 10_000
const WARMUP = 200

export interface BackgroundResult {
  readonly connections: number
  readonly concurrency: number
  readonly seconds: number
  readonly refreshesPerSec: number
  readonly sweeps: number
  readonly refreshed: number
  readonly failed: number
  readonly refreshCalls: number
  readonly stillDue: number
  /** The main thread's CPU (user + system) per refresh, in µs: the engine's own cost shows here. */
  readonly cpuUsPerRefresh: number
  readonly raw: {
    readonly seconds: number
    readonly refreshesPerSec: number
    readonly failed: number
    readonly cpuUsPerRefresh: number
  }
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
  const cpu = process.threadCpuUsage()
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
  const used = process.threadCpuUsage(cpu)
  return {
    seconds: (performance.now() - start) / 1000,
    failed,
    kept: kept.size,
    cpuUsPerRefresh: Math.round((used.user + used.system) / grants.length)
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
    const cpu = process.threadCpuUsage()
    for (; sweeps < 5; ) {
      const report = await lk.refresher.sweep()
      sweeps++
      refreshed += report.refreshed
      failed += report.failed
      if (report.due === 0 || report.refreshed === 0) break
    }
    const seconds = (performance.now() - start) / 1000
    const used = process.threadCpuUsage(cpu)
    const cpuUsPerRefresh = Math.round((used.user + used.system) / Math.max(1, refreshed))
    const refreshCalls = (await server.grants()).refresh_token - before
    const stillDue = (await runEffect(store.listDue(Date.now(), CONNECTIONS))).length
    return { seconds, sweeps, refreshed, failed, refreshCalls, stillDue, cpuUsPerRefresh }
  } finally {
    await lk.close()
  }
}

export const benchBackground = async (
  server: BenchServer,
  concurrency: number,
  CONNECTIONS = DEFAULT_CONNECTIONS
): Promise<BackgroundResult> => {
  progress("background", `minting ${2 * (CONNECTIONS + WARMUP)} grants`)
  const [warmLk, warmRaw, lkGrants, rawGrants] = await Promise.all([
    server.mint(WARMUP, `bg-warm-latchkey-${concurrency}`),
    server.mint(WARMUP, `bg-warm-raw-${concurrency}`),
    server.mint(CONNECTIONS, `bg-latchkey-${concurrency}`),
    server.mint(CONNECTIONS, `bg-raw-${concurrency}`)
  ])

  progress("background", `warm-up: ${WARMUP} raw refreshes and ${WARMUP} Refresher refreshes`)
  await rawLoop(server, warmRaw, concurrency)
  await latchkeySweeps(server, await seedStore(warmLk, CONNECTIONS), concurrency, WARMUP)

  progress("background", `raw openid-client loop: ${CONNECTIONS} refreshes at concurrency ${concurrency}`)
  const raw = await rawLoop(server, rawGrants, concurrency)
  const rawPerSec = CONNECTIONS / raw.seconds
  progress(
    "background",
    `raw: ${round(raw.seconds)} s (${Math.round(rawPerSec)}/s), ${raw.failed} failed, main thread ${raw.cpuUsPerRefresh} µs CPU per refresh`
  )

  const store = await seedStore(lkGrants, 0)
  const due = (await runEffect(store.listDue(Date.now(), CONNECTIONS))).length
  progress("background", `Refresher: ${due} connections due, concurrency ${concurrency}`)
  const lk = await latchkeySweeps(server, store, concurrency, CONNECTIONS)
  const lkPerSec = lk.refreshed / lk.seconds
  progress(
    "background",
    `Refresher: ${lk.refreshed} refreshed in ${round(lk.seconds)} s (${Math.round(lkPerSec)}/s), ${lk.failed} failed, ${lk.stillDue} still due, main thread ${lk.cpuUsPerRefresh} µs CPU per refresh`
  )

  return {
    connections: CONNECTIONS,
    concurrency,
    seconds: round(lk.seconds),
    refreshesPerSec: Math.round(lkPerSec),
    sweeps: lk.sweeps,
    refreshed: lk.refreshed,
    failed: lk.failed,
    refreshCalls: lk.refreshCalls,
    stillDue: lk.stillDue,
    cpuUsPerRefresh: lk.cpuUsPerRefresh,
    raw: {
      seconds: round(raw.seconds),
      refreshesPerSec: Math.round(rawPerSec),
      failed: raw.failed,
      cpuUsPerRefresh: raw.cpuUsPerRefresh
    },
    throughputRatio: round(lkPerSec / rawPerSec, 3)
  }
}
