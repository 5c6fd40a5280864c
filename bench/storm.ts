/**
 * Storm: 1,000 concurrent `accessToken` calls on one connection whose access token has expired, at a
 * token server with rotating single-use refresh tokens and reuse detection (a replayed refresh token
 * revokes the whole grant).
 *
 * - The connection is linked through the real consent forms, then its stored `expiresAt` is moved
 *   an hour into the past through the store's own compare-and-set `update` (the server-side token
 *   is still valid; what matters is that Latchkey must refresh before answering).
 * - `refreshCalls`: refresh_token grants the server saw during the storm (its own counter).
 * - `grantSurvived`: after the storm, the refresh token Latchkey stored is active at the server's
 *   introspection endpoint AND one refresh with it succeeds. A second refresh with the consumed
 *   token would have revoked the grant, and then both checks fail.
 * - `oneRefreshMs`: one raw openid-client `refreshTokenGrant` round trip on another grant, measured
 *   just before the storm: the median of 15 sequential round trips after 5 warm-up ones.
 * - `wallRatio = wallMs / oneRefreshMs`: what 1,000 callers cost over a single refresh. Like the
 *   raw round trip, the Latchkey instance is warmed up first (5 refreshes and 1,000 concurrent
 *   reads on another linked account), so neither side pays for cold code.
 */
import { ConnectionStore, createLatchkey } from "@latchkey/core"
import * as oidc from "openid-client"
import {
  link,
  makeProvider,
  median,
  progress,
  round,
  runEffect,
  storedRefreshToken,
  vaultOptions
} from "./common.ts"
import type { BenchServer } from "./server.ts"

export const CALLERS = 1_000

export interface StormResult {
  readonly callers: number
  readonly refreshCalls: number
  readonly grantSurvived: boolean
  readonly wallMs: number
  readonly oneRefreshMs: number
  readonly wallRatio: number
  readonly callersFailed: number
  readonly distinctTokens: number
  readonly refreshTokenRotated: boolean
}

/** Median of sequential raw openid-client refresh round trips on a fresh grant. */
export const measureOneRefresh = async (server: BenchServer, samples = 15, warmup = 5) => {
  const [grant] = await server.mint(1, "one-refresh")
  const config = server.openidConfig()
  let refreshToken = grant!.refreshToken
  const times: Array<number> = []
  for (let i = 0; i < warmup + samples; i++) {
    const start = performance.now()
    const response = await oidc.refreshTokenGrant(config, refreshToken)
    const ms = performance.now() - start
    if (response.refresh_token === undefined) throw new Error("the server did not rotate the refresh token")
    refreshToken = response.refresh_token
    if (i >= warmup) times.push(ms)
  }
  return median(times)
}

export const benchStorm = async (server: BenchServer): Promise<StormResult> => {
  const store = ConnectionStore.makeMemory()
  const lk = createLatchkey({ providers: [makeProvider(server)], store, vault: vaultOptions })
  try {
    const { id } = await link(lk, "storm")
    const oldAccess = await lk.accessToken(id)
    const oldRefresh = await storedRefreshToken(lk, id)

    // Expire the stored access token through the store's compare-and-set.
    const record = await runEffect(store.get(id))
    if (record === undefined) throw new Error("storm: the linked connection is not in the store")
    const now = Date.now()
    await runEffect(
      store.update(
        {
          ...record,
          obtainedAt: now - 2 * 3600_000,
          expiresAt: now - 3600_000,
          refreshDueAt: now - 3600_000,
          updatedAt: now,
          version: record.version + 1
        },
        record.version
      )
    )

    // Warm-up, as for the raw round trip: the refresh path and the concurrent read path of this
    // instance run a few times on another linked account before the storm.
    const warm = await link(lk, "storm-warm-up")
    for (let i = 0; i < 5; i++) await lk.refresh(warm.id)
    await Promise.all(Array.from({ length: CALLERS }, () => lk.accessToken(warm.id)))

    const oneRefreshMs = await measureOneRefresh(server)
    progress("storm", `one raw refresh round trip: ${round(oneRefreshMs)} ms`)

    const before = (await server.grants()).refresh_token
    const start = performance.now()
    const settled = await Promise.allSettled(Array.from({ length: CALLERS }, () => lk.accessToken(id)))
    const wallMs = performance.now() - start
    const refreshCalls = (await server.grants()).refresh_token - before

    const tokens = new Set<string>()
    let callersFailed = 0
    for (const s of settled) {
      if (s.status === "fulfilled") tokens.add(s.value)
      else callersFailed++
    }
    const newRefresh = await storedRefreshToken(lk, id)
    const refreshTokenRotated = newRefresh !== undefined && newRefresh !== oldRefresh
    const grantSurvived =
      callersFailed === 0 &&
      !tokens.has(oldAccess) &&
      newRefresh !== undefined &&
      (await server.grantAlive(newRefresh)).alive
    progress(
      "storm",
      `${CALLERS} callers in ${round(wallMs)} ms, ${refreshCalls} refresh call(s), grant survived: ${grantSurvived}`
    )
    return {
      callers: CALLERS,
      refreshCalls,
      grantSurvived,
      wallMs: round(wallMs),
      oneRefreshMs: round(oneRefreshMs),
      wallRatio: round(wallMs / oneRefreshMs),
      callersFailed,
      distinctTokens: tokens.size,
      refreshTokenRotated
    }
  } finally {
    await lk.close()
  }
}
