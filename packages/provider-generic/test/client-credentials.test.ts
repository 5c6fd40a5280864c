/**
 * Client-credentials connections (RFC 6749 §4.4: the client's own token, no user) against
 * oidc-provider's client_credentials grant, renewed by the same engine as every other connection:
 * `latchkey.accessToken` and `latchkey.fetch` past expiry get a new token from one grant request,
 * whatever the number of callers; the Refresher finds them due. Time moves through the instance's
 * clock, never by sleeping.
 */
import { ConnectionStore, createLatchkey, RefreshError } from "@latchkey/core"
import { type OidcServer, startOidcServer } from "@latchkey/testkit-oidc"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import { Generic } from "../src/index.ts"

const REDIRECT = "http://127.0.0.1:9/callback"
let server: OidcServer

beforeAll(async () => {
  server = await startOidcServer({ redirectUris: [REDIRECT], clientCredentials: { ttl: 600 } })
})
afterAll(() => server.close())

const secretOf = (id: string) => server.clients.find((c) => c.client_id === id)!.client_secret!

const makeProvider = (overrides: Partial<Generic.GenericOptions> = {}) =>
  Generic.provider({
    id: "machine",
    name: "Machine API",
    clientId: "basic-client",
    clientSecret: secretOf("basic-client"),
    redirectUri: REDIRECT,
    endpoints: server.endpoints,
    apiBaseUrl: server.issuer,
    scopes: ["read", "write"],
    clientCredentials: true,
    ...overrides
  })

/** Whether oidc-provider still knows the token as one of its client-credentials tokens. */
const issued = async (token: string) => (await server.provider.ClientCredentials.find(token)) !== undefined

let now = Date.now()
const closing: Array<{ close(): Promise<void> }> = []
afterEach(async () => {
  await Promise.all(closing.splice(0).map((c) => c.close()))
})

const latchkey = (provider = makeProvider()) => {
  const lk = createLatchkey({
    providers: [provider],
    store: ConnectionStore.makeMemory(),
    vault: { plaintext: true },
    clock: () => now,
    config: { baseBackoffMs: 10, maxBackoffMs: 100 }
  })
  closing.push(lk)
  return lk
}

/** A client-credentials connection linked into a fresh store by an instance of its own (`linker`, closed after the test). */
const linkedInStore = async () => {
  const store = ConnectionStore.makeMemory()
  const linker = createLatchkey({
    providers: [makeProvider()],
    store,
    vault: { plaintext: true },
    clock: () => now
  })
  closing.push(linker)
  const { connection } = await linker.linkClientCredentials({ providerId: "machine", ownerId: "svc" })
  return { store, connection, linker }
}

describe("client-credentials connections against oidc-provider", () => {
  it("links the client's own token: no user, no refresh token, due for renewal before it expires", async () => {
    now = Date.now()
    const lk = latchkey()
    const before = server.grants.client_credentials
    const { connection } = await lk.linkClientCredentials({ providerId: "machine", ownerId: "svc" })
    expect(server.grants.client_credentials).toBe(before + 1)
    expect(connection).toMatchObject({
      kind: "client_credentials",
      accountId: "basic-client",
      label: "Machine API (client credentials)",
      hasRefreshToken: false,
      status: "active"
    })
    expect(connection.expiresAt).toBe(connection.obtainedAt + 600_000)
    const token = await lk.accessToken(connection.id)
    expect(await issued(token)).toBe(true)
    // No second grant while the token is fresh.
    expect(server.grants.client_credentials).toBe(before + 1)
  })

  it("past expiry, 50 callers share one client_credentials request and get the same new token", async () => {
    now = Date.now()
    const lk = latchkey()
    const events: Array<string> = []
    lk.on((e) => events.push(e.type))
    const { connection } = await lk.linkClientCredentials({ providerId: "machine", ownerId: "svc" })
    const first = await lk.accessToken(connection.id)
    now += 11 * 60_000
    const before = server.grants.client_credentials
    const tokens = await Promise.all(Array.from({ length: 50 }, () => lk.accessToken(connection.id)))
    expect(server.grants.client_credentials).toBe(before + 1)
    expect(new Set(tokens).size).toBe(1)
    expect(tokens[0]).not.toBe(first)
    expect(await issued(tokens[0]!)).toBe(true)
    expect(events.filter((t) => t === "refreshed")).toHaveLength(1)
    expect(events).not.toContain("needs_reauth")
    const summary = await lk.connection(connection.id)
    expect(summary.lastRefreshAt).toBe(now)
    expect(summary.expiresAt).toBe(now + 600_000)
  })

  it("the Refresher renews a due client-credentials connection", async () => {
    now = Date.now()
    const lk = latchkey()
    const { connection } = await lk.linkClientCredentials({ providerId: "machine", ownerId: "svc" })
    expect(await lk.refresher.sweep()).toMatchObject({ due: 0 })
    now += 9 * 60_000 // within the Refresher's lead (half the 10-minute lifetime)
    const before = server.grants.client_credentials
    expect(await lk.refresher.sweep()).toMatchObject({ due: 1, refreshed: 1, failed: 0 })
    expect(server.grants.client_credentials).toBe(before + 1)
    expect((await lk.connection(connection.id)).lastRefreshAt).toBe(now)
  })

  it("close() during a Retry-After wait that outlasts the drain ends the renewal at once: RefreshError(draining), nothing more sent", async () => {
    now = Date.now()
    const { store, connection } = await linkedInStore()
    // The token endpoint answers 429 with a 20 s Retry-After (within the lease); the drain has 5 s.
    let tokenRequests = 0
    const limited: typeof fetch = async (input, init) => {
      const url = typeof input === "string" ? input : input instanceof URL ? input.href : input.url
      if (url !== server.endpoints.token) return fetch(input, init)
      tokenRequests++
      return new Response(JSON.stringify({ error: "slow_down" }), {
        status: 429,
        headers: { "content-type": "application/json", "retry-after": "20" }
      })
    }
    const lk = createLatchkey({
      providers: [makeProvider()],
      store,
      vault: { plaintext: true },
      clock: () => now,
      config: { maxBackoffMs: 60_000, drainTimeoutMs: 5_000, fetch: limited }
    })
    const retrying = new Promise<void>((resolve) => {
      lk.on((e) => {
        if (e.type === "refresh_failed" && e.retryable) resolve()
      })
    })
    now += 11 * 60_000
    const calling = lk.accessToken(connection.id).then(
      () => undefined,
      (e: unknown) => e
    )
    await retrying
    // Returns at once: neither the 20 s nor the drain's 5 s are waited out.
    await lk.close()
    expect(await calling).toMatchObject({ _tag: "RefreshError", reason: "draining" })
    expect(tokenRequests).toBe(1)
  }, 15_000)

  it("a client whose secret the server no longer accepts: RefreshError(invalid_client), not retryable, the connection kept", async () => {
    now = Date.now()
    const { store, connection, linker } = await linkedInStore()
    const wrong = createLatchkey({
      providers: [makeProvider({ clientSecret: "not-the-secret-0123456789" })],
      store,
      vault: { plaintext: true },
      clock: () => now,
      config: { baseBackoffMs: 10, maxBackoffMs: 100 }
    })
    closing.push(wrong)
    now += 11 * 60_000
    const error = await wrong.accessToken(connection.id).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(RefreshError)
    expect((error as RefreshError).reason).toBe("invalid_client")
    expect((error as RefreshError).isRetryable).toBe(false)
    expect((await wrong.connection(connection.id)).status).toBe("active")
    // Degraded (the grant is not the problem: the client's configuration is), until a renewal works again.
    expect((await wrong.connection(connection.id)).health).toMatchObject({
      state: "degraded",
      reason: "invalid_client",
      failures: 1,
      since: now
    })
    const events: Array<string> = []
    linker.on((e) => events.push(e.type))
    await linker.accessToken(connection.id)
    expect((await linker.connection(connection.id)).health).toEqual({ state: "active" })
    expect(events).toEqual(["refreshed", "recovered"])
  })

  it("a provider without clientCredentials refuses to link one", async () => {
    const lk = latchkey(makeProvider({ clientCredentials: undefined }))
    await expect(lk.linkClientCredentials({ providerId: "machine", ownerId: "svc" })).rejects.toMatchObject({
      _tag: "AuthorizationError",
      reason: "provider_error"
    })
  })
})
