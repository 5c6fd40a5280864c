/**
 * The same storm without Latchkey: 1,000 concurrent callers on one expired connection, each doing
 * what users write with a bare OAuth client — read the row from the app's database, refresh if it
 * has expired, write the new tokens back — once with openid-client alone and once with simple-oauth2.
 * The "database" is a shared in-memory Map behind async get/set (a real database only widens the
 * window between read and write). Each pattern runs on its own fresh grant at the same server.
 *
 * With rotating single-use refresh tokens, every caller that read the expired row sends the same
 * refresh token; the server honours the first and, seeing the consumed token again, revokes the
 * grant (RFC 9700 reuse detection). `grantSurvived` is checked exactly as for Latchkey: the refresh
 * token left in the database is active at introspection and refreshes once more.
 */
import * as oidc from "openid-client"
import { AuthorizationCode } from "simple-oauth2"
import { progress, round } from "./common.ts"
import type { BenchServer } from "./server.ts"
import { CALLERS } from "./storm.ts"

export interface NaiveResult {
  readonly refreshCalls: number
  readonly grantSurvived: boolean
  readonly callersFailed: number
  readonly wallMs: number
}

/** The app's token table: async like any database client. */
const makeDb = <Row>() => {
  const rows = new Map<string, Row>()
  return {
    get: async (key: string) => rows.get(key),
    set: async (key: string, row: Row) => {
      rows.set(key, row)
    }
  }
}

const storm = async (
  server: BenchServer,
  name: string,
  caller: () => Promise<unknown>,
  finalRefreshToken: () => Promise<string | undefined>
): Promise<NaiveResult> => {
  const before = (await server.grants()).refresh_token
  const start = performance.now()
  const settled = await Promise.allSettled(Array.from({ length: CALLERS }, caller))
  const wallMs = performance.now() - start
  const refreshCalls = (await server.grants()).refresh_token - before
  const callersFailed = settled.filter((s) => s.status === "rejected").length
  const left = await finalRefreshToken()
  const grantSurvived = left !== undefined && (await server.grantAlive(left)).alive
  progress(
    "naive",
    `${name}: ${refreshCalls} refresh calls, ${callersFailed} callers failed, grant survived: ${grantSurvived}`
  )
  return { refreshCalls, grantSurvived, callersFailed, wallMs: round(wallMs) }
}

interface OpenidRow {
  readonly accessToken: string
  readonly refreshToken: string
  readonly expiresAt: number
}

export const benchNaiveOpenidClient = async (server: BenchServer): Promise<NaiveResult> => {
  const [grant] = await server.mint(1, "naive-openid-client")
  const config = server.openidConfig()
  const db = makeDb<OpenidRow>()
  const key = "connection-1"
  await db.set(key, {
    accessToken: grant!.accessToken,
    refreshToken: grant!.refreshToken,
    expiresAt: Date.now() - 3600_000
  })
  const caller = async () => {
    const row = await db.get(key)
    if (row === undefined) throw new Error("no row")
    if (row.expiresAt > Date.now()) return row.accessToken
    const tokens = await oidc.refreshTokenGrant(config, row.refreshToken)
    await db.set(key, {
      accessToken: tokens.access_token,
      refreshToken: tokens.refresh_token ?? row.refreshToken,
      expiresAt: Date.now() + (tokens.expires_in ?? 3600) * 1000
    })
    return tokens.access_token
  }
  return storm(server, "openid-client", caller, async () => (await db.get(key))?.refreshToken)
}

export const benchNaiveSimpleOauth2 = async (server: BenchServer): Promise<NaiveResult> => {
  const [grant] = await server.mint(1, "naive-simple-oauth2")
  const client = new AuthorizationCode({
    client: { id: "basic-client", secret: server.clientSecret },
    auth: { tokenHost: server.issuer, tokenPath: "/token" },
    options: { authorizationMethod: "header" }
  })
  // simple-oauth2's documented pattern: persist `accessToken.token`, recreate with `createToken`.
  const db = makeDb<Record<string, unknown>>()
  const key = "connection-1"
  await db.set(key, {
    access_token: grant!.accessToken,
    refresh_token: grant!.refreshToken,
    token_type: "Bearer",
    expires_at: new Date(Date.now() - 3600_000).toISOString()
  })
  const caller = async () => {
    const row = await db.get(key)
    if (row === undefined) throw new Error("no row")
    let token = client.createToken(row)
    if (token.expired()) {
      token = await token.refresh()
      await db.set(key, { ...token.token })
    }
    return token.token.access_token
  }
  return storm(server, "simple-oauth2", caller, async () => {
    const row = await db.get(key)
    return typeof row?.refresh_token === "string" ? row.refresh_token : undefined
  })
}
