/**
 * The engine's own cost, without a token server: the Refresher and a raw openid-client loop against
 * the same in-process answer (a `fetch` that answers every token request on the next turn of the
 * event loop with a fresh access and refresh token, as a rotating server does), at the same
 * concurrency, in alternating rounds (raw, Refresher, Refresher, raw, ...).
 *
 * Both sides do the same HTTP-less work of the protocol (openid-client builds the request and reads
 * the answer); what the Refresher adds is all of the engine: the claim, the lease, the journal
 * written before the token is sent, the vault (the claimed record opened, the new tokens sealed),
 * the compare-and-set commit, the event, the metrics, and the Effect runtime under them. Figures:
 * the main thread's CPU per refresh of each side, in µs (median round), and their difference.
 *
 * `vaultFloorUsPerRefresh`: the vault work no refresh can skip (open the refresh token, seal the two
 * new tokens), in a tight loop, for scale.
 *
 * This is the number to watch when changing the engine: in the background section the token server
 * shares the two cores and its CPU (about 1 ms per refresh) hides part of the engine's.
 */
import { Connection, ConnectionStore, createLatchkey, Vault } from "@latchkey/core"
import { Generic } from "@latchkey/provider-generic"
import { Effect } from "effect"
import * as oidc from "openid-client"
import { connectionOf } from "./background.ts"
import { cpuMeter, median, PROVIDER_ID, pool, progress, round, runEffect, vaultOptions } from "./common.ts"
import { SCOPES } from "./server.ts"

export interface EngineResult {
  readonly concurrency: number
  readonly connections: number
  readonly rounds: number
  /** The Refresher's main-thread CPU per refresh, µs (median round). */
  readonly refresherUsPerRefresh: number
  /** The raw openid-client loop's, µs (median round). */
  readonly rawUsPerRefresh: number
  /** What the engine adds per refresh, µs. */
  readonly overheadUsPerRefresh: number
  /**
   * The vault work no refresh can skip, µs, in a tight loop: the refresh token opened, the new access
   * and refresh tokens sealed (AES-256-GCM). Part of `overheadUsPerRefresh`.
   */
  readonly vaultFloorUsPerRefresh: number
  /** Refreshes that failed (must be 0). */
  readonly failed: number
}

const ORIGIN = "http://127.0.0.1:9"
const endpoints = {
  issuer: ORIGIN,
  authorization: `${ORIGIN}/authorize`,
  token: `${ORIGIN}/token`,
  userinfo: `${ORIGIN}/me`
}
const CLIENT_ID = "engine-client"
const CLIENT_SECRET = "engine-secret"

/** The token endpoint in process: a rotating server's answer, on the next turn of the event loop. */
const answering = () => {
  let n = 0
  return (async () => {
    await new Promise<void>((resolve) => setImmediate(resolve))
    n++
    return new Response(
      JSON.stringify({
        access_token: `engine-at-${n}`,
        refresh_token: `engine-rt-${n}`,
        token_type: "Bearer",
        expires_in: 3600,
        scope: SCOPES.join(" ")
      }),
      { status: 200, headers: { "content-type": "application/json", "cache-control": "no-store" } }
    )
  }) as unknown as typeof fetch
}

/** A due connection of the engine's rounds (the background section's shape, the engine's own tokens). */
const dueConnection = (i: number, now: number): Connection.Connection =>
  connectionOf(
    { accountId: `engine-${i}`, accessToken: `engine-old-at-${i}`, refreshToken: `engine-old-rt-${i}` },
    i,
    now
  )

/**
 * One Refresher round on `connections` due connections of a fresh memory store, answered in process:
 * its main-thread CPU per refresh. Also how a fleet process warms the engine's code before its
 * real warm-up (bench/fleet-worker.ts).
 */
export const refresherRound = async (concurrency: number, connections: number) => {
  const store = ConnectionStore.makeMemory()
  const vault = Vault.make(vaultOptions)
  const now = Date.now()
  await runEffect(
    Effect.forEach(
      Array.from({ length: connections }, (_, i) => i),
      (i) => store.insert(Connection.toRecord(vault, dueConnection(i, now), now - 3600_000)),
      { discard: true }
    )
  )
  const lk = createLatchkey({
    providers: [
      Generic.provider({
        id: PROVIDER_ID,
        name: "Engine",
        clientId: CLIENT_ID,
        clientSecret: CLIENT_SECRET,
        auth: "client_secret_basic",
        redirectUri: `${ORIGIN}/callback`,
        endpoints,
        scopes: [...SCOPES]
      })
    ],
    store,
    vault: vaultOptions,
    config: { fetch: answering() },
    refresher: { concurrency, ratePerSecond: Number.POSITIVE_INFINITY, batchSize: connections }
  })
  try {
    let refreshed = 0
    let failed = 0
    const meter = cpuMeter()
    for (let sweeps = 0; sweeps < 5; sweeps++) {
      const report = await lk.refresher.sweep()
      refreshed += report.refreshed
      failed += report.failed
      if (report.due === 0 || report.refreshed === 0) break
    }
    const used = meter()
    return { usPerRefresh: used.threadUs / Math.max(1, refreshed), failed: failed + connections - refreshed }
  } finally {
    await lk.close()
  }
}

const rawRound = async (concurrency: number, connections: number) => {
  const config = new oidc.Configuration(
    { issuer: ORIGIN, token_endpoint: endpoints.token },
    CLIENT_ID,
    undefined,
    oidc.ClientSecretBasic(CLIENT_SECRET)
  )
  config[oidc.customFetch] = answering() as never
  oidc.allowInsecureRequests(config)
  const kept = new Map<number, { accessToken: string; refreshToken: string | undefined }>()
  let failed = 0
  const meter = cpuMeter()
  await pool(
    Array.from({ length: connections }, (_, i) => i),
    concurrency,
    async (i) => {
      try {
        const tokens = await oidc.refreshTokenGrant(config, `engine-old-rt-${i}`)
        kept.set(i, { accessToken: tokens.access_token, refreshToken: tokens.refresh_token })
      } catch {
        failed++
      }
    }
  )
  const used = meter()
  return { usPerRefresh: used.threadUs / connections, failed }
}

/** One open and two seals per iteration, as a refresh needs at least (`vaultFloorUsPerRefresh`). */
const vaultFloor = (iterations: number) => {
  const vault = Vault.make(vaultOptions)
  const context = (connectionId: string, field: string) => ({ connectionId, field })
  const sealed = Array.from({ length: 1_000 }, (_, i) =>
    vault.seal(`engine-old-rt-${i}`, context(`conn_engine_${i}`, "refreshToken"))
  )
  const once = (i: number) => {
    const n = i % sealed.length
    Effect.runSync(vault.open(sealed[n]!, context(`conn_engine_${n}`, "refreshToken")))
    vault.seal(`engine-at-${i}`, context(`conn_engine_${n}`, "accessToken"))
    vault.seal(`engine-rt-${i}`, context(`conn_engine_${n}`, "refreshToken"))
  }
  for (let i = 0; i < 2_000; i++) once(i)
  const meter = cpuMeter()
  for (let i = 0; i < iterations; i++) once(i)
  return meter().threadUs / iterations
}

export const benchEngine = async (
  concurrency: number,
  connections: number,
  rounds: number
): Promise<EngineResult> => {
  const ROUNDS = Math.max(2, 2 * Math.round(rounds / 2))
  // Warm both paths first (their code compiled, as in a long-running process).
  await refresherRound(concurrency, Math.min(connections, 500))
  await rawRound(concurrency, Math.min(connections, 500))
  const lk: Array<number> = []
  const raw: Array<number> = []
  let failed = 0
  for (let r = 0; r < ROUNDS; r++) {
    const order = r % 2 === 0 ? (["raw", "lk"] as const) : (["lk", "raw"] as const)
    for (const side of order) {
      const result =
        side === "raw"
          ? await rawRound(concurrency, connections)
          : await refresherRound(concurrency, connections)
      failed += result.failed
      ;(side === "raw" ? raw : lk).push(result.usPerRefresh)
    }
    progress(
      "background",
      `engine round ${r + 1}/${ROUNDS}: CPU per refresh without a token server: Refresher ${Math.round(lk.at(-1)!)} µs, raw openid-client ${Math.round(raw.at(-1)!)} µs`
    )
  }
  const refresherUsPerRefresh = Math.round(median(lk))
  const rawUsPerRefresh = Math.round(median(raw))
  const vaultFloorUsPerRefresh = round(vaultFloor(20_000), 1)
  return {
    concurrency,
    connections,
    rounds: ROUNDS,
    refresherUsPerRefresh,
    rawUsPerRefresh,
    overheadUsPerRefresh: refresherUsPerRefresh - rawUsPerRefresh,
    vaultFloorUsPerRefresh,
    failed
  }
}
