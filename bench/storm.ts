/**
 * Storm: 1,000 concurrent `accessToken` calls on one connection whose access token has expired, at a
 * token server with rotating single-use refresh tokens and reuse detection (a replayed refresh token
 * revokes the whole grant).
 *
 * - The connection is linked through the real consent forms and refreshed once (like the baseline's
 *   grant, it is not on its first refresh, which costs the token server more), then its stored
 *   `expiresAt` is moved an hour into the past through the store's own compare-and-set `update` (the
 *   server-side token is still valid; what matters is that Latchkey must refresh before answering).
 * - `refreshCalls`: refresh_token grants the server saw during the storm (its own counter).
 * - `grantSurvived`: after the storm, the refresh token Latchkey stored is active at the server's
 *   introspection endpoint AND one refresh with it succeeds. A second refresh with the consumed
 *   token would have revoked the grant, and then both checks fail.
 * - `storms` storms (31, BENCH_STORMS; quick: 5), each on its own linked connection; one storm is a single
 *   measurement of a few milliseconds, so the figures are medians: `wallMs` is the median storm's
 *   wall (`wallsMs` has each), `leaderSyncMs` and `issueMs` the medians of the first call's own time
 *   and of the time to issue all the calls (the leader's request leaves only after that), and
 *   `oneRefreshMs` the median of the raw round trips measured just before each storm (7 sequential
 *   ones after 2 warm-up ones, openid-client alone, on another grant linked the same way through the
 *   consent forms, its refresh token taken from the store).
 *   `mintedRefreshMs`: the same on a minted grant, for comparison (the baseline before).
 * - `wallRatio = wallMs / oneRefreshMs`: what 1,000 callers cost over a single refresh. Like the
 *   raw round trip, the Latchkey instance is warmed up first (5 storms and 595 smaller ones on another
 *   linked account; the raw side makes as many refreshes first),
 *   so neither side pays for cold code.
 */
import { ConnectionStore, createLatchkey } from "@latchkey/core"
import * as oidc from "openid-client"
import {
  expireStored,
  link,
  makeProvider,
  median,
  progress,
  round,
  storedRefreshToken,
  vaultOptions
} from "./common.ts"
import type { BenchServer } from "./server.ts"

export const CALLERS = 1_000
/** Refreshes each side makes before the measured storms (the engine's and openid-client's code warm). */
const WARM_UP = 600

export interface StormResult {
  readonly callers: number
  /** Storms run, each on its own linked connection. */
  readonly storms: number
  /** The most refresh calls the server saw in one storm (must be 1), and each storm's. */
  readonly refreshCalls: number
  readonly refreshCallsPerStorm: ReadonlyArray<number>
  readonly grantSurvived: boolean
  /** The median storm's wall, and each storm's. */
  readonly wallMs: number
  readonly wallsMs: ReadonlyArray<number>
  /**
   * The first call's own time, median storm: the leader's work up to its first wait (store read,
   * decode, lease, journal write and the protocol layer's first step), done before any request leaves.
   */
  readonly leaderSyncMs: number
  /** All 1,000 calls issued (the leader's share and 999 callers joining its flight), median storm. */
  readonly issueMs: number
  /** The median of the raw round trips measured just before each storm. */
  readonly oneRefreshMs: number
  /** One raw refresh of a minted grant (the baseline before; not used for the ratio). */
  readonly mintedRefreshMs: number
  readonly wallRatio: number
  readonly callersFailed: number
  readonly distinctTokens: number
  readonly refreshTokenRotated: boolean
}

/** Sequential raw round trips from `refreshToken`: their median, and the refresh token to go on with. */
const measureRaw = async (server: BenchServer, refreshToken: string, samples: number, warmup: number) => {
  const config = server.openidConfig()
  let token = refreshToken
  const times: Array<number> = []
  for (let i = 0; i < warmup + samples; i++) {
    const start = performance.now()
    const response = await oidc.refreshTokenGrant(config, token)
    const ms = performance.now() - start
    if (response.refresh_token === undefined) throw new Error("the server did not rotate the refresh token")
    token = response.refresh_token
    if (i >= warmup) times.push(ms)
  }
  return { ms: median(times), refreshToken: token }
}

/**
 * Median of sequential raw openid-client refresh round trips, from `startWith` (a refresh token) or
 * on a freshly minted grant.
 */
export const measureOneRefresh = async (
  server: BenchServer,
  samples = 15,
  warmup = 5,
  startWith?: string | undefined
) =>
  (
    await measureRaw(
      server,
      startWith ?? (await server.mint(1, "one-refresh"))[0]!.refreshToken,
      samples,
      warmup
    )
  ).ms

export const benchStorm = async (server: BenchServer, storms = 5): Promise<StormResult> => {
  const store = ConnectionStore.makeMemory()
  const lk = createLatchkey({ providers: [makeProvider(server)], store, vault: vaultOptions })
  try {
    // Warm-up, as for the raw round trip: the refresh path and the concurrent read path of this
    // instance run a few times on another linked account before the storms.
    const warm = await link(lk, "storm-warm-up")
    for (let i = 0; i < WARM_UP; i++) {
      await expireStored(store, warm.id)
      await Promise.all(Array.from({ length: i < 5 ? CALLERS : 10 }, () => lk.accessToken(warm.id)))
    }

    // The baseline refreshes a grant of the same kind as the storms': one linked through the same
    // consent forms, whose refresh token is then used by openid-client alone.
    const baseline = await link(lk, "storm-baseline")
    let baselineToken = await storedRefreshToken(lk, baseline.id)
    if (baselineToken === undefined) throw new Error("storm: the baseline account has no refresh token")
    // The figure the bench used before (a minted grant), kept for comparison.
    const mintedRefreshMs = await measureOneRefresh(server)
    // The raw path warmed as much as the engine's.
    baselineToken = (await measureRaw(server, baselineToken, 1, WARM_UP)).refreshToken

    const walls: Array<number> = []
    const leaders: Array<number> = []
    const issues: Array<number> = []
    const raws: Array<number> = []
    const calls: Array<number> = []
    let grantSurvived = true
    let callersFailed = 0
    let distinctTokens = 0
    let refreshTokenRotated = true
    for (let k = 0; k < storms; k++) {
      const { id } = await link(lk, `storm-${k}`)
      // Refreshed once first, as the baseline's grant has been: the first refresh of a grant just
      // linked costs the token server about 0.2-0.3 ms more here (raw openid-client, 60 grants).
      await expireStored(store, id)
      await lk.accessToken(id)
      const oldAccess = await lk.accessToken(id)
      const oldRefresh = await storedRefreshToken(lk, id)
      await expireStored(store, id)

      // The raw round trip just before this storm: the median of 7 after 2 warm-up ones.
      const raw = await measureRaw(server, baselineToken, 7, 2)
      baselineToken = raw.refreshToken
      raws.push(raw.ms)

      const before = (await server.grants()).refresh_token
      const start = performance.now()
      // The first call returns once the leader waits for something (its request is on its way out
      // only after the calls of this turn of the event loop): its share, then all the calls issued.
      const first = lk.accessToken(id)
      leaders.push(performance.now() - start)
      const pending = [first, ...Array.from({ length: CALLERS - 1 }, () => lk.accessToken(id))]
      issues.push(performance.now() - start)
      const settled = await Promise.allSettled(pending)
      const wallMs = performance.now() - start
      calls.push((await server.grants()).refresh_token - before)
      walls.push(wallMs)

      const tokens = new Set<string>()
      let failed = 0
      for (const s of settled) {
        if (s.status === "fulfilled") tokens.add(s.value)
        else failed++
      }
      const newRefresh = await storedRefreshToken(lk, id)
      refreshTokenRotated &&= newRefresh !== undefined && newRefresh !== oldRefresh
      const survived =
        failed === 0 &&
        !tokens.has(oldAccess) &&
        newRefresh !== undefined &&
        (await server.grantAlive(newRefresh)).alive
      grantSurvived &&= survived
      callersFailed += failed
      distinctTokens = Math.max(distinctTokens, tokens.size)
      progress(
        "storm",
        `storm ${k + 1}/${storms}: ${CALLERS} callers in ${round(wallMs)} ms (one raw refresh ${round(raw.ms)} ms; the first call ${round(leaders[k]!, 3)} ms, all issued ${round(issues[k]!, 3)} ms), ${calls[k]} refresh call(s), grant survived: ${survived}`
      )
    }
    const wallMs = median(walls)
    const oneRefreshMs = median(raws)
    return {
      callers: CALLERS,
      storms,
      refreshCalls: Math.max(...calls),
      refreshCallsPerStorm: calls,
      grantSurvived,
      wallMs: round(wallMs),
      wallsMs: walls.map((w) => round(w)),
      leaderSyncMs: round(median(leaders), 3),
      issueMs: round(median(issues), 3),
      oneRefreshMs: round(oneRefreshMs),
      mintedRefreshMs: round(mintedRefreshMs),
      wallRatio: round(wallMs / oneRefreshMs),
      callersFailed,
      distinctTokens,
      refreshTokenRotated
    }
  } finally {
    await lk.close()
  }
}
