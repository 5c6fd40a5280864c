/**
 * The provider conformance suite. Given a provider and a server that behaves like the provider (its
 * sandbox, a real authorization server, or the provider itself), it checks what an app relies on:
 * linking (the authorize URL, the code exchange, the account's identity), refresh (one request per
 * refresh, rotation as declared, expiry), revocation, and the error mapping (a rejected refresh token
 * ends in `needs_reauth`, transient failures never do, the API's "bad token" answer is recognized,
 * wrong client credentials and bad codes are refused without storing anything, and no secret ever
 * shows in an error).
 *
 * ```ts
 * import { providerConformance } from "@latchkey/core/testing"
 *
 * providerConformance({
 *   name: "GitHub on its sandbox",
 *   server: async () => {
 *     const sandbox = await startSandbox()
 *     return {
 *       provider: GitHub.provider({ ...sandbox.credentials, baseUrl: sandbox.url }),
 *       approve: (url, login) => sandbox.approve(url, { account: login }),
 *       accounts: [{ login: "octocat" }, { login: "hubot" }],
 *       whoAmI: "/user",
 *       close: () => sandbox.close()
 *     }
 *   }
 * })
 * ```
 *
 * Every check uses its own Latchkey instance and in-memory store; all traffic goes through a fetch
 * the suite controls, which counts the refresh requests that reach the server and injects transient
 * failures in front of it (so no server needs a fault-injection feature). The checks are also
 * exported one by one (`checks`, `runCheck`) to run them outside vitest.
 */
import assert from "node:assert/strict"
import { randomBytes } from "node:crypto"
import { Effect, Redacted } from "effect"
import { afterAll, beforeAll, describe, it } from "vitest"
import type { Connection, ConnectionSummary } from "../Connection.ts"
import { Connections, write } from "../Connections.ts"
import { Events, type LatchkeyEvent } from "../Events.ts"
import { createLatchkey, type LatchkeyClient } from "../Latchkey.ts"
import * as OAuth from "../OAuth.ts"
import * as Provider from "../Provider.ts"
import { TokenManager } from "../TokenManager.ts"
import type { TokenSet } from "../TokenSet.ts"

export interface ConformanceAccount {
  /** Who the authorize driver signs in as. */
  readonly login: string
  /** The account id the provider must report for this login; omit when the server assigns it. */
  readonly accountId?: string | undefined
  /** The label the provider must report; omit to only require a non-empty one. */
  readonly label?: string | undefined
}

export interface ConformanceServer {
  /** The provider under test, configured to talk to this server. */
  readonly provider: Provider.Provider
  /** Act as the user on the authorize page who approves as `login`; resolve the callback URL. */
  readonly approve: (authorizeUrl: string, login: string) => Promise<string>
  /** Act as the user who refuses; resolve the callback URL (with `error=access_denied`). */
  readonly deny?: ((authorizeUrl: string) => Promise<string>) | undefined
  /** Two different accounts at the server. */
  readonly accounts: readonly [ConformanceAccount, ConformanceAccount]
  /**
   * An API URL that answers 2xx to a valid access token and refuses an invalid one (the who-am-I
   * endpoint): absolute, or relative to the provider's `apiBaseUrl`.
   */
  readonly whoAmI: string
  /** Whether linking yields a refresh token. Default true. */
  readonly issuesRefreshTokens?: boolean | undefined
  /** Whether access tokens come with an expiry (`expires_in` or the provider's default). Default true. */
  readonly accessTokensExpire?: boolean | undefined
  /** Whether the provider can revoke at the server. Default: it has `revoke`, `endpoints.revocation` or discovery. */
  readonly revocation?: boolean | undefined
  /** Whether revoking also ends the access token (RFC 7009 leaves it to the server). Default true. */
  readonly revocationEndsAccessTokens?: boolean | undefined
  /**
   * The server's own count of refresh-token grants it answered. When given, the suite checks it moves
   * exactly as much as the refresh requests it saw leave.
   */
  readonly refreshCount?: (() => number) | undefined
  /**
   * Make the server refuse this refresh token from now on (a sandbox's admin switch). Without it, the
   * suite spends a rotating refresh token itself, or revokes a reusable one.
   */
  readonly rejectRefreshToken?: ((refreshToken: string) => Promise<void>) | undefined
  /** The fetch that reaches the server. Default: the global fetch. */
  readonly fetch?: typeof fetch | undefined
  /** Stop the server. */
  readonly close?: (() => Promise<void>) | undefined
}

export interface ConformanceCheck {
  /** Stable name, e.g. `"refresh"`. */
  readonly name: string
  /** What the check proves, as a test title. */
  readonly title: string
  /** Why the check does not apply to this server, or undefined when it does. */
  readonly notApplicable: (server: ConformanceServer) => string | undefined
  readonly run: (server: ConformanceServer) => Promise<void>
}

export interface ProviderConformanceOptions {
  /** The describe block's title. Default: `provider conformance: <provider name>`. */
  readonly name?: string | undefined
  /** Start the server and describe it. Called once, before the checks. */
  readonly server: () => Promise<ConformanceServer>
  /** Checks to leave out, by name, each with the reason (shown as a skipped test). */
  readonly skip?: Readonly<Record<string, string>> | undefined
}

// ---------------------------------------------------------------------------------------------
// The harness: a Latchkey per check, behind a fetch that counts and injects faults
// ---------------------------------------------------------------------------------------------

type Fault = "503" | "429" | "garbage" | "network" | "lose_response"

const OWNER = "conformance-owner-1"
const OTHER_OWNER = "conformance-owner-2"

const bodyText = (body: unknown): string =>
  body instanceof URLSearchParams ? body.toString() : typeof body === "string" ? body : ""

const isRefreshRequest = (init: RequestInit | undefined): boolean =>
  new URLSearchParams(bodyText(init?.body)).get("grant_type") === "refresh_token"

const faultResponse = (fault: Exclude<Fault, "network" | "lose_response">): Response => {
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

interface Harness {
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

const MAX_ATTEMPTS = 3

const harness = async (server: ConformanceServer): Promise<Harness> => {
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

const withHarness = async (server: ConformanceServer, f: (h: Harness) => Promise<void>): Promise<void> => {
  const h = await harness(server)
  try {
    await f(h)
  } finally {
    await h.lk.close()
  }
}

/** Count refresh requests (ours, and the server's own count when it gives one) around `f`. */
const countingRefreshes = async <A>(
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

const expectRefreshes = (
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

const rejection = async (promise: Promise<unknown>, what: string): Promise<Record<string, any>> => {
  try {
    await promise
  } catch (e) {
    return e as Record<string, any>
  }
  assert.fail(`${what} should have failed`)
}

const link = async (
  h: Harness,
  account: ConformanceAccount,
  ownerId = OWNER
): Promise<{ connection: ConnectionSummary; relinked: boolean; callback: string }> => {
  const { url } = await h.lk.startAuthorization({ providerId: h.provider.id, ownerId })
  const callback = await h.server.approve(url, account.login)
  const result = await h.lk.completeAuthorization({ callback, providerId: h.provider.id, ownerId })
  return { connection: result.connection, relinked: result.relinked, callback }
}

const decoded = (h: Harness, id: string): Promise<Connection> => h.lk.run(TokenManager.use((t) => t.get(id)))

const patchTokens = (h: Harness, id: string, patch: (tokens: TokenSet) => Partial<TokenSet>) =>
  h.lk.run(
    Effect.gen(function* () {
      const connections = yield* Connections
      yield* connections.modify(id, (c) => write({ ...c, tokens: { ...c.tokens, ...patch(c.tokens) } }))
    })
  )

const secretsOf = (h: Harness, ...tokens: Array<TokenSet | undefined>): Array<string> => {
  const out: Array<string> = []
  if (h.provider.clientSecretValue) out.push(Redacted.value(h.provider.clientSecretValue))
  for (const t of tokens) {
    if (t === undefined) continue
    out.push(Redacted.value(t.accessToken))
    if (t.refreshToken) out.push(Redacted.value(t.refreshToken))
  }
  return out.filter((s) => s.length >= 6)
}

const assertNoSecrets = (error: unknown, secrets: ReadonlyArray<string>, what: string) => {
  const e = error as { message?: unknown }
  const text = `${String(error)} ${String(e?.message)} ${JSON.stringify(error)}`
  for (const secret of secrets) {
    assert.ok(!text.includes(secret), `${what}: the error contains a token or the client secret`)
  }
}

/** Call the who-am-I URL with a token, the way the provider authorizes API requests. */
const probe = async (h: Harness, accessToken: string, tokenType = "Bearer") => {
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

const refreshOutOfBand = (h: Harness, refreshToken: string) =>
  Effect.runPromise(
    OAuth.refresh(h.provider, h.protocol, refreshToken).pipe(
      Effect.match({
        onFailure: (failure) => ({ ok: false as const, failure }),
        onSuccess: (response) => ({ ok: true as const, response })
      })
    )
  )

// ---------------------------------------------------------------------------------------------
// Facts
// ---------------------------------------------------------------------------------------------

const refreshTokens = (s: ConformanceServer) => s.issuesRefreshTokens ?? true
const expiring = (s: ConformanceServer) => s.accessTokensExpire ?? true
const revocable = (s: ConformanceServer) =>
  s.revocation ??
  (s.provider.revoke !== undefined ||
    s.provider.endpoints?.revocation !== undefined ||
    s.provider.discovery !== undefined)
const confidential = (s: ConformanceServer) => s.provider.clientAuth !== "none"
const noRefreshTokens = (s: ConformanceServer) =>
  refreshTokens(s) ? undefined : "the server issues no refresh tokens"

const expectIdentity = (connection: ConnectionSummary, account: ConformanceAccount, what: string) => {
  assert.ok(connection.accountId.length > 0, `${what}: the account id is empty`)
  assert.ok(connection.label.length > 0, `${what}: the label is empty`)
  if (account.accountId !== undefined) {
    assert.equal(connection.accountId, account.accountId, `${what}: the account id of ${account.login}`)
  }
  if (account.label !== undefined) {
    assert.equal(connection.label, account.label, `${what}: the label of ${account.login}`)
  }
}

// ---------------------------------------------------------------------------------------------
// The checks
// ---------------------------------------------------------------------------------------------

const definition: ConformanceCheck = {
  name: "definition",
  title: "the definition is valid and the authorize URL carries what the provider declares",
  notApplicable: () => undefined,
  run: (server) =>
    withHarness(server, async (h) => {
      const p = h.provider
      // A provider made with Provider.make validates again unchanged (it was not assembled by hand).
      const again = Provider.make({ ...p, clientSecret: p.clientSecretValue })
      assert.equal(again.id, p.id, "the provider validates again")
      const { url, state } = await h.lk.startAuthorization({ providerId: p.id, ownerId: OWNER })
      const authorize = new URL(url)
      if (p.endpoints) {
        const declared = new URL(p.endpoints.authorization)
        assert.equal(
          authorize.origin + authorize.pathname,
          declared.origin + declared.pathname,
          "the authorize URL is the declared authorization endpoint"
        )
        for (const [k, v] of declared.searchParams) {
          assert.equal(
            authorize.searchParams.get(k),
            v,
            `the authorization endpoint's own parameter ${k} is kept`
          )
        }
      }
      const q = authorize.searchParams
      assert.equal(q.get("response_type"), "code", "response_type=code")
      assert.equal(q.get("client_id"), p.clientId, "the client id")
      assert.equal(q.get("redirect_uri"), p.redirectUri, "the redirect URI is sent exactly as registered")
      assert.equal(q.get("state"), state, "the state of this flow")
      assert.match(state, /^[A-Za-z0-9_-]{43,}$/, "the state is at least 256 bits, URL-safe")
      if (p.scopes.length > 0) {
        assert.equal(
          q.get("scope"),
          p.scopes.join(p.scopeSeparator),
          "the scopes, joined by the declared separator"
        )
      }
      if (p.pkce === "S256") {
        assert.equal(q.get("code_challenge_method"), "S256", "PKCE S256")
        assert.match(q.get("code_challenge") ?? "", /^[A-Za-z0-9_-]{43}$/, "an S256 challenge")
      } else {
        assert.equal(q.get("code_challenge"), null, "no PKCE challenge when the provider declares pkce: none")
      }
      for (const [k, v] of Object.entries(p.authorizationParams ?? {})) {
        assert.equal(q.get(k), v, `the authorization parameter ${k}`)
      }
      if (p.clientSecretValue) {
        assert.ok(!url.includes(Redacted.value(p.clientSecretValue)), "the client secret is not in the URL")
      }
    })
}

const linking: ConformanceCheck = {
  name: "link",
  title: "links an account: code exchange, identity, tokens as the server issues them, a working token",
  notApplicable: () => undefined,
  run: (server) =>
    withHarness(server, async (h) => {
      const account = server.accounts[0]
      const { connection } = await link(h, account)
      expectIdentity(connection, account, "link")
      assert.equal(connection.status, "active")
      assert.equal(connection.providerId, h.provider.id)
      assert.equal(connection.ownerId, OWNER)
      assert.equal(connection.kind, "oauth")
      assert.equal(
        connection.hasRefreshToken,
        refreshTokens(server),
        refreshTokens(server) ? "linking yields a refresh token" : "linking yields no refresh token"
      )
      assert.equal(
        connection.expiresAt !== undefined,
        expiring(server),
        expiring(server) ? "the access token has an expiry" : "the access token has no expiry"
      )
      if (connection.expiresAt !== undefined) {
        assert.ok(connection.expiresAt > Date.now(), "the new access token is not already expired")
      }
      if (connection.hasRefreshToken && h.provider.defaultRefreshTokenSeconds !== undefined) {
        assert.ok(connection.refreshExpiresAt !== undefined, "the declared refresh-token lifetime applies")
      }
      const linked = h.events.find((e) => e.type === "linked")
      assert.ok(linked, "a linked event is published")
      // The token works against the server's API, through the ApiClient and the provider's headers.
      const me = await h.lk.fetch(connection.id, server.whoAmI)
      await me.body?.cancel()
      assert.ok(me.ok, `the who-am-I endpoint accepts the new token (answered ${me.status})`)
    })
}

const accounts: ConformanceCheck = {
  name: "accounts",
  title: "links two accounts side by side; the same account again replaces its tokens",
  notApplicable: () => undefined,
  run: (server) =>
    withHarness(server, async (h) => {
      const [first, second] = server.accounts
      const a = await link(h, first)
      const b = await link(h, second)
      expectIdentity(a.connection, first, "first account")
      expectIdentity(b.connection, second, "second account")
      assert.notEqual(a.connection.accountId, b.connection.accountId, "two accounts have two account ids")
      assert.notEqual(a.connection.id, b.connection.id)
      const again = await link(h, first)
      assert.equal(again.relinked, true, "linking the same account again is a relink")
      assert.equal(again.connection.id, a.connection.id, "the account id is stable across links")
      assert.equal((await h.lk.connections(OWNER)).length, 2)
      // Another owner linking the same account gets a connection of its own.
      const other = await link(h, first, OTHER_OWNER)
      assert.notEqual(other.connection.id, a.connection.id)
      assert.equal(other.connection.accountId, a.connection.accountId)
      assert.equal((await h.lk.connections(OTHER_OWNER)).length, 1)
    })
}

const denied: ConformanceCheck = {
  name: "denied",
  title: "a user who refuses consent gets access_denied and nothing is stored",
  notApplicable: (s) => (s.deny === undefined ? "no deny driver was given" : undefined),
  run: (server) =>
    withHarness(server, async (h) => {
      const { url } = await h.lk.startAuthorization({ providerId: h.provider.id, ownerId: OWNER })
      const callback = await server.deny!(url)
      assert.equal(
        new URL(callback).searchParams.get("error"),
        "access_denied",
        "the server redirects with error=access_denied"
      )
      const error = await rejection(
        h.lk.completeAuthorization({ callback }),
        "completing a denied authorization"
      )
      assert.equal(error._tag, "AuthorizationError")
      assert.equal(error.reason, "access_denied")
      assert.deepEqual(await h.lk.connections(OWNER), [])
    })
}

const badCode: ConformanceCheck = {
  name: "bad-code",
  title: "a code the server does not know is refused for good (not retryable), nothing stored",
  notApplicable: () => undefined,
  run: (server) =>
    withHarness(server, async (h) => {
      const { url } = await h.lk.startAuthorization({ providerId: h.provider.id, ownerId: OWNER })
      const callback = new URL(await server.approve(url, server.accounts[0].login))
      const code = callback.searchParams.get("code")
      assert.ok(code, "the server redirects with a code")
      callback.searchParams.set("code", `conformance-${randomBytes(12).toString("hex")}`)
      const error = await rejection(
        h.lk.completeAuthorization({ callback: callback.href }),
        "exchanging an unknown code"
      )
      assert.equal(error._tag, "AuthorizationError")
      assert.ok(
        ["invalid_grant", "invalid_client", "exchange_failed"].includes(error.reason),
        `an unknown code is a rejection, not "${error.reason}" (a retryable reason means the server's error answer was not read as one)`
      )
      assert.equal(error.isRetryable, false)
      assert.ok(error.providerError, "the provider's own error code is kept")
      assertNoSecrets(error, [...secretsOf(h), code], "bad code")
      assert.deepEqual(await h.lk.connections(OWNER), [])
    })
}

const wrongSecret: ConformanceCheck = {
  name: "wrong-secret",
  title: "wrong client credentials are refused as invalid_client, nothing stored, no secret in the error",
  notApplicable: (s) => (confidential(s) ? undefined : "a public client has no secret"),
  run: (server) => {
    const wrong = `wrong-${randomBytes(16).toString("hex")}`
    const provider = Provider.make({ ...server.provider, clientSecret: wrong })
    return withHarness({ ...server, provider }, async (h) => {
      const { url } = await h.lk.startAuthorization({ providerId: provider.id, ownerId: OWNER })
      const callback = await server.approve(url, server.accounts[0].login)
      const error = await rejection(
        h.lk.completeAuthorization({ callback }),
        "exchanging with a wrong secret"
      )
      assert.equal(error._tag, "AuthorizationError")
      assert.equal(
        error.reason,
        "invalid_client",
        `wrong client credentials are invalid_client, not "${error.reason}"`
      )
      assertNoSecrets(error, [wrong, ...secretsOf({ ...h, provider: server.provider })], "wrong secret")
      assert.deepEqual(await h.lk.connections(OWNER), [])
    })
  }
}

const refresh: ConformanceCheck = {
  name: "refresh",
  title: "refreshes with one request; new tokens work; the old refresh token behaves as the policy says",
  notApplicable: noRefreshTokens,
  run: (server) =>
    withHarness(server, async (h) => {
      const { connection } = await link(h, server.accounts[0])
      const before = await decoded(h, connection.id)
      const counted = await countingRefreshes(h, () => h.lk.refresh(connection.id))
      expectRefreshes(counted, 1, "one refresh")
      const summary = counted.value
      assert.equal(summary.status, "active")
      assert.equal(summary.version, before.version + 2, "the journal, then the new tokens in one write")
      assert.ok(h.events.some((e) => e.type === "refreshed" && e.connectionId === connection.id))
      const after = await decoded(h, connection.id)
      const oldAccess = Redacted.value(before.tokens.accessToken)
      const newAccess = Redacted.value(after.tokens.accessToken)
      assert.notEqual(newAccess, oldAccess, "the refresh returns a new access token")
      const me = await probe(h, newAccess, after.tokens.tokenType)
      assert.ok(
        me.status >= 200 && me.status < 300,
        `the refreshed access token works (answered ${me.status})`
      )
      const oldRefresh = Redacted.value(before.tokens.refreshToken!)
      const newRefresh = after.tokens.refreshToken ? Redacted.value(after.tokens.refreshToken) : undefined
      if (h.provider.refreshTokenPolicy === "rotating") {
        assert.ok(
          newRefresh !== undefined && newRefresh !== oldRefresh,
          "a rotating provider returns a new refresh token"
        )
        const replay = await countingRefreshes(h, () => refreshOutOfBand(h, oldRefresh))
        expectRefreshes(replay, 1, "replaying the old refresh token")
        assert.equal(
          replay.value.ok,
          false,
          "the server refuses a spent refresh token (the provider is declared rotating)"
        )
        if (!replay.value.ok) {
          assert.equal(
            replay.value.failure.kind,
            "invalid_grant",
            `a spent refresh token is invalid_grant, not ${replay.value.failure.kind} (${replay.value.failure.message})`
          )
        }
      } else {
        assert.equal(newRefresh, oldRefresh, "a reusable provider keeps the refresh token")
        const again = await countingRefreshes(h, () => h.lk.refresh(connection.id))
        expectRefreshes(again, 1, "a second refresh with the same refresh token")
        assert.equal(again.value.status, "active", "the server accepts the reusable refresh token again")
      }
    })
}

const expiry: ConformanceCheck = {
  name: "expiry",
  title: "an expired access token is refreshed once for many concurrent callers",
  notApplicable: noRefreshTokens,
  run: (server) =>
    withHarness(server, async (h) => {
      const { connection } = await link(h, server.accounts[0])
      const now = Date.now()
      await patchTokens(h, connection.id, () => ({ obtainedAt: now - 7_200_000, expiresAt: now - 1_000 }))
      const counted = await countingRefreshes(h, () =>
        Promise.all(Array.from({ length: 8 }, () => h.lk.accessToken(connection.id)))
      )
      expectRefreshes(counted, 1, "eight concurrent callers of an expired token")
      assert.equal(new Set(counted.value).size, 1, "every caller gets the same new token")
      const me = await probe(h, counted.value[0]!)
      assert.ok(me.status >= 200 && me.status < 300, `the new access token works (answered ${me.status})`)
    })
}

const rejected: ConformanceCheck = {
  name: "rejected-refresh",
  title: "a refresh token the server rejects ends in needs_reauth with the provider's error, without retries",
  notApplicable: (s) =>
    noRefreshTokens(s) ??
    (s.rejectRefreshToken === undefined && s.provider.refreshTokenPolicy === "reusable" && !revocable(s)
      ? "a reusable refresh token cannot be made invalid without rejectRefreshToken or revocation"
      : undefined),
  run: (server) =>
    withHarness(server, async (h) => {
      const { connection } = await link(h, server.accounts[0])
      const c = await decoded(h, connection.id)
      const refreshToken = Redacted.value(c.tokens.refreshToken!)
      if (server.rejectRefreshToken) {
        await server.rejectRefreshToken(refreshToken)
      } else if (h.provider.refreshTokenPolicy === "rotating") {
        // Another client (a copy of the database, a script) spends the token first.
        const spent = await refreshOutOfBand(h, refreshToken)
        assert.ok(
          spent.ok,
          `the stored refresh token works out of band (${spent.ok ? "" : spent.failure.message})`
        )
      } else {
        const revoked = await Effect.runPromise(OAuth.revokeTokens(h.provider, h.protocol, c.tokens))
        assert.ok(revoked, "the refresh token was revoked out of band")
      }
      const counted = await countingRefreshes(h, () =>
        rejection(h.lk.refresh(connection.id), "refreshing with a rejected refresh token")
      )
      expectRefreshes(counted, 1, "a rejected refresh token is sent once, never retried")
      const error = counted.value
      assert.equal(
        error._tag,
        "ReauthorizationRequired",
        `expected ReauthorizationRequired, got ${error._tag}: ${error.message}`
      )
      assert.equal(error.reason, "invalid_grant")
      assert.ok(error.providerError, "the provider's own error code is kept")
      assertNoSecrets(error, secretsOf(h, c.tokens), "rejected refresh")
      const summary = await h.lk.connection(connection.id)
      assert.equal(summary.status, "needs_reauth")
      assert.equal(summary.lastError?.code, error.providerError)
      assert.ok(h.events.some((e) => e.type === "needs_reauth" && e.connectionId === connection.id))
      // From now on the connection asks for a new link without calling the server.
      const later = await countingRefreshes(h, () =>
        rejection(h.lk.accessToken(connection.id), "using a connection that needs reauthorization")
      )
      expectRefreshes(later, 0, "a connection that needs reauthorization")
      assert.equal(later.value._tag, "ReauthorizationRequired")
    })
}

const transient: ConformanceCheck = {
  name: "transient",
  title:
    "503 and 429 (Retry-After) in front of the refresh endpoint are retried; the connection stays active",
  notApplicable: noRefreshTokens,
  run: (server) =>
    withHarness(server, async (h) => {
      const { connection } = await link(h, server.accounts[0])
      h.inject("503", "429")
      const counted = await countingRefreshes(h, () => h.lk.refresh(connection.id))
      expectRefreshes(counted, 1, "two transient failures then a success")
      assert.equal(counted.value.status, "active")
      assert.equal(counted.value.lastError, undefined)
      const failures = h.events.filter((e) => e.type === "refresh_failed")
      assert.equal(failures.length, 2, "each transient failure is reported")
      assert.ok(failures.every((e) => e.type === "refresh_failed" && e.retryable))
      assert.ok(!h.events.some((e) => e.type === "needs_reauth"))
    })
}

const garbage: ConformanceCheck = {
  name: "garbage",
  title: "an unreadable answer is a retryable failure that keeps the refresh token",
  notApplicable: noRefreshTokens,
  run: (server) =>
    withHarness(server, async (h) => {
      const { connection } = await link(h, server.accounts[0])
      const before = await decoded(h, connection.id)
      h.inject(...Array<Fault>(MAX_ATTEMPTS).fill("garbage"))
      const counted = await countingRefreshes(h, () =>
        rejection(h.lk.refresh(connection.id), "refreshing against garbage answers")
      )
      expectRefreshes(counted, 0, "answers made up in front of the server")
      assert.equal(counted.value._tag, "RefreshError")
      assert.equal(counted.value.isRetryable, true)
      const after = await decoded(h, connection.id)
      assert.equal(after.status, "active")
      assert.equal(
        Redacted.value(after.tokens.refreshToken!),
        Redacted.value(before.tokens.refreshToken!),
        "the refresh token is kept"
      )
      const recovered = await countingRefreshes(h, () => h.lk.refresh(connection.id))
      expectRefreshes(recovered, 1, "the refresh once the server answers again")
      assert.equal(recovered.value.status, "active")
    })
}

const lostResponse: ConformanceCheck = {
  name: "lost-response",
  title:
    "a refresh whose answer is lost in transit: resent once, and the outcome matches the declared policy",
  notApplicable: noRefreshTokens,
  run: (server) =>
    withHarness(server, async (h) => {
      const { connection } = await link(h, server.accounts[0])
      h.inject("lose_response")
      if (h.provider.refreshTokenPolicy === "rotating") {
        // The server rotated the token but the answer never arrived: the one resend presents a spent
        // token, the server refuses it, and the user is asked to link again (not silently broken),
        // with a reason and a message that say what happened.
        const counted = await countingRefreshes(h, () =>
          rejection(h.lk.refresh(connection.id), "refreshing after a lost answer")
        )
        expectRefreshes(counted, 2, "the lost request and one resend")
        assert.equal(counted.value._tag, "ReauthorizationRequired")
        assert.equal(counted.value.reason, "refresh_interrupted")
        assert.match(String(counted.value.message), /answer was lost/, "the message says the answer was lost")
        assert.doesNotMatch(String(counted.value.message), /already used|already been used/i)
        assert.equal((await h.lk.connection(connection.id)).status, "needs_reauth")
      } else {
        const counted = await countingRefreshes(h, () => h.lk.refresh(connection.id))
        expectRefreshes(counted, 2, "the lost request and one retry")
        assert.equal(counted.value.status, "active", "a reusable refresh token survives a lost answer")
      }
    })
}

const apiUnauthorized: ConformanceCheck = {
  name: "api-401",
  title: "the API's answer to a bad token is recognized: refresh once and retry, or ask for a new link",
  notApplicable: () => undefined,
  run: (server) =>
    withHarness(server, async (h) => {
      // The provider classifies the server's real answer to a made-up token as token_invalid.
      const madeUp = await probe(h, `conformance-${randomBytes(16).toString("hex")}`)
      assert.equal(
        madeUp.verdict,
        "token_invalid",
        `the who-am-I endpoint answered ${madeUp.status} to a made-up token; the provider must classify it token_invalid`
      )
      const { connection } = await link(h, server.accounts[0])
      const bogus = `conformance-${randomBytes(16).toString("hex")}`
      await patchTokens(h, connection.id, () => ({ accessToken: Redacted.make(bogus) }))
      if (refreshTokens(server)) {
        const counted = await countingRefreshes(h, () => h.lk.fetch(connection.id, server.whoAmI))
        expectRefreshes(counted, 1, "one refresh after the API refused the token")
        await counted.value.body?.cancel()
        assert.ok(
          counted.value.ok,
          `the request is retried with the refreshed token (answered ${counted.value.status})`
        )
        assert.notEqual(Redacted.value((await decoded(h, connection.id)).tokens.accessToken), bogus)
      } else {
        const error = await rejection(
          h.lk.fetch(connection.id, server.whoAmI),
          "an API call with a refused token"
        )
        assert.equal(error._tag, "ReauthorizationRequired")
        assert.equal(error.reason, "no_refresh_token")
        assert.equal((await h.lk.connection(connection.id)).status, "needs_reauth")
      }
    })
}

const revoke: ConformanceCheck = {
  name: "revoke",
  title: "unlink revokes at the provider where it can, and the server then refuses the tokens",
  notApplicable: () => undefined,
  run: (server) =>
    withHarness(server, async (h) => {
      const { connection } = await link(h, server.accounts[0])
      const c = await decoded(h, connection.id)
      const result = await h.lk.unlink(connection.id)
      assert.equal(
        result.revokedAtProvider,
        revocable(server),
        revocable(server) ? "the provider revokes at the server" : "the provider has no revocation"
      )
      assert.deepEqual(await h.lk.connections(OWNER), [])
      assert.ok(h.events.some((e) => e.type === "unlinked" && e.connectionId === connection.id))
      if (!revocable(server)) return
      if (server.revocationEndsAccessTokens ?? true) {
        const me = await probe(h, Redacted.value(c.tokens.accessToken), c.tokens.tokenType)
        assert.equal(
          me.verdict,
          "token_invalid",
          `the revoked access token is refused (answered ${me.status})`
        )
      }
      if (c.tokens.refreshToken) {
        const counted = await countingRefreshes(h, () =>
          refreshOutOfBand(h, Redacted.value(c.tokens.refreshToken!))
        )
        assert.equal(counted.value.ok, false, "the server refuses the revoked refresh token")
        if (!counted.value.ok) assert.equal(counted.value.failure.kind, "invalid_grant")
      }
    })
}

/** Every check, in the order the suite runs them. */
export const checks: ReadonlyArray<ConformanceCheck> = [
  definition,
  linking,
  accounts,
  denied,
  badCode,
  wrongSecret,
  refresh,
  expiry,
  rejected,
  transient,
  garbage,
  lostResponse,
  apiUnauthorized,
  revoke
]

/** Run one check by name outside vitest. Rejects with an AssertionError naming what failed. */
export const runCheck = async (
  name: string,
  server: ConformanceServer
): Promise<"passed" | "not_applicable"> => {
  const check = checks.find((c) => c.name === name)
  if (check === undefined) throw new Error(`No conformance check named "${name}"`)
  if (check.notApplicable(server) !== undefined) return "not_applicable"
  await check.run(server)
  return "passed"
}

/**
 * Register the suite with vitest: one `describe` with a test per check. Checks that do not apply to
 * the server (or are listed in `skip`) are reported as skipped, with the reason.
 */
export const providerConformance = (options: ProviderConformanceOptions): void => {
  describe(options.name ?? "provider conformance", () => {
    let server: ConformanceServer | undefined
    beforeAll(async () => {
      server = await options.server()
    })
    afterAll(async () => {
      await server?.close?.()
    })
    for (const check of checks) {
      const skipped = options.skip?.[check.name]
      if (skipped !== undefined) {
        it.skip(`${check.name}: ${check.title} (skipped: ${skipped})`, () => {})
        continue
      }
      it(`${check.name}: ${check.title}`, async (context) => {
        assert.ok(server, "the server did not start")
        const reason = check.notApplicable(server)
        if (reason !== undefined) context.skip(`not applicable: ${reason}`)
        await check.run(server)
      })
    }
  })
}
