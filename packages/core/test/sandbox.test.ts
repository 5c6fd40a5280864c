/**
 * The sandbox kit (`@latchkey/core/sandbox`): its authorization server enforces what a real one does
 * (PKCE S256, exact redirect URIs, single-use codes, rotating refresh tokens, client authentication),
 * its faults behave as documented, its driver walks the HTML page like a browser, and the engine links,
 * refreshes and revokes against it.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import { createLatchkey, Provider } from "../src/index.ts"
import {
  approve,
  escapeHtml,
  json,
  type OAuthSandbox,
  parseForms,
  type SandboxAccount,
  SandboxDriverError,
  s256,
  startOAuthSandbox,
  startSandboxServer
} from "../src/sandbox/index.ts"

const REDIRECT = "http://127.0.0.1:9/callback"
const VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
const CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"

interface Person extends SandboxAccount {
  readonly email: string
}

const accounts: ReadonlyArray<Person> = [
  { id: "u1", label: "ada@example.com", description: "first", email: "ada@example.com" },
  { id: "u2", label: "bob@example.com", description: "second <b>", email: "bob@example.com" }
]

let sandbox: OAuthSandbox<Person>
let clock = Date.now()

beforeAll(async () => {
  sandbox = await startOAuthSandbox<Person>({
    name: "Acme",
    clients: [
      { clientId: "public", redirectUris: [REDIRECT], auth: "none", name: "Public App" },
      { clientId: "post", clientSecret: "post-secret", redirectUris: [REDIRECT], auth: "client_secret_post" },
      {
        clientId: "basic",
        clientSecret: "basic secret:1",
        redirectUris: [REDIRECT],
        auth: "client_secret_basic"
      }
    ],
    accounts,
    paths: {
      authorize: "/oauth/authorize",
      token: "/oauth/token",
      refresh: "/oauth/refresh",
      revoke: "/oauth/revoke"
    },
    pkce: "optional",
    scopes: ["read", "write"],
    now: () => clock,
    lifetimes: { accessTokenSeconds: 60, refreshTokenSeconds: 3600 }
  })
  sandbox.route("GET", "/me", "me", (req) => {
    const auth = sandbox.authenticate(req)
    if (!auth.ok) return json(401, { error: auth.reason })
    return json(200, { id: auth.account.id, email: auth.account.email, kind: auth.kind })
  })
})
afterAll(() => sandbox.close())
afterEach(() => {
  sandbox.clearFaults()
  sandbox.registry.refreshTokens = {
    rotate: true,
    reuseRevokesGrant: false,
    reuseGraceSeconds: 0,
    issue: true
  }
})

const authorizeUrl = (params: Record<string, string>) => {
  const u = new URL(sandbox.endpoints.authorization)
  for (const [k, v] of Object.entries({
    response_type: "code",
    client_id: "public",
    redirect_uri: REDIRECT,
    state: "st-1",
    ...params
  })) {
    if (v !== "") u.searchParams.set(k, v)
  }
  return u.toString()
}

const post = (url: string, form: Record<string, string>, headers: Record<string, string> = {}) =>
  fetch(url, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded", ...headers },
    body: new URLSearchParams(form),
    redirect: "manual"
  })

const codeFor = async (account: string, extra: Record<string, string> = {}) => {
  const cb = new URL(
    await approve(authorizeUrl({ code_challenge: CHALLENGE, code_challenge_method: "S256", ...extra }), {
      account
    })
  )
  return cb.searchParams.get("code")!
}

const exchange = (code: string, extra: Record<string, string> = {}) =>
  post(sandbox.endpoints.token, {
    grant_type: "authorization_code",
    code,
    client_id: "public",
    redirect_uri: REDIRECT,
    code_verifier: VERIFIER,
    ...extra
  })

const me = (token: string) => fetch(`${sandbox.url}/me`, { headers: { authorization: `Bearer ${token}` } })

describe("authorize page and driver", () => {
  it("S256 of the RFC 7636 test vector", () => {
    expect(s256(VERIFIER)).toBe(CHALLENGE)
  })

  it("renders a plain HTML form with an account chooser, escaped, and Approve / Deny", async () => {
    const page = await (await fetch(authorizeUrl({}))).text()
    const [form] = parseForms(page)
    expect(form!.method).toBe("POST")
    expect(form!.choices.account!.map((c) => c.value)).toEqual(["u1", "u2"])
    expect(page).toContain(escapeHtml("second <b>"))
    expect(page).not.toContain("second <b>")
    expect(form!.buttons.map((b) => b.label)).toEqual(["Approve", "Deny"])
    expect(form!.fields.map(([k]) => k)).toEqual(["transaction", "account"])
  })

  it("approve: the chosen account, the state passed through", async () => {
    const cb = new URL(await approve(authorizeUrl({}), { account: "bob@example.com" }))
    expect(cb.origin + cb.pathname).toBe(REDIRECT)
    expect(cb.searchParams.get("state")).toBe("st-1")
    // PKCE is optional on this sandbox: no challenge, no verifier.
    const res = await post(sandbox.endpoints.token, {
      grant_type: "authorization_code",
      code: cb.searchParams.get("code")!,
      client_id: "public",
      redirect_uri: REDIRECT
    }).then((r) => r.json())
    expect(res).toMatchObject({ token_type: "Bearer" })
    const who = await me((res as { access_token: string }).access_token).then((r) => r.json())
    expect(who).toMatchObject({ id: "u2" })
  })

  it("deny redirects with access_denied and the state", async () => {
    const cb = new URL(await approve(authorizeUrl({}), { deny: true }))
    expect(cb.searchParams.get("error")).toBe("access_denied")
    expect(cb.searchParams.get("state")).toBe("st-1")
    expect(cb.searchParams.has("code")).toBe(false)
  })

  it("an unregistered redirect_uri or client gets an error page, never a redirect", async () => {
    await expect(approve(authorizeUrl({ redirect_uri: "http://127.0.0.1:9/callback/" }))).rejects.toThrow(
      /redirect_uri is not registered/
    )
    await expect(approve(authorizeUrl({ client_id: "nobody" }))).rejects.toBeInstanceOf(SandboxDriverError)
  })

  it("protocol errors go back to the app: response_type, PKCE method, scope", async () => {
    const e1 = new URL(await approve(authorizeUrl({ response_type: "token" })))
    expect(e1.searchParams.get("error")).toBe("unsupported_response_type")
    const e2 = new URL(
      await approve(authorizeUrl({ code_challenge: CHALLENGE, code_challenge_method: "plain" }))
    )
    expect(e2.searchParams.get("error")).toBe("invalid_request")
    const e3 = new URL(await approve(authorizeUrl({ scope: "read admin" })))
    expect(e3.searchParams.get("error")).toBe("invalid_scope")
    expect(e3.searchParams.get("state")).toBe("st-1")
  })

  it("an authorize transaction is single-use", async () => {
    const page = await (await fetch(authorizeUrl({}))).text()
    const [form] = parseForms(page)
    const body = new URLSearchParams([...form!.fields, ["decision", "approve"]])
    const first = await post(sandbox.endpoints.authorization, Object.fromEntries(body))
    expect(first.status).toBe(302)
    const second = await post(sandbox.endpoints.authorization, Object.fromEntries(body))
    expect(second.status).toBe(400)
  })

  it("the driver refuses an account the page does not offer", async () => {
    await expect(approve(authorizeUrl({}), { account: "carol" })).rejects.toThrow(/no account "carol"/)
  })
})

describe("codes and tokens", () => {
  it("exchanges a code with PKCE S256; the token works on the API", async () => {
    const res = await exchange(await codeFor("u2"))
    expect(res.headers.get("cache-control")).toBe("no-store")
    const body = (await res.json()) as Record<string, unknown>
    expect(body).toMatchObject({ token_type: "Bearer", expires_in: 60 })
    expect(typeof body.refresh_token).toBe("string")
    const who = await me(body.access_token as string).then((r) => r.json())
    expect(who).toEqual({ id: "u2", email: "bob@example.com", kind: "oauth" })
  })

  it("a code is single-use: the second use fails and revokes what the first issued", async () => {
    const code = await codeFor("u1")
    const first = (await exchange(code).then((r) => r.json())) as { access_token: string }
    expect((await me(first.access_token)).status).toBe(200)
    const second = await exchange(code)
    expect(second.status).toBe(400)
    expect(await second.json()).toMatchObject({ error: "invalid_grant" })
    expect((await me(first.access_token)).status).toBe(401)
  })

  it("rejects a wrong verifier, a missing one and another redirect_uri", async () => {
    for (const extra of [
      { code_verifier: "x".repeat(43) },
      { code_verifier: "" },
      { redirect_uri: "http://127.0.0.1:9/other" }
    ]) {
      const code = await codeFor("u1")
      const res = await exchange(code, extra)
      expect(await res.json()).toMatchObject({ error: "invalid_grant" })
    }
  })

  it("rejects a JSON body and a missing grant_type", async () => {
    const res = await fetch(sandbox.endpoints.token, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: "{}"
    })
    expect(await res.json()).toMatchObject({ error: "invalid_request" })
    expect(await post(sandbox.endpoints.token, { client_id: "public" }).then((r) => r.json())).toMatchObject({
      error: "invalid_request"
    })
  })

  it("refreshes only at the separate refresh URL, rotating; reuse is invalid_grant", async () => {
    const tokens = (await exchange(await codeFor("u1")).then((r) => r.json())) as Record<string, string>
    const atToken = await post(sandbox.endpoints.token, {
      grant_type: "refresh_token",
      client_id: "public",
      refresh_token: tokens.refresh_token!
    })
    expect(await atToken.json()).toMatchObject({ error: "unsupported_grant_type" })
    const before = sandbox.calls.refresh ?? 0
    const refreshed = (await post(sandbox.endpoints.refresh!, {
      grant_type: "refresh_token",
      client_id: "public",
      refresh_token: tokens.refresh_token!
    }).then((r) => r.json())) as Record<string, string>
    expect(sandbox.calls.refresh).toBe(before + 1)
    expect(refreshed.refresh_token).not.toBe(tokens.refresh_token)
    const reuse = await post(sandbox.endpoints.refresh!, {
      grant_type: "refresh_token",
      client_id: "public",
      refresh_token: tokens.refresh_token!
    })
    expect(reuse.status).toBe(400)
    expect(await reuse.json()).toMatchObject({
      error: "invalid_grant",
      error_description: "refresh token was already used"
    })
    // Without reuseRevokesGrant the new token still works.
    expect((await me(refreshed.access_token!)).status).toBe(200)
  })

  it("reuse of a consumed refresh token revokes the whole grant when configured", async () => {
    sandbox.registry.refreshTokens = { ...sandbox.registry.refreshTokens, reuseRevokesGrant: true }
    const { grant, tokenResponse } = sandbox.issueGrant({ account: "u1" })
    const rt = tokenResponse.refresh_token as string
    expect(sandbox.registry.grantOfToken(rt)).toBe(grant)
    expect(sandbox.registry.grantOfToken(tokenResponse.access_token as string)).toBe(grant)
    expect(sandbox.registry.grantOfToken("nope")).toBeUndefined()
    const next = sandbox.registry.refresh({ refreshToken: rt, clientId: "public" })
    expect(() => sandbox.registry.refresh({ refreshToken: rt, clientId: "public" })).toThrow(/already used/)
    expect(grant.revoked).toBe(true)
    expect(() => sandbox.registry.refresh({ refreshToken: next.refreshToken, clientId: "public" })).toThrow(
      /revoked/
    )
  })

  it("non-rotating refresh tokens are kept and reusable", () => {
    sandbox.registry.refreshTokens = { ...sandbox.registry.refreshTokens, rotate: false }
    const { tokenResponse } = sandbox.issueGrant({ account: "u1" })
    const rt = tokenResponse.refresh_token as string
    const a = sandbox.registry.refresh({ refreshToken: rt, clientId: "public" })
    const b = sandbox.registry.refresh({ refreshToken: rt, clientId: "public" })
    expect(a.refreshToken).toBeUndefined()
    expect(b.accessToken).not.toBe(a.accessToken)
  })

  it("lifetimes: access and refresh tokens expire on the sandbox's clock", async () => {
    const { tokenResponse } = sandbox.issueGrant({ account: "u2" })
    expect((await me(tokenResponse.access_token as string)).status).toBe(200)
    clock += 61_000
    expect(await me(tokenResponse.access_token as string).then((r) => r.json())).toEqual({ error: "expired" })
    clock += 3600_000
    expect(() =>
      sandbox.registry.refresh({ refreshToken: tokenResponse.refresh_token as string, clientId: "public" })
    ).toThrow(/expired/)
  })

  it("expireAccessTokens makes an account's tokens expire now", async () => {
    const { tokenResponse } = sandbox.issueGrant({ account: "u2" })
    expect(sandbox.expireAccessTokens({ accountId: "u2" })).toBeGreaterThan(0)
    expect((await me(tokenResponse.access_token as string)).status).toBe(401)
  })

  it("revoking a refresh token revokes the grant (RFC 7009); unknown tokens answer 200", async () => {
    const { tokenResponse } = sandbox.issueGrant({ account: "u1" })
    const res = await post(sandbox.endpoints.revocation!, {
      token: tokenResponse.refresh_token as string,
      token_type_hint: "refresh_token",
      client_id: "public"
    })
    expect(res.status).toBe(200)
    expect((await me(tokenResponse.access_token as string)).status).toBe(401)
    expect((await post(sandbox.endpoints.revocation!, { token: "nope", client_id: "public" })).status).toBe(
      200
    )
  })

  it("API keys authenticate as their account", async () => {
    const key = sandbox.issueApiKey("u1")
    const who = await fetch(`${sandbox.url}/me`, { headers: { "X-Api-Key": key } }).then((r) => r.json())
    expect(who).toMatchObject({ id: "u1", kind: "api_key" })
    sandbox.registry.revokeApiKey(key)
    expect((await fetch(`${sandbox.url}/me`, { headers: { "x-api-key": key } })).status).toBe(401)
    expect(await fetch(`${sandbox.url}/me`).then((r) => r.json())).toEqual({ error: "missing" })
  })
})

describe("client authentication", () => {
  const code = async (clientId: string) => {
    const cb = new URL(await approve(authorizeUrl({ client_id: clientId }), { account: "u1" }))
    return cb.searchParams.get("code")!
  }
  const basic = (id: string, secret: string) =>
    `Basic ${Buffer.from(`${encodeURIComponent(id)}:${encodeURIComponent(secret)}`).toString("base64")}`

  it("client_secret_post: right secret works, wrong secret is invalid_client 401", async () => {
    const ok = await post(sandbox.endpoints.token, {
      grant_type: "authorization_code",
      code: await code("post"),
      client_id: "post",
      client_secret: "post-secret",
      redirect_uri: REDIRECT
    })
    expect(ok.status).toBe(200)
    const bad = await post(sandbox.endpoints.token, {
      grant_type: "authorization_code",
      code: await code("post"),
      client_id: "post",
      client_secret: "wrong",
      redirect_uri: REDIRECT
    })
    expect(bad.status).toBe(401)
    expect(await bad.json()).toMatchObject({ error: "invalid_client" })
  })

  it("client_secret_basic with form-encoded credentials; other methods refused", async () => {
    const ok = await post(
      sandbox.endpoints.token,
      { grant_type: "authorization_code", code: await code("basic"), redirect_uri: REDIRECT },
      { authorization: basic("basic", "basic secret:1") }
    )
    expect(ok.status).toBe(200)
    const asPost = await post(sandbox.endpoints.token, {
      grant_type: "authorization_code",
      code: await code("basic"),
      client_id: "basic",
      client_secret: "basic secret:1",
      redirect_uri: REDIRECT
    })
    expect(asPost.status).toBe(401)
    // A confidential client cannot pass as a public one.
    const asPublic = await post(sandbox.endpoints.token, {
      grant_type: "authorization_code",
      code: await code("basic"),
      client_id: "basic",
      redirect_uri: REDIRECT
    })
    expect(await asPublic.json()).toMatchObject({ error: "invalid_client" })
  })
})

describe("faults", () => {
  const refreshForm = (rt: string) => ({
    grant_type: "refresh_token",
    client_id: "public",
    refresh_token: rt
  })

  it("status, rate_limit and malformed answer without processing; then it works", async () => {
    const { tokenResponse } = sandbox.issueGrant({ account: "u1" })
    const rt = tokenResponse.refresh_token as string
    sandbox.inject({ endpoint: "refresh", fault: "status", status: 502 })
    sandbox.inject({ endpoint: "refresh", fault: "rate_limit", retryAfterSeconds: 7 })
    sandbox.inject({ endpoint: "refresh", fault: "malformed" })
    const r1 = await post(sandbox.endpoints.refresh!, refreshForm(rt))
    expect(r1.status).toBe(502)
    const r2 = await post(sandbox.endpoints.refresh!, refreshForm(rt))
    expect(r2.status).toBe(429)
    expect(r2.headers.get("retry-after")).toBe("7")
    const r3 = await post(sandbox.endpoints.refresh!, refreshForm(rt))
    expect(r3.status).toBe(200)
    await expect(r3.json()).rejects.toThrow()
    // None of them consumed the refresh token.
    const r4 = await post(sandbox.endpoints.refresh!, refreshForm(rt))
    expect(r4.status).toBe(200)
    expect(sandbox.server.pendingFaults()).toEqual([])
  })

  it("delay answers normally afterwards; times counts matching requests only", async () => {
    sandbox.inject({ endpoint: "me", fault: "delay", ms: 5, times: 2 })
    sandbox.inject({ endpoint: "token", grantType: "refresh_token", fault: "status" })
    const { tokenResponse } = sandbox.issueGrant({ account: "u1" })
    expect((await me(tokenResponse.access_token as string)).status).toBe(200)
    expect(sandbox.server.pendingFaults()[0]).toMatchObject({ endpoint: "me", remaining: 1 })
    expect((await exchange(await codeFor("u1"))).status).toBe(200)
    expect(sandbox.server.pendingFaults()).toHaveLength(2)
  })

  it("drop closes the connection unprocessed; drop_after_rotate processes it first", async () => {
    const { tokenResponse } = sandbox.issueGrant({ account: "u1" })
    const rt = tokenResponse.refresh_token as string
    sandbox.inject({ endpoint: "refresh", fault: "drop" })
    await expect(post(sandbox.endpoints.refresh!, refreshForm(rt))).rejects.toThrow()
    sandbox.inject({ endpoint: "refresh", fault: "drop_after_rotate" })
    await expect(post(sandbox.endpoints.refresh!, refreshForm(rt))).rejects.toThrow()
    const after = await post(sandbox.endpoints.refresh!, refreshForm(rt))
    expect(await after.json()).toMatchObject({
      error: "invalid_grant",
      error_description: "refresh token was already used"
    })
    expect(sandbox.countCalls({ endpoint: "refresh", grantType: "refresh_token" })).toBeGreaterThanOrEqual(3)
  })
})

describe("hooks and the bare server", () => {
  it("fields, onApprove data, token extras and token-request validation", async () => {
    const s = await startOAuthSandbox({
      name: "Hooks",
      clients: [{ clientId: "c", clientSecret: "s", redirectUris: [REDIRECT], auth: "client_secret_post" }],
      accounts: [{ id: "a", label: "Agency" }],
      paths: { authorize: "/authorize", token: "/token" },
      pkce: "none",
      sendExpiresIn: false,
      sendScope: true,
      authorizePage: {
        fields: () =>
          `<select name="place"><option value="p1">One</option><option value="p2">Two</option></select>`,
        onApprove: ({ form }) =>
          form.get("place") === "p3" ? { error: "no such place" } : { data: { place: form.get("place") } }
      },
      validateTokenRequest: ({ form }) =>
        form.get("user_type") === "Location"
          ? undefined
          : { error: "invalid_request", description: "user_type required" },
      tokenResponseExtras: ({ grant, kind }) => ({ placeId: grant.data.place, kind })
    })
    try {
      const url = `${s.endpoints.authorization}?response_type=code&client_id=c&redirect_uri=${encodeURIComponent(REDIRECT)}&scope=a%20b`
      await expect(approve(url, { fields: { place: "p3" } })).rejects.toThrow(/no such place/)
      await expect(approve(url, { fields: { nowhere: "x" } })).rejects.toThrow(/no field "nowhere"/)
      const code = new URL(await approve(url, { fields: { place: "p2" } })).searchParams.get("code")!
      const form = {
        grant_type: "authorization_code",
        code,
        client_id: "c",
        client_secret: "s",
        redirect_uri: REDIRECT
      }
      expect(await post(s.endpoints.token, form).then((r) => r.json())).toMatchObject({
        error: "invalid_request"
      })
      const code2 = new URL(await approve(url, { fields: { place: "p2" } })).searchParams.get("code")!
      const body = (await post(s.endpoints.token, { ...form, code: code2, user_type: "Location" }).then((r) =>
        r.json()
      )) as Record<string, unknown>
      expect(body).toMatchObject({ placeId: "p2", kind: "authorization_code", scope: "a b" })
      expect(body).not.toHaveProperty("expires_in")
      const refreshed = await post(s.endpoints.token, {
        grant_type: "refresh_token",
        refresh_token: body.refresh_token as string,
        client_id: "c",
        client_secret: "s",
        user_type: "Location"
      }).then((r) => r.json())
      expect(refreshed).toMatchObject({ placeId: "p2", kind: "refresh_token" })
    } finally {
      await s.close()
    }
  })

  it("routes with :params, 404 and 405, counters", async () => {
    const server = await startSandboxServer()
    try {
      server.route({
        method: "GET",
        path: "/things/:id",
        endpoint: "thing",
        handler: (r) => json(200, { id: r.params.id })
      })
      expect(await fetch(`${server.url}/things/a%20b`).then((r) => r.json())).toEqual({ id: "a b" })
      expect((await fetch(`${server.url}/things`)).status).toBe(404)
      expect((await fetch(`${server.url}/things/x`, { method: "POST" })).status).toBe(405)
      expect(server.calls.thing).toBe(1)
      server.resetCalls()
      expect(server.calls.thing).toBeUndefined()
      expect(() => server.inject({ endpoint: "thing", fault: "drop", times: 0 })).toThrow(RangeError)
    } finally {
      await server.close()
    }
  })
})

describe("the engine against a kit sandbox", () => {
  it("links with PKCE, refreshes at the separate URL, survives a 503, unlinks with revocation", async () => {
    const provider = Provider.make({
      id: "acme",
      name: "Acme",
      clientId: "public",
      clientAuth: "none",
      redirectUri: REDIRECT,
      endpoints: {
        issuer: sandbox.url,
        authorization: sandbox.endpoints.authorization,
        token: sandbox.endpoints.token,
        refresh: sandbox.endpoints.refresh,
        revocation: sandbox.endpoints.revocation
      },
      apiBaseUrl: sandbox.url,
      identify: async ({ fetch }) => {
        const body = (await (await fetch(`${sandbox.url}/me`)).json()) as { id: string; email: string }
        return { accountId: body.id, label: body.email }
      }
    })
    const lk = createLatchkey({ providers: [provider], config: { baseBackoffMs: 5, maxBackoffMs: 50 } })
    try {
      const { url } = await lk.startAuthorization({ providerId: "acme", ownerId: "owner" })
      const callback = await approve(url, { account: "u2" })
      const { connection } = await lk.completeAuthorization({ callback, ownerId: "owner" })
      expect(connection).toMatchObject({ accountId: "u2", label: "bob@example.com", status: "active" })
      const before = { token: sandbox.calls.token ?? 0, refresh: sandbox.calls.refresh ?? 0 }
      sandbox.inject({ endpoint: "refresh", fault: "status", status: 503 })
      await lk.refresh(connection.id)
      expect(sandbox.calls.refresh).toBe(before.refresh + 2)
      expect(sandbox.calls.token).toBe(before.token)
      const res = await lk.fetch(connection.id, "/me")
      expect(await res.json()).toMatchObject({ id: "u2" })
      const grant = sandbox.registry.grants({ accountId: "u2" }).at(-1)!
      expect(await lk.unlink(connection.id)).toEqual({ revokedAtProvider: true })
      expect(grant.revoked).toBe(true)
    } finally {
      await lk.close()
    }
  })
})
