/** The provider contract, token normalization and the protocol checks that need no server. */

import { Redacted } from "effect"
import * as oidc from "openid-client"
import { describe, expect, it } from "vitest"
import { OAuth, Provider, ProviderDefinitionError, TokenSet } from "../src/index.ts"

const base: Provider.ProviderDefinition = {
  id: "acme",
  name: "Acme",
  clientId: "client",
  clientSecret: "s3cret-value",
  clientAuth: "client_secret_basic",
  endpoints: {
    issuer: "https://auth.acme.test",
    authorization: "https://auth.acme.test/authorize",
    token: "https://auth.acme.test/token"
  },
  redirectUri: "https://app.test/callback",
  identify: async () => ({ accountId: "1", label: "one" })
}

const invalid = (patch: Record<string, unknown>) => {
  try {
    Provider.make({ ...base, ...patch } as Provider.ProviderDefinition)
  } catch (e) {
    return e as ProviderDefinitionError
  }
  throw new Error("expected Provider.make to throw")
}

describe("Provider.make", () => {
  it("accepts a valid definition and fills defaults", () => {
    const p = Provider.make(base)
    expect(p).toMatchObject({ pkce: "S256", scopeSeparator: " ", refreshTokenPolicy: "rotating", scopes: [] })
    // The secret is kept only as a Redacted value.
    expect(JSON.stringify(p)).not.toContain("s3cret-value")
    expect(p.clientSecretValue && Redacted.value(p.clientSecretValue)).toBe("s3cret-value")
  })

  it.each([
    [{ id: "Bad Id" }, "id"],
    [{ clientId: "" }, "clientId"],
    [{ clientAuth: "client_secret_jwt" }, "clientAuth"],
    [{ clientSecret: undefined }, "clientSecret"],
    [{ endpoints: { ...base.endpoints, token: "http://auth.acme.test/token" } }, "endpoints.token"],
    [{ endpoints: { ...base.endpoints, authorization: "not a url" } }, "endpoints.authorization"],
    [{ redirectUri: "https://app.test/cb#frag" }, "redirectUri"],
    [{ identify: "nope" }, "identify"],
    [{ clientAuth: "none", pkce: "none", clientSecret: undefined }, "pkce"],
    [{ endpoints: undefined }, "endpoints"],
    [{ scopes: ["read write"] }, "scopes.0"],
    [{ apiOrigins: ["http://api.acme.test"] }, "apiOrigins.0"],
    [{ authorizationParams: { redirect_uri: "https://evil.test/cb" } }, "authorizationParams"],
    [{ clientAuth: "none", clientSecret: undefined, clientCredentials: true }, "clientCredentials"],
    [{ clientCredentials: { scopes: ["a b"] } }, "clientCredentials.scopes.0"],
    [{ mint: { request: "/oauth/token" } }, "mint.request"],
    [{ mint: { request: () => ({ url: "/m" }), lifetime: 3 } }, "mint"]
  ])("rejects %j naming the provider and the field %s", (patch, field) => {
    const error = invalid(patch)
    expect(error).toBeInstanceOf(ProviderDefinitionError)
    expect(error._tag).toBe("ProviderDefinitionError")
    expect(error.field).toBe(field)
    expect(error.message).toContain(`"${(patch as { id?: string }).id ?? "acme"}"`)
    expect(error.message).toContain(field)
    // The field is named once ("endpoints.token must use https", not "endpoints.token endpoints.token …").
    const named = error.message.match(new RegExp(`(?<![\\w.])${field.replace(".", "\\.")}(?![\\w.])`, "g"))
    expect(named).toHaveLength(1)
    expect(error.message).not.toContain("s3cret-value")
  })

  it("normalizes the credential sources: clientCredentials true is {}, false or absent is none", () => {
    expect(Provider.make({ ...base, clientCredentials: true }).clientCredentials).toEqual({})
    expect(Provider.make({ ...base, clientCredentials: false }).clientCredentials).toBeUndefined()
    expect(Provider.make(base).clientCredentials).toBeUndefined()
    const scoped = { scopes: ["machine"], params: { resource: "https://api.acme.test" } }
    expect(Provider.make({ ...base, clientCredentials: scoped }).clientCredentials).toEqual(scoped)
  })

  it("allows plain http only for loopback hosts", () => {
    const loopback = {
      ...base.endpoints!,
      authorization: "http://127.0.0.1:4000/a",
      token: "http://localhost:4000/t"
    }
    expect(Provider.make({ ...base, endpoints: loopback }).endpoints?.token).toBe("http://localhost:4000/t")
    expect(Provider.isLoopbackHost("127.9.8.7")).toBe(true)
    expect(Provider.isLoopbackHost("[::1]")).toBe(true)
    expect(Provider.isLoopbackHost("10.0.0.1")).toBe(false)
    expect(Provider.isLoopbackHost("localhost.evil.test")).toBe(false)
  })
})

describe("TokenSet.fromResponse", () => {
  const provider = Provider.make({
    ...base,
    lifetimes: { accessTokenSeconds: 864000, refreshTokenSeconds: 365 * 86400 }
  })

  it("uses expires_in, else the provider's default lifetime", () => {
    const a = TokenSet.fromResponse(
      provider,
      { access_token: "a", expires_in: 60, refresh_token: "r" },
      1_000
    )
    expect(a.expiresAt).toBe(61_000)
    expect(a.refreshExpiresAt).toBe(1_000 + 365 * 86400_000)
    const b = TokenSet.fromResponse(provider, { access_token: "a" }, 1_000)
    expect(b.expiresAt).toBe(1_000 + 864000_000)
  })

  it("keeps the old refresh token (and its expiry) when the response has none", () => {
    const first = TokenSet.fromResponse(provider, { access_token: "a", refresh_token: "r1" }, 0)
    const second = TokenSet.fromResponse(provider, { access_token: "b", expires_in: 10 }, 5_000, first)
    expect(Redacted.value(second.refreshToken!)).toBe("r1")
    expect(second.refreshExpiresAt).toBe(first.refreshExpiresAt)
    const third = TokenSet.fromResponse(provider, { access_token: "c", refresh_token: "r2" }, 9_000, second)
    expect(Redacted.value(third.refreshToken!)).toBe("r2")
    expect(third.refreshExpiresAt).toBe(9_000 + 365 * 86400_000)
  })

  it("keeps provider extras and never prints tokens", () => {
    const t = TokenSet.fromResponse(
      provider,
      { access_token: "secret-a", refresh_token: "secret-r", locationId: "L1" },
      0
    )
    expect(t.extras).toEqual({ locationId: "L1" })
    expect(JSON.stringify(t)).not.toMatch(/secret-/)
    expect(String(t.accessToken)).toBe("<redacted>")
  })

  it("never applies more skew than a quarter of the lifetime", () => {
    const short = TokenSet.fromResponse(provider, { access_token: "a", expires_in: 20 }, 0)
    expect(TokenSet.isFresh(short, 14_000, 300_000)).toBe(true)
    expect(TokenSet.isFresh(short, 15_000, 300_000)).toBe(false)
    const long = TokenSet.fromResponse(provider, { access_token: "a", expires_in: 3600 }, 0)
    expect(TokenSet.isFresh(long, 3_600_000 - 300_001, 300_000)).toBe(true)
    expect(TokenSet.isFresh(long, 3_600_000 - 300_000, 300_000)).toBe(false)
  })
})

describe("protocol details", () => {
  it("computes the RFC 7636 Appendix B S256 challenge", async () => {
    expect(await oidc.calculatePKCECodeChallenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk")).toBe(
      "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    )
  })

  it("parses Retry-After as seconds or an HTTP date", () => {
    expect(OAuth.parseRetryAfter("7", 0)).toBe(7_000)
    expect(OAuth.parseRetryAfter(new Date(60_000).toUTCString(), 0)).toBe(60_000)
    expect(OAuth.parseRetryAfter("soon", 0)).toBeUndefined()
    expect(OAuth.parseRetryAfter(null, 0)).toBeUndefined()
  })
})
