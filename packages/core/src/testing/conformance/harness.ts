/**
 * The harness every conformance check runs in: a Latchkey per check, behind a fetch the suite controls
 * (it counts the refresh requests that reach the server and injects transient failures in front of
 * it), and the helpers the checks share.
 */
import assert from "node:assert/strict"
import { Effect, Redacted } from "effect"
import type { Connection, ConnectionSummary } from "../../Connection.ts"
import { Connections, write } from "../../Connections.ts"
import { Events, type LatchkeyEvent } from "../../Events.ts"
import { createLatchkey, type LatchkeyClient } from "../../Latchkey.ts"
import * as OAuth from "../../OAuth.ts"
import type * as Provider from "../../Provider.ts"
import { TokenManager } from "../../TokenManager.ts"
import type { TokenSet } from "../../TokenSet.ts"
import type { ConformanceAccount, ConformanceServer } from "./types.ts"

export type Fault = "503" | "429" | "garbage" | "network" | "lose_response"

export const OWNER = "conformance-owner-1"
export const OTHER_OWNER = "conformance-owner-2"

export const bodyText = (body: unknown): string =>
  body instanceof URLSearchParams ? body.toString() : typeof body === "string" ? body : ""

export const isRefreshRequest = (init: RequestInit | undefined): boolean =>
  new URLSearchParams(bodyText(init?.body)).get("grant_type") === "refresh_token"

export const faultResponse = (fault: Exclude<Fault, "network" | "lose_response">): Response => {
  switch (fault) {
    case "503":
      return new Response("upstream unavailable", { status: 503, headers: { "content-type": "text/plain" } })
    case "429":
      return new Response(JSON.stringify({ error: "slow_down" }), {
        status: 429,
        headers: { "content-type": "application/json", "retry-after": "0" }
      })
    case "garbage":
      return new Response("<html><body>Bad gateway</body></html>", {
        status: 200,
        headers: { "content-type": "text/html" }
      })
  }
}

export interface Harness {
  readonly server: ConformanceServer
  readonly provider: Provider.Provider
  readonly lk: LatchkeyClient
  readonly events: Array<LatchkeyEvent>
  /** The fetch every request goes through (also for the suite's own protocol calls). */
  readonly fetch: typeof fetch
  /** Refresh requests that reached the server (faults answered in front of it are not counted). */
  readonly refreshesSent: () => number
  /** Answer the next refresh requests with these faults, in order. */
  readonly inject: (...faults: Array<Fault>) => void
  readonly protocol: OAuth.ProtocolOptions
}

export const MAX_ATTEMPTS = 3

export const harness = async (server: ConformanceServer): Promise<Harness> => {
  const base = server.fetch ?? ((input, init) => fetch(input, init))
  const queue: Array<Fault> = []
  let sent = 0
  const counting: typeof fetch = async (input, init) => {
    if (!isRefreshRequest(init)) return base(input, init)
    const fault = queue.shift()
    if (fault === "network") throw new TypeError("fetch failed")
    if (fault !== undefined && fault !== "lose_response") return faultResponse(fault)
    sent++
    const response = await base(input, init)
    if (fault === "lose_response") {
      await response.body?.cancel()
      throw new TypeError("fetch failed: the connection closed before the answer arrived")
    }
    return response
  }
  const lk = createLatchkey({
    providers: [server.provider],
    config: {
      fetch: counting,
      baseBackoffMs: 1,
      maxBackoffMs: 50,
      maxAttempts: MAX_ATTEMPTS,
      requestTimeoutMs: 15_000
    }
  })
  const events: Array<LatchkeyEvent> = []
  await lk.run(
    Events.use((e) =>
      Effect.sync(() => {
        e.subscribe((event) => events.push(event))
      })
    )
  )
  return {
    server,
    provider: server.provider,
    lk,
    events,
    fetch: counting,
    refreshesSent: () => sent,
    inject: (...faults) => queue.push(...faults),
    protocol: { timeoutMs: 15_000, fetch: counting }
  }
}

export const withHarness = async (
  server: ConformanceServer,
  f: (h: Harness) => Promise<void>
): Promise<void> => {
  const h = await harness(server)
  try {
    await f(h)
  } finally {
    await h.lk.close()
  }
}

/** Count refresh requests (ours, and the server's own count when it gives one) around `f`. */
export const countingRefreshes = async <A>(
  h: Harness,
  f: () => Promise<A>
): Promise<{ value: A; sent: number; seenByServer: number | undefined }> => {
  const sent = h.refreshesSent()
  const seen = h.server.refreshCount?.()
  const value = await f()
  return {
    value,
    sent: h.refreshesSent() - sent,
    seenByServer: seen === undefined ? undefined : h.server.refreshCount!() - seen
  }
}

export const expectRefreshes = (
  counted: { sent: number; seenByServer: number | undefined },
  expected: number,
  what: string
) => {
  assert.equal(
    counted.sent,
    expected,
    `${what}: ${expected} refresh request(s) should reach the server, not ${counted.sent}`
  )
  if (counted.seenByServer !== undefined) {
    assert.equal(
      counted.seenByServer,
      expected,
      `${what}: the server counted ${counted.seenByServer} refresh grant(s), expected ${expected}`
    )
  }
}

export const rejection = async (promise: Promise<unknown>, what: string): Promise<Record<string, any>> => {
  try {
    await promise
  } catch (e) {
    return e as Record<string, any>
  }
  assert.fail(`${what} should have failed`)
}

export const link = async (
  h: Harness,
  account: ConformanceAccount,
  ownerId = OWNER
): Promise<{ connection: ConnectionSummary; relinked: boolean; callback: string }> => {
  const { url } = await h.lk.startAuthorization({ providerId: h.provider.id, ownerId })
  const callback = await h.server.approve(url, account.login)
  const result = await h.lk.completeAuthorization({ callback, providerId: h.provider.id, ownerId })
  return { connection: result.connection, relinked: result.relinked, callback }
}

export const decoded = (h: Harness, id: string): Promise<Connection> =>
  h.lk.run(TokenManager.use((t) => t.get(id)))

export const patchTokens = (h: Harness, id: string, patch: (tokens: TokenSet) => Partial<TokenSet>) =>
  h.lk.run(
    Effect.gen(function* () {
      const connections = yield* Connections
      yield* connections.modify(id, (c) => write({ ...c, tokens: { ...c.tokens, ...patch(c.tokens) } }))
    })
  )

export const secretsOf = (h: Harness, ...tokens: Array<TokenSet | undefined>): Array<string> => {
  const out: Array<string> = []
  if (h.provider.clientSecretValue) out.push(Redacted.value(h.provider.clientSecretValue))
  for (const t of tokens) {
    if (t === undefined) continue
    out.push(Redacted.value(t.accessToken))
    if (t.refreshToken) out.push(Redacted.value(t.refreshToken))
  }
  return out.filter((s) => s.length >= 6)
}

export const assertNoSecrets = (error: unknown, secrets: ReadonlyArray<string>, what: string) => {
  const e = error as { message?: unknown }
  const text = `${String(error)} ${String(e?.message)} ${JSON.stringify(error)}`
  for (const secret of secrets) {
    assert.ok(!text.includes(secret), `${what}: the error contains a token or the client secret`)
  }
}

/** Call the who-am-I URL with a token, the way the provider authorizes API requests. */
export const probe = async (h: Harness, accessToken: string, tokenType = "Bearer") => {
  const url = new URL(h.server.whoAmI, h.provider.apiBaseUrl)
  const headers = new Headers({ accept: "application/json" })
  for (const [k, v] of Object.entries(
    h.provider.authorizeRequest({ kind: "oauth", accessToken, tokenType })
  )) {
    headers.set(k, v)
  }
  const response = await h.fetch(url, { headers, signal: AbortSignal.timeout(15_000) })
  let body: unknown
  if ((response.headers.get("content-type") ?? "").includes("json")) {
    try {
      body = await response.json()
    } catch {
      body = undefined
    }
  } else {
    await response.body?.cancel()
  }
  return {
    status: response.status,
    verdict: h.provider.classifyResponse({ status: response.status, headers: response.headers, body })
  }
}

export const refreshOutOfBand = (h: Harness, refreshToken: string) =>
  Effect.runPromise(
    OAuth.refresh(h.provider, h.protocol, refreshToken).pipe(
      Effect.match({
        onFailure: (failure) => ({ ok: false as const, failure }),
        onSuccess: (response) => ({ ok: true as const, response })
      })
    )
  )

// What the server declares about itself (with the defaults), for the checks' `notApplicable`.

export const refreshTokens = (s: ConformanceServer) => s.issuesRefreshTokens ?? true
export const expiring = (s: ConformanceServer) => s.accessTokensExpire ?? true
export const revocable = (s: ConformanceServer) =>
  s.revocation ??
  (s.provider.revoke !== undefined ||
    s.provider.endpoints?.revocation !== undefined ||
    s.provider.discovery !== undefined)
export const confidential = (s: ConformanceServer) => s.provider.clientAuth !== "none"
export const noRefreshTokens = (s: ConformanceServer) =>
  refreshTokens(s) ? undefined : "the server issues no refresh tokens"

export const expectIdentity = (connection: ConnectionSummary, account: ConformanceAccount, what: string) => {
  assert.ok(connection.accountId.length > 0, `${what}: the account id is empty`)
  assert.ok(connection.label.length > 0, `${what}: the label is empty`)
  if (account.accountId !== undefined) {
    assert.equal(connection.accountId, account.accountId, `${what}: the account id of ${account.login}`)
  }
  if (account.label !== undefined) {
    assert.equal(connection.label, account.label, `${what}: the label of ${account.login}`)
  }
}
