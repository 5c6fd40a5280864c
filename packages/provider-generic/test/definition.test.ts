/**
 * What the generic provider checks before a user is sent away: explicit endpoints without a
 * user-info URL fail at construction; an issuer whose discovery document has no userinfo_endpoint
 * fails at `start`, with no authorization URL handed out. `auth` still works as the old name of
 * `clientAuth`.
 */
import { createServer, type Server } from "node:http"
import type { AddressInfo } from "node:net"
import { AuthorizationError, createLatchkey, ProviderDefinitionError } from "@latchkey/core"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { Generic } from "../src/index.ts"

const base = {
  id: "example",
  name: "Example Corp",
  clientId: "client",
  clientSecret: "secret-0123456789",
  redirectUri: "https://app.example.com/callback"
}

let server: Server
let issuer: string
beforeAll(async () => {
  // An authorization server whose metadata publishes no userinfo_endpoint.
  server = createServer((req, res) => {
    if (req.url === "/.well-known/openid-configuration") {
      res.writeHead(200, { "content-type": "application/json" })
      res.end(
        JSON.stringify({
          issuer,
          authorization_endpoint: `${issuer}/authorize`,
          token_endpoint: `${issuer}/token`
        })
      )
      return
    }
    res.writeHead(404).end()
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  issuer = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
})
afterAll(() => new Promise((resolve) => server.close(resolve)))

describe("Generic.provider", () => {
  it("explicit endpoints without a user-info URL or identify: refused at construction", () => {
    const build = () =>
      Generic.provider({
        ...base,
        endpoints: {
          issuer: "https://auth.example.com",
          authorization: "https://auth.example.com/authorize",
          token: "https://auth.example.com/token"
        }
      })
    expect(build).toThrow(ProviderDefinitionError)
    expect(build).toThrow(/endpoints\.userinfo/)
  })

  it("an issuer whose discovery document has no userinfo_endpoint: start refuses before the redirect", async () => {
    const lk = createLatchkey({ providers: [Generic.provider({ ...base, issuer })] })
    const error = await lk.startAuthorization({ providerId: "example", ownerId: "u1" }).catch((e) => e)
    expect(error).toBeInstanceOf(AuthorizationError)
    expect(error.reason).toBe("identity_failed")
    expect(error.message).toMatch(/^Example Corp: no user-info endpoint/)
    await lk.close()
    // With an identify function the same provider starts.
    const own = createLatchkey({
      providers: [
        Generic.provider({ ...base, issuer, identify: async () => ({ accountId: "a", label: "a" }) })
      ]
    })
    const { url } = await own.startAuthorization({ providerId: "example", ownerId: "u1" })
    expect(url.startsWith(`${issuer}/authorize?`)).toBe(true)
    await own.close()
  })

  it("clientAuth is the setting's name, as in Provider.make; auth is its deprecated alias", () => {
    const endpoints = {
      issuer: "https://auth.example.com",
      authorization: "https://auth.example.com/authorize",
      token: "https://auth.example.com/token",
      userinfo: "https://auth.example.com/me"
    }
    expect(Generic.provider({ ...base, endpoints, clientAuth: "client_secret_post" }).clientAuth).toBe(
      "client_secret_post"
    )
    expect(Generic.provider({ ...base, endpoints, auth: "client_secret_post" }).clientAuth).toBe(
      "client_secret_post"
    )
    expect(Generic.provider({ ...base, endpoints }).clientAuth).toBe("client_secret_basic")
  })
})
