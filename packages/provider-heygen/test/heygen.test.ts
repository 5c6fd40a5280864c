/**
 * The HeyGen provider against its sandbox: linking with PKCE, the account and its billing, expiry and
 * refresh at the separate refresh URL, revocation, two accounts side by side, API-key connections, and
 * each injected fault once with the outcome a user expects.
 */
import { createLatchkey, type LatchkeyClient, ReauthorizationRequired } from "@latchkey/core"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import { HeyGen } from "../src/index.ts"
import { type HeyGenSandbox, startHeyGenSandbox } from "../src/sandbox.ts"

const REDIRECT = "http://127.0.0.1:9/heygen/callback"
let sandbox: HeyGenSandbox
const open: Array<LatchkeyClient> = []

beforeAll(async () => {
  sandbox = await startHeyGenSandbox({ redirectUris: [REDIRECT] })
})
afterAll(() => sandbox.close())
afterEach(async () => {
  sandbox.clearFaults()
  await Promise.all(open.splice(0).map((lk) => lk.close()))
})

const latchkey = (urls = sandbox.urls) => {
  const lk = createLatchkey({
    providers: [HeyGen.provider({ clientId: sandbox.clientId, redirectUri: REDIRECT, urls })],
    config: { baseBackoffMs: 10, maxBackoffMs: 200 }
  })
  open.push(lk)
  return lk
}

const link = async (lk: LatchkeyClient, account: string, ownerId = "owner-1", box = sandbox) => {
  const { url } = await lk.startAuthorization({ providerId: "heygen", ownerId })
  const callback = await box.approve(url, { account })
  return (await lk.completeAuthorization({ callback, providerId: "heygen", ownerId })).connection
}

const count = (endpoint: string) => sandbox.calls[endpoint] ?? 0

describe("HeyGen.provider", () => {
  it("is a public PKCE client with HeyGen's hosts and a separate refresh URL", () => {
    const p = HeyGen.provider({ clientId: "abc123", redirectUri: "https://example.com/oauth/callback" })
    expect(p).toMatchObject({
      id: "heygen",
      clientAuth: "none",
      pkce: "S256",
      clientSecretValue: undefined,
      refreshTokenPolicy: "rotating",
      defaultAccessTokenSeconds: 864_000,
      apiBaseUrl: "https://api.heygen.com",
      apiKeys: true,
      endpoints: {
        authorization: "https://app.heygen.com/oauth/authorize",
        token: "https://api2.heygen.com/v1/oauth/token",
        refresh: "https://api2.heygen.com/v1/oauth/refresh_token",
        revocation: "https://api2.heygen.com/v1/oauth/revoke"
      }
    })
  })

  it("builds HeyGen's documented authorize URL", async () => {
    const lk = latchkey({ ...HeyGen.defaultUrls })
    const { url, state } = await lk.startAuthorization({ providerId: "heygen", ownerId: "o" })
    const u = new URL(url)
    expect(u.origin + u.pathname).toBe("https://app.heygen.com/oauth/authorize")
    expect(Object.fromEntries(u.searchParams)).toMatchObject({
      client_id: sandbox.clientId,
      redirect_uri: REDIRECT,
      response_type: "code",
      code_challenge_method: "S256",
      state
    })
    expect(u.searchParams.get("code_challenge")).toMatch(/^[A-Za-z0-9_-]{43}$/)
  })

  it("authorizes OAuth requests with Bearer and API-key requests with X-Api-Key", () => {
    expect(HeyGen.authorizeRequest({ kind: "oauth", accessToken: "t", tokenType: "bearer" })).toEqual({
      Authorization: "Bearer t"
    })
    expect(HeyGen.authorizeRequest({ kind: "api_key", apiKey: "k" })).toEqual({ "X-Api-Key": "k" })
  })

  it("classifies HeyGen's v3 and older error bodies", () => {
    const c = (status: number, body: unknown) =>
      HeyGen.classifyResponse({ status, headers: new Headers(), body })
    expect(c(401, { error: { code: "unauthorized", message: "expired", doc_url: "x" } })).toBe(
      "token_invalid"
    )
    expect(c(401, { code: 401056, message: "Access token expired" })).toBe("token_invalid")
    expect(c(400, { code: 401057, message: "Invalid access token" })).toBe("token_invalid")
    expect(c(200, { code: 401056 })).toBe("token_invalid")
    expect(c(429, { error: { code: "rate_limit_exceeded" } })).toBe("rate_limited")
    expect(c(403, { error: { code: "rate_limit_exceeded" } })).toBe("rate_limited")
    expect(c(402, { error: { code: "insufficient_credits", message: "no credits" } })).toBe("ok")
    expect(c(403, { error: { code: "forbidden" } })).toBe("ok")
    expect(c(500, undefined)).toBe("ok")
  })

  it("parses users/me into a union on billing_type; null and inconsistent billing handled", () => {
    const base = { username: "u", email: "u@example.com", first_name: "U", last_name: null }
    const sub = HeyGen.parseUser({
      code: 100,
      message: null,
      data: {
        ...base,
        billing_type: "subscription",
        wallet: null,
        usage_based: null,
        subscription: {
          plan: "pro",
          credits: {
            premium_credits: { remaining: 10, resets_at: "2026-06-01T00:00:00Z" },
            add_on_credits: { remaining: 5, resets_at: "2026-05-15T00:00:00Z" }
          }
        }
      }
    })
    expect(sub.billing_type).toBe("subscription")
    if (sub.billing_type === "subscription") expect(sub.subscription.plan).toBe("pro")
    expect(HeyGen.credits(sub)).toEqual({
      billingType: "subscription",
      plan: "pro",
      remaining: 15,
      unit: "credits",
      resetsAt: "2026-05-15T00:00:00Z"
    })
    const none = HeyGen.parseUser({
      data: { ...base, billing_type: null, wallet: null, subscription: null, usage_based: null }
    })
    expect(none).toMatchObject({ billing_type: null, wallet: null, subscription: null, usage_based: null })
    expect(HeyGen.credits(none).remaining).toBeNull()
    const inconsistent = HeyGen.parseUser({ data: { ...base, billing_type: "wallet", wallet: null } })
    expect(inconsistent.billing_type).toBeNull()
    const credits = HeyGen.parseUser({
      data: { ...base, billing_type: "wallet", wallet: { currency: "credits", remaining_balance: 7 } }
    })
    expect(HeyGen.credits(credits)).toMatchObject({ unit: "credits", remaining: 7 })
    expect(() => HeyGen.parseUser({ code: 100, data: { email: "x" } })).toThrow(HeyGen.HeyGenApiError)
  })
})

describe("against the HeyGen sandbox", () => {
  it("link → users/me → expire → refresh at the refresh URL → revoke", async () => {
    const lk = latchkey()
    const tokenBefore = count("token")
    const connection = await link(lk, "jane_doe")
    expect(count("token")).toBe(tokenBefore + 1)
    expect(connection).toMatchObject({
      providerId: "heygen",
      accountId: "jane_doe",
      label: "jane@example.com",
      status: "active",
      kind: "oauth",
      hasRefreshToken: true,
      profile: {
        username: "jane_doe",
        email: "jane@example.com",
        name: "Jane Doe",
        billingType: "subscription"
      }
    })
    expect(connection.expiresAt! - connection.updatedAt).toBeGreaterThan(863_000_000)

    const user = await HeyGen.account(lk, connection.id)
    expect(user.billing_type).toBe("subscription")
    expect(HeyGen.credits(user)).toEqual({
      billingType: "subscription",
      plan: "enterprise",
      remaining: 300,
      unit: "credits",
      resetsAt: "2026-05-01T00:00:00Z"
    })

    // The provider expires the token early: the API answers 401, Latchkey refreshes and retries once.
    const oldToken = await lk.accessToken(connection.id)
    const refreshBefore = count("refresh")
    const tokenAfterLink = count("token")
    expect(sandbox.expireAccessTokens({ accountId: "jane_doe" })).toBeGreaterThan(0)
    expect((await HeyGen.account(lk, connection.id)).username).toBe("jane_doe")
    expect(count("refresh")).toBe(refreshBefore + 1)
    expect(count("token")).toBe(tokenAfterLink)
    const newToken = await lk.accessToken(connection.id)
    expect(newToken).not.toBe(oldToken)
    expect((await lk.connection(connection.id)).lastRefreshAt).toBeDefined()

    const revokeBefore = count("revoke")
    expect(await lk.unlink(connection.id)).toEqual({ revokedAtProvider: true })
    expect(count("revoke")).toBe(revokeBefore + 1)
    const after = await fetch(`${sandbox.urls.api}/v3/users/me`, {
      headers: { authorization: `Bearer ${newToken}` }
    })
    expect(after.status).toBe(401)
    expect(await after.json()).toMatchObject({ error: { code: "unauthorized" } })
    await expect(lk.connection(connection.id)).rejects.toMatchObject({ _tag: "ConnectionNotFound" })
  })

  it("refreshes a token whose (short, configured) lifetime ran out before using it", async () => {
    const box = await startHeyGenSandbox({ redirectUris: [REDIRECT], lifetimes: { accessTokenSeconds: 1 } })
    try {
      const lk = latchkey(box.urls)
      const connection = await link(lk, "uma_metered", "owner-1", box)
      expect(connection.expiresAt! - connection.updatedAt).toBeLessThanOrEqual(1000)
      await new Promise((r) => setTimeout(r, 1100))
      expect((await HeyGen.account(lk, connection.id)).billing_type).toBe("usage_based")
      expect(box.calls.refresh).toBe(1)
      expect(box.calls.token).toBe(1)
    } finally {
      await box.close()
    }
  })

  it("assumes ten days when expires_in is missing, and keeps the refresh token when none is returned", async () => {
    const box = await startHeyGenSandbox({
      redirectUris: [REDIRECT],
      sendExpiresIn: false,
      refreshTokens: { rotate: false }
    })
    try {
      const lk = latchkey(box.urls)
      const connection = await link(lk, "walt_wallet", "owner-1", box)
      const lifetime = connection.expiresAt! - connection.updatedAt
      expect(lifetime).toBeGreaterThan(864_000_000 - 10_000)
      expect(lifetime).toBeLessThanOrEqual(864_000_000)
      const grant = box.registry.grants({ accountId: "walt_wallet" })[0]!
      const refreshToken = grant.refreshToken
      await lk.refresh(connection.id)
      // The second refresh through the API's 401: it must still have a refresh token to send.
      box.expireAccessTokens({ accountId: "walt_wallet" })
      expect((await HeyGen.account(lk, connection.id)).billing_type).toBe("wallet")
      expect((await lk.connection(connection.id)).hasRefreshToken).toBe(true)
      expect(grant.refreshes).toBe(2)
      expect(grant.refreshToken).toBe(refreshToken)
      expect(box.calls.refresh).toBe(2)
    } finally {
      await box.close()
    }
  })

  it("two HeyGen accounts side by side for one owner", async () => {
    const lk = latchkey()
    const jane = await link(lk, "jane_doe", "owner-2")
    const walt = await link(lk, "walt_wallet", "owner-2")
    expect(jane.id).not.toBe(walt.id)
    const list = await lk.connections("owner-2")
    expect(list.map((c) => c.label).sort()).toEqual(["jane@example.com", "walt@example.com"])
    const waltUser = await HeyGen.account(lk, walt.id)
    expect(waltUser.billing_type).toBe("wallet")
    if (waltUser.billing_type === "wallet") expect(waltUser.wallet.auto_reload?.enabled).toBe(true)
    expect(HeyGen.credits(waltUser)).toMatchObject({ remaining: 42.5, unit: "usd" })
    expect((await HeyGen.account(lk, jane.id)).billing_type).toBe("subscription")

    // Refreshing one leaves the other untouched.
    const waltToken = await lk.accessToken(walt.id)
    sandbox.expireAccessTokens({ accountId: "jane_doe" })
    await HeyGen.account(lk, jane.id)
    expect(await lk.accessToken(walt.id)).toBe(waltToken)

    // Linking the same HeyGen account again replaces its tokens, it does not add a connection.
    const again = await lk.completeAuthorization({
      callback: await sandbox.approve(
        (await lk.startAuthorization({ providerId: "heygen", ownerId: "owner-2" })).url,
        {
          account: "jane_doe"
        }
      ),
      ownerId: "owner-2"
    })
    expect(again).toMatchObject({ relinked: true, connection: { id: jane.id } })
    expect(await lk.connections("owner-2")).toHaveLength(2)
  })

  it("credits are read live: a change at HeyGen shows on the next call", async () => {
    const lk = latchkey()
    const uma = await link(lk, "uma_metered", "owner-3")
    const before = sandbox.userData("uma_metered")
    try {
      sandbox.setUserData("uma_metered", {
        usage_based: {
          included_credits: 1000,
          remaining_credits: 12,
          spending_cap_usd: null,
          spending_current_usd: 3
        }
      })
      expect(HeyGen.credits(await HeyGen.account(lk, uma.id)).remaining).toBe(12)
    } finally {
      sandbox.setUserData("uma_metered", before)
    }
  })

  it("an API-key connection sends X-Api-Key and never refreshes", async () => {
    const lk = latchkey()
    const key = sandbox.issueApiKey("uma_metered")
    const { connection } = await lk.linkApiKey({ providerId: "heygen", ownerId: "owner-4", apiKey: key })
    expect(connection).toMatchObject({ kind: "api_key", accountId: "uma_metered", label: "uma@example.com" })
    const user = await HeyGen.account(lk, connection.id)
    expect(HeyGen.credits(user)).toMatchObject({ billingType: "usage_based", remaining: 640 })
    const refreshBefore = count("refresh")
    await lk.refresh(connection.id)
    // A revoked key: the 401 is returned as an error to the caller, with no refresh attempted.
    sandbox.registry.revokeApiKey(key)
    const error = await HeyGen.account(lk, connection.id).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(HeyGen.HeyGenApiError)
    expect((error as HeyGen.HeyGenApiError).status).toBe(401)
    expect(String(error)).not.toContain(key)
    expect(count("refresh")).toBe(refreshBefore)
  })

  it("a wrong API key is refused at link time without echoing it", async () => {
    const lk = latchkey()
    const bad = "hg_key_not-a-real-key-0123456789"
    const error = await lk
      .linkApiKey({ providerId: "heygen", ownerId: "owner-5", apiKey: bad })
      .catch((e: unknown) => e)
    expect(error).toMatchObject({ _tag: "AuthorizationError", reason: "identity_failed" })
    expect(String((error as Error).message)).toMatch(/401/)
    expect(String((error as Error).message)).not.toContain(bad)
    expect(await lk.connections("owner-5")).toHaveLength(0)
  })

  it("the older error envelope (401056) also leads to one refresh and a retry", async () => {
    const lk = latchkey()
    const connection = await link(lk, "jane_doe", "owner-6")
    sandbox.expireAccessTokens({ accountId: "jane_doe" })
    const direct = await fetch(`${sandbox.urls.api}/v2/user/remaining_quota`, {
      headers: { authorization: `Bearer ${await lk.accessToken(connection.id)}` }
    })
    expect(await direct.json()).toEqual({ code: 401056, message: "Access token expired" })
    const before = count("refresh")
    const res = await lk.fetch(connection.id, "/v2/user/remaining_quota")
    expect(res.status).toBe(200)
    expect(count("refresh")).toBe(before + 1)
  })

  it("the sandbox holds HeyGen's rules: S256 required, refresh only at its URL, single-use codes", async () => {
    const noPkce = new URL(sandbox.endpoints.authorization)
    for (const [k, v] of Object.entries({
      client_id: sandbox.clientId,
      redirect_uri: REDIRECT,
      response_type: "code",
      state: "s"
    })) {
      noPkce.searchParams.set(k, v)
    }
    const cb = new URL(await sandbox.approve(noPkce))
    expect(cb.searchParams.get("error")).toBe("invalid_request")
    await expect(
      sandbox.approve(
        noPkce.toString().replace(encodeURIComponent(REDIRECT), encodeURIComponent(`${REDIRECT}x`))
      )
    ).rejects.toThrow(/redirect_uri/)
    const { tokenResponse } = sandbox.issueGrant({ account: "jane_doe" })
    const form = {
      client_id: sandbox.clientId,
      grant_type: "refresh_token",
      refresh_token: String(tokenResponse.refresh_token)
    }
    const atToken = await fetch(sandbox.endpoints.token, { method: "POST", body: new URLSearchParams(form) })
    expect(await atToken.json()).toMatchObject({ error: "unsupported_grant_type" })
    const atRefresh = await fetch(sandbox.endpoints.refresh!, {
      method: "POST",
      body: new URLSearchParams(form)
    })
    expect(atRefresh.status).toBe(200)
    const replay = await fetch(sandbox.endpoints.refresh!, {
      method: "POST",
      body: new URLSearchParams(form)
    })
    expect(await replay.json()).toMatchObject({ error: "invalid_grant" })
  })
})

describe("injected faults, once each", () => {
  const setup = async (ownerId: string) => {
    const lk = latchkey()
    const connection = await link(lk, "jane_doe", ownerId)
    return { lk, connection, before: count("refresh") }
  }

  for (const [name, fault] of [
    ["a slow answer", { fault: "delay", ms: 50 }],
    ["a 503", { fault: "status", status: 503 }],
    ["a 429 with Retry-After", { fault: "rate_limit", retryAfterSeconds: 1 }],
    ["a body that is not JSON", { fault: "malformed" }],
    ["a connection dropped before processing", { fault: "drop" }]
  ] as const) {
    it(`refresh survives ${name}`, async () => {
      const { lk, connection, before } = await setup(`fault-${fault.fault}`)
      sandbox.inject({ endpoint: "refresh", ...fault })
      const refreshed = await lk.refresh(connection.id)
      expect(refreshed.status).toBe("active")
      expect(refreshed.lastError).toBeUndefined()
      expect(count("refresh")).toBe(before + (fault.fault === "delay" ? 1 : 2))
      expect((await HeyGen.account(lk, connection.id)).username).toBe("jane_doe")
    })
  }

  it("a rotation whose answer is lost: needs_reauth, with a message that says so", async () => {
    const { lk, connection, before } = await setup("fault-drop-after-rotate")
    const events: Array<string> = []
    lk.on((e) => events.push(e.type))
    sandbox.inject({ endpoint: "refresh", fault: "drop_after_rotate" })
    const error = await lk.refresh(connection.id).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(ReauthorizationRequired)
    expect((error as ReauthorizationRequired).reason).toBe("refresh_interrupted")
    expect((error as ReauthorizationRequired).message).toMatch(/the answer was lost/)
    expect((error as ReauthorizationRequired).message).toMatch(/the one resend was refused/)
    expect((error as ReauthorizationRequired).message).toMatch(/Link the account again/)
    expect(count("refresh")).toBe(before + 2)
    const summary = await lk.connection(connection.id)
    expect(summary.status).toBe("needs_reauth")
    expect(events).toContain("needs_reauth")
    await expect(HeyGen.account(lk, connection.id)).rejects.toBeInstanceOf(ReauthorizationRequired)
    // Linking again brings it back.
    const relinked = await link(lk, "jane_doe", "fault-drop-after-rotate")
    expect(relinked).toMatchObject({ id: connection.id, status: "active" })
  })

  it("an API 429 with Retry-After is waited out and retried", async () => {
    const { lk, connection } = await setup("fault-api-429")
    const calls = count("users_me")
    sandbox.inject({ endpoint: "users_me", fault: "rate_limit", retryAfterSeconds: 0 })
    expect((await HeyGen.account(lk, connection.id)).username).toBe("jane_doe")
    expect(count("users_me")).toBe(calls + 2)
  })

  it("an API 5xx is reported as a HeyGenApiError with HeyGen's code", async () => {
    const { lk, connection } = await setup("fault-api-500")
    sandbox.inject({ endpoint: "users_me", fault: "status", status: 500 })
    const error = await HeyGen.account(lk, connection.id).catch((e: unknown) => e)
    expect(error).toMatchObject({ name: "HeyGenApiError", status: 500, code: "internal_error" })
    expect((await lk.connection(connection.id)).status).toBe("active")
  })
})
