/**
 * The generic provider against a real authorization server: oidc-provider on 127.0.0.1, driven
 * through its login and consent forms with a cookie jar.
 */
import { ConnectionStore, createLatchkey, type LatchkeyClient } from "@latchkey/core"
import { consent, type OidcServer, startOidcServer } from "@latchkey/testkit-oidc"
import { Effect } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { Generic } from "../src/index.ts"

const REDIRECT = "http://127.0.0.1:9/callback"
let server: OidcServer

beforeAll(async () => {
  server = await startOidcServer({
    redirectUris: [REDIRECT],
    accounts: { alice: { email: "alice@example.com" } }
  })
})
afterAll(() => server.close())

const secretOf = (id: string) => server.clients.find((c) => c.client_id === id)?.client_secret

const makeProvider = (
  clientId: string,
  auth: "client_secret_basic" | "client_secret_post" | "none",
  overrides: Partial<Generic.GenericOptions> = {}
) =>
  Generic.provider({
    id: "example",
    name: "Example Corp",
    clientId,
    ...(auth !== "none" ? { clientSecret: secretOf(clientId)! } : {}),
    clientAuth: auth,
    redirectUri: REDIRECT,
    endpoints: server.endpoints,
    scopes: ["openid", "offline_access", "email", "read", "write"],
    authorizationParams: { prompt: "consent" },
    ...overrides
  })

const link = async (lk: LatchkeyClient, login: string, ownerId = "user-1") => {
  const { url } = await lk.startAuthorization({ providerId: "example", ownerId })
  const callback = await consent(url, { login, redirectUri: REDIRECT })
  return { callback, result: await lk.completeAuthorization({ callback, providerId: "example", ownerId }) }
}

const introspect = async (token: string) => {
  const res = await fetch(server.endpoints.introspection, {
    method: "POST",
    headers: {
      authorization: `Basic ${Buffer.from(`basic-client:${secretOf("basic-client")}`).toString("base64")}`,
      "content-type": "application/x-www-form-urlencoded"
    },
    body: new URLSearchParams({ token })
  })
  return (await res.json()) as { active: boolean }
}

/** The refresh token as stored (memory store without a vault key keeps `plain.` values). */
const storedRefreshToken = (store: ConnectionStore.ConnectionStoreShape, id: string) =>
  Effect.runPromise(store.get(id)).then((r) => r!.refreshToken!.replace(/^plain\./, ""))

describe("generic provider against oidc-provider", () => {
  for (const auth of ["client_secret_basic", "client_secret_post", "none"] as const) {
    it(`links an account with ${auth}`, async () => {
      const clientId = {
        client_secret_basic: "basic-client",
        client_secret_post: "post-client",
        none: "public-client"
      }[auth]
      const lk = createLatchkey({ providers: [makeProvider(clientId, auth)] })
      const { url } = await lk.startAuthorization({ providerId: "example", ownerId: "user-1" })
      const authorize = new URL(url)
      expect(authorize.searchParams.get("code_challenge_method")).toBe("S256")
      expect(authorize.searchParams.get("state")).toMatch(/^[A-Za-z0-9_-]{43}$/)
      expect(authorize.searchParams.get("redirect_uri")).toBe(REDIRECT)
      const callback = await consent(url, { login: "alice", redirectUri: REDIRECT })
      expect(new URL(callback).searchParams.get("iss")).toBe(server.issuer)
      const { connection } = await lk.completeAuthorization({
        callback,
        providerId: "example",
        ownerId: "user-1"
      })
      expect(connection).toMatchObject({
        providerId: "example",
        accountId: "alice",
        label: "alice@example.com",
        status: "active"
      })
      expect(connection.hasRefreshToken).toBe(true)
      const token = await lk.accessToken(connection.id)
      expect((await introspect(token)).active).toBe(true)
      await lk.close()
    })
  }

  it("with only an issuer: discovers the metadata and identifies the account at the discovered userinfo_endpoint", async () => {
    const discovered = Generic.provider({
      id: "example",
      name: "Example Corp",
      clientId: "post-client",
      clientSecret: secretOf("post-client")!,
      clientAuth: "client_secret_post",
      redirectUri: REDIRECT,
      issuer: server.issuer,
      scopes: ["openid", "offline_access", "email"],
      authorizationParams: { prompt: "consent" }
    })
    const lk = createLatchkey({ providers: [discovered] })
    const { result } = await link(lk, "dora")
    expect(result.connection.accountId).toBe("dora")
    expect(await lk.refresh(result.connection.id)).toMatchObject({ status: "active" })
    expect((await lk.unlink(result.connection.id)).revokedAtProvider).toBe(true)
    await lk.close()
  })

  it("refreshes with rotation: the new tokens work and the old refresh token is rejected by the server", async () => {
    const store = ConnectionStore.makeMemory()
    const lk = createLatchkey({ providers: [makeProvider("basic-client", "client_secret_basic")], store })
    const { result } = await link(lk, "alice")
    const id = result.connection.id
    const oldRefresh = await storedRefreshToken(store, id)
    const oldAccess = await lk.accessToken(id)
    const before = server.grants.refresh_token
    const refreshed = await lk.refresh(id)
    expect(server.grants.refresh_token - before).toBe(1)
    expect(refreshed.version).toBe(result.connection.version + 2) // the refresh journal, then the new tokens
    const newRefresh = await storedRefreshToken(store, id)
    expect(newRefresh).not.toBe(oldRefresh)
    const newAccess = await lk.accessToken(id)
    expect(newAccess).not.toBe(oldAccess)
    expect((await introspect(newAccess)).active).toBe(true)
    // The server refuses the consumed refresh token (and, per RFC 9700, revokes the grant).
    const replay = await fetch(server.endpoints.token, {
      method: "POST",
      headers: {
        authorization: `Basic ${Buffer.from(`basic-client:${secretOf("basic-client")}`).toString("base64")}`,
        "content-type": "application/x-www-form-urlencoded"
      },
      body: new URLSearchParams({ grant_type: "refresh_token", refresh_token: oldRefresh })
    })
    expect(replay.status).toBe(400)
    expect(((await replay.json()) as { error: string }).error).toBe("invalid_grant")
    await lk.close()
  })

  it("unlink revokes the grant at the provider and removes the connection", async () => {
    const lk = createLatchkey({ providers: [makeProvider("post-client", "client_secret_post")] })
    const { result } = await link(lk, "bob")
    const access = await lk.accessToken(result.connection.id)
    const events: Array<string> = []
    lk.on((e) => events.push(e.type))
    expect(await lk.unlink(result.connection.id)).toEqual({ revokedAtProvider: true })
    expect(await lk.connections("user-1")).toEqual([])
    expect(events).toContain("unlinked")
    // Revoking the refresh token revokes the access tokens issued with it.
    expect((await introspect(access)).active).toBe(false)
    await expect(lk.accessToken(result.connection.id)).rejects.toMatchObject({ _tag: "ConnectionNotFound" })
    await lk.close()
  })

  it("links two accounts of the same provider side by side for one owner", async () => {
    const lk = createLatchkey({ providers: [makeProvider("basic-client", "client_secret_basic")] })
    const a = await link(lk, "alice")
    const b = await link(lk, "carol")
    const list = await lk.connections("user-1")
    expect(list.map((c) => c.accountId).sort()).toEqual(["alice", "carol"])
    expect(a.result.connection.id).not.toBe(b.result.connection.id)
    // Linking the same account again replaces its tokens instead of adding a duplicate.
    const again = await link(lk, "alice")
    expect(again.result.relinked).toBe(true)
    expect(again.result.connection.id).toBe(a.result.connection.id)
    expect((await lk.connections("user-1")).length).toBe(2)
    expect(await lk.connections("someone-else")).toEqual([])
    await lk.close()
  })
})

describe("callbacks that must be refused (typed error, nothing stored)", () => {
  const expectRefused = async (lk: LatchkeyClient, promise: Promise<unknown>, reason: string) => {
    const error = await promise.then(
      () => undefined,
      (e: unknown) => e
    )
    expect(error).toMatchObject({ _tag: "AuthorizationError", reason })
    expect(await lk.connections("user-1")).toEqual([])
    // No secret, code or token in the message.
    const text = `${String(error)} ${(error as Error).message} ${JSON.stringify(error)}`
    expect(text).not.toMatch(/secret-0123456789/)
    return error as { message: string }
  }

  it("an unknown state", async () => {
    const lk = createLatchkey({ providers: [makeProvider("basic-client", "client_secret_basic")] })
    const { url } = await lk.startAuthorization({ providerId: "example", ownerId: "user-1" })
    const callback = new URL(await consent(url, { login: "alice", redirectUri: REDIRECT }))
    callback.searchParams.set("state", "forged-state")
    await expectRefused(lk, lk.completeAuthorization({ callback: callback.href }), "unknown_state")
    await lk.close()
  })

  it("a callback without state", async () => {
    const lk = createLatchkey({ providers: [makeProvider("basic-client", "client_secret_basic")] })
    await expectRefused(lk, lk.completeAuthorization({ callback: `${REDIRECT}?code=abc` }), "missing_state")
    await lk.close()
  })

  it("a replayed state", async () => {
    const lk = createLatchkey({ providers: [makeProvider("basic-client", "client_secret_basic")] })
    const { callback, result } = await link(lk, "alice")
    await lk.unlink(result.connection.id)
    await expectRefused(lk, lk.completeAuthorization({ callback }), "reused_state")
    await lk.close()
  })

  it("an expired state", async () => {
    // The instance's clock is moved past the pending authorization's expiry: no sleep.
    let now = Date.now()
    const lk = createLatchkey({
      providers: [makeProvider("basic-client", "client_secret_basic")],
      config: { pendingTtlMs: 60_000 },
      clock: () => now
    })
    const { url } = await lk.startAuthorization({ providerId: "example", ownerId: "user-1" })
    const callback = await consent(url, { login: "alice", redirectUri: REDIRECT })
    now += 60_000
    await expectRefused(lk, lk.completeAuthorization({ callback }), "expired_state")
    await lk.close()
  })

  it("a state issued for another user", async () => {
    const lk = createLatchkey({ providers: [makeProvider("basic-client", "client_secret_basic")] })
    const { url } = await lk.startAuthorization({ providerId: "example", ownerId: "user-2" })
    const callback = await consent(url, { login: "alice", redirectUri: REDIRECT })
    await expectRefused(lk, lk.completeAuthorization({ callback, ownerId: "user-1" }), "foreign_state")
    expect(await lk.connections("user-2")).toEqual([])
    await lk.close()
  })

  it("an iss that is not the provider's (RFC 9207)", async () => {
    const lk = createLatchkey({ providers: [makeProvider("basic-client", "client_secret_basic")] })
    const { url } = await lk.startAuthorization({ providerId: "example", ownerId: "user-1" })
    const callback = new URL(await consent(url, { login: "alice", redirectUri: REDIRECT }))
    callback.searchParams.set("iss", "https://attacker.example")
    await expectRefused(lk, lk.completeAuthorization({ callback: callback.href }), "iss_mismatch")
    await lk.close()
  })

  it("access_denied when the user refuses consent", async () => {
    const lk = createLatchkey({ providers: [makeProvider("basic-client", "client_secret_basic")] })
    const { url } = await lk.startAuthorization({ providerId: "example", ownerId: "user-1" })
    const callback = await consent(url, { login: "alice", redirectUri: REDIRECT, deny: true })
    expect(new URL(callback).searchParams.get("error")).toBe("access_denied")
    const error = await expectRefused(lk, lk.completeAuthorization({ callback }), "access_denied")
    expect(error.message).toMatch(/denied/)
    await lk.close()
  })

  it("a wrong PKCE verifier", async () => {
    const memory = ConnectionStore.makeMemory()
    // A store that loses the real verifier: the server must refuse the exchange.
    const store: ConnectionStore.ConnectionStoreShape = {
      ...memory,
      putPending: (p) => memory.putPending({ ...p, codeVerifier: `plain.${"x".repeat(43)}` })
    }
    const lk = createLatchkey({ providers: [makeProvider("public-client", "none")], store })
    const { url } = await lk.startAuthorization({ providerId: "example", ownerId: "user-1" })
    const callback = await consent(url, { login: "alice", redirectUri: REDIRECT })
    await expectRefused(lk, lk.completeAuthorization({ callback }), "invalid_grant")
    await lk.close()
  })

  it("a wrong client secret", async () => {
    const lk = createLatchkey({
      providers: [makeProvider("basic-client", "client_secret_basic", { clientSecret: "not-the-secret" })]
    })
    const { url } = await lk.startAuthorization({ providerId: "example", ownerId: "user-1" })
    const callback = await consent(url, { login: "alice", redirectUri: REDIRECT })
    const error = await expectRefused(lk, lk.completeAuthorization({ callback }), "invalid_client")
    // Messages name the provider by its display name; the id is the error's providerId.
    expect(error.message).toMatch(/^Example Corp: /)
    expect(error).toMatchObject({ providerId: "example" })
    await lk.close()
  })

  it("a code used twice", async () => {
    const lk = createLatchkey({ providers: [makeProvider("basic-client", "client_secret_basic")] })
    const first = await link(lk, "alice")
    await lk.unlink(first.result.connection.id)
    // A fresh, valid state carrying the already-used code: the server refuses the code.
    const { url } = await lk.startAuthorization({ providerId: "example", ownerId: "user-1" })
    const fresh = new URL(url).searchParams.get("state")!
    const replay = new URL(first.callback)
    replay.searchParams.set("state", fresh)
    await expectRefused(lk, lk.completeAuthorization({ callback: replay.href }), "invalid_grant")
    await lk.close()
  })
})
