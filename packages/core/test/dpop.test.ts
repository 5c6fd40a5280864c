/**
 * DPoP (RFC 9449) for providers that declare `dpop: true`, against oidc-provider (DPoP on): the code
 * exchange, identify, API requests and refreshes carry proofs made with the connection's own key
 * pair, which is sealed in the store with the connection; the tokens the server binds to that key are
 * refused without a proof. A second instance that never saw the connection loads its key from the store.
 */
import type { OidcServer } from "@latchkey/testkit-oidc"
import { Effect, Redacted } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { createLatchkey, Vault } from "../src/index.ts"
import * as Dpop from "../src/internal/dpop.ts"
import { exampleProvider, expire, link, memoryStore, startServer, stored } from "./support.ts"

let server: OidcServer
beforeAll(async () => {
  server = await startServer()
})
afterAll(() => server.close())

const key = { id: "k1", key: Redacted.make(Vault.generateKey()) }

/** Call the userinfo endpoint with a token and headers of our choosing (what a thief could do). */
const userinfo = (headers: Record<string, string>) => fetch(server.endpoints.userinfo, { headers })

const jwkThumbprintInToken = async (accessToken: string) => {
  const res = await fetch(server.endpoints.introspection, {
    method: "POST",
    headers: {
      authorization: `Basic ${Buffer.from(`basic-client:${server.clients[0]!.client_secret}`).toString("base64")}`,
      "content-type": "application/x-www-form-urlencoded"
    },
    body: new URLSearchParams({ token: accessToken })
  })
  return ((await res.json()) as { cnf?: { jkt?: string } }).cnf?.jkt
}

describe("DPoP (RFC 9449) for providers that declare it", () => {
  it("links, calls the API and refreshes with proofs; the bound token is refused without one", async () => {
    const store = memoryStore()
    const lk = createLatchkey({
      providers: [exampleProvider(server, { dpop: true })],
      store,
      vault: { keys: [key] }
    })
    const c = await link(lk)
    const record = await stored(store, c.id)
    expect(record.tokenType.toLowerCase()).toBe("dpop")
    // The key pair is sealed with the connection: nothing of it is in the clear in the store.
    expect(JSON.stringify(record)).not.toContain('"d":')
    expect(record.extras.startsWith("lk1.")).toBe(true)

    const token = await lk.accessToken(c.id)
    expect(await jwkThumbprintInToken(token)).toMatch(/^[A-Za-z0-9_-]{43}$/)
    // Through Latchkey: a proof per request.
    const me = await lk.fetch(c.id, "/me")
    expect(me.status).toBe(200)
    // Stolen: as a bearer token, or as DPoP without a proof, the server refuses it.
    expect((await userinfo({ authorization: `Bearer ${token}` })).status).toBe(401)
    expect([400, 401]).toContain((await userinfo({ authorization: `DPoP ${token}` })).status)

    // A refresh with a proof: a new bound token, still usable through Latchkey.
    await expire(store, c.id, undefined, { keys: [key] })
    const fresh = await lk.accessToken(c.id)
    expect(fresh).not.toBe(token)
    expect(await jwkThumbprintInToken(fresh)).toBe(await jwkThumbprintInToken(token))
    expect((await lk.fetch(c.id, "/me")).status).toBe(200)
    expect((await userinfo({ authorization: `Bearer ${fresh}` })).status).toBe(401)
    await lk.close()

    // Another instance (nothing in memory from the first): the key comes from the store.
    Dpop.forgetAll()
    const other = createLatchkey({
      providers: [exampleProvider(server, { dpop: true })],
      store,
      vault: { keys: [key] }
    })
    expect((await other.fetch(c.id, "/me")).status).toBe(200)
    await expire(store, c.id, undefined, { keys: [key] })
    Dpop.forgetAll()
    const third = await other.accessToken(c.id)
    expect(third).not.toBe(fresh)
    expect((await other.fetch(c.id, "/me")).status).toBe(200)
    await other.close()
  })

  it("a public client's refresh token is bound too, and each connection has its own key", async () => {
    const store = memoryStore()
    const lk = createLatchkey({
      providers: [
        exampleProvider(server, {
          dpop: true,
          clientId: "public-client",
          clientAuth: "none",
          clientSecret: undefined
        })
      ],
      store,
      vault: { keys: [key] }
    })
    const a = await link(lk, "alice", "user-1")
    const b = await link(lk, "bob", "user-2")
    const ta = await lk.accessToken(a.id)
    const tb = await lk.accessToken(b.id)
    expect(await jwkThumbprintInToken(ta)).not.toBe(await jwkThumbprintInToken(tb))
    // The refresh token is bound: without a proof, the server refuses it.
    const sealed = (await stored(store, a.id)).refreshToken!
    const refreshToken = await Effect.runPromise(
      Vault.make({ keys: [key] }).open(sealed, { connectionId: a.id, field: "refreshToken" })
    )
    const bare = await fetch(server.endpoints.token, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({
        grant_type: "refresh_token",
        refresh_token: refreshToken,
        client_id: "public-client"
      })
    })
    expect(bare.status).toBe(400)
    await expire(store, a.id, undefined, { keys: [key] })
    expect(await lk.accessToken(a.id)).not.toBe(ta)
    expect((await lk.fetch(a.id, "/me")).status).toBe(200)
    await lk.close()
  })

  it("providers without dpop keep bearer tokens", async () => {
    const lk = createLatchkey({ providers: [exampleProvider(server)], vault: { keys: [key] } })
    const c = await link(lk)
    const token = await lk.accessToken(c.id)
    expect((await userinfo({ authorization: `Bearer ${token}` })).status).toBe(200)
    await lk.close()
  })
})

describe("DPoP with server-provided nonces (RFC 9449 §8, §9)", () => {
  it("a server that requires nonces: link, API requests and refreshes retry once with its nonce", async () => {
    const strict = await startServer({ dpopNonce: true })
    try {
      const store = memoryStore()
      const seen: Array<{ url: string; status: number }> = []
      const lk = createLatchkey({
        providers: [exampleProvider(strict, { dpop: true })],
        store,
        vault: { keys: [key] },
        config: {
          fetch: async (input, init) => {
            const response = await fetch(input, init)
            seen.push({ url: String(input instanceof Request ? input.url : input), status: response.status })
            return response
          }
        }
      })
      const c = await link(lk)
      const token = await lk.accessToken(c.id)
      expect((await lk.fetch(c.id, "/me")).status).toBe(200)
      await expire(store, c.id, undefined, { keys: [key] })
      expect(await lk.accessToken(c.id)).not.toBe(token)
      expect((await lk.fetch(c.id, "/me")).status).toBe(200)
      // The token endpoint and userinfo each asked for a nonce (400 / 401) and then answered.
      const at = (path: string) => seen.filter((s) => new URL(s.url).pathname === path).map((s) => s.status)
      expect(at("/token")).toContain(400)
      expect(at("/me")).toContain(401)
      expect(at("/me").at(-1)).toBe(200)
      await lk.close()
    } finally {
      await strict.close()
    }
  })
})
