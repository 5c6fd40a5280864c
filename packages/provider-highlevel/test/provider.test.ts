/**
 * The provider definition without a server: the authorize URL HighLevel expects, the hosts, and the
 * token-request parameters.
 */
import { createLatchkey, ProviderDefinitionError } from "@latchkey/core"
import { afterEach, describe, expect, it } from "vitest"
import { HighLevel } from "../src/index.ts"

const options = {
  clientId: "64f0c0ffee-lk1a2b3c",
  clientSecret: "hl-secret-0123456789",
  redirectUri: "https://app.example.com/oauth/highlevel/callback",
  scopes: ["locations.readonly", "users.readonly", "oauth.readonly", "oauth.write"]
}

const clients: Array<{ close(): Promise<void> }> = []
afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close()))
})

const start = async (provider = HighLevel.provider(options)) => {
  const lk = createLatchkey({ providers: [provider] })
  clients.push(lk)
  return new URL((await lk.startAuthorization({ providerId: provider.id, ownerId: "user-1" })).url)
}

describe("HighLevel.provider", () => {
  it("sends users to chooselocation with space-separated scopes, a state and no PKCE", async () => {
    const url = await start()
    expect(url.origin + url.pathname).toBe("https://marketplace.gohighlevel.com/oauth/chooselocation")
    expect(url.searchParams.get("response_type")).toBe("code")
    expect(url.searchParams.get("client_id")).toBe(options.clientId)
    expect(url.searchParams.get("redirect_uri")).toBe(options.redirectUri)
    expect(url.searchParams.get("scope")).toBe(options.scopes.join(" "))
    expect(url.searchParams.get("state")).toMatch(/^[\w-]{43}$/)
    expect(url.searchParams.has("code_challenge")).toBe(false)
    // The client secret never travels in the browser.
    expect(url.href).not.toContain(options.clientSecret)
  })

  it("uses the white-label marketplace host when asked", async () => {
    const url = await start(HighLevel.provider({ ...options, whiteLabel: true }))
    expect(url.origin).toBe("https://marketplace.leadconnectorhq.com")
  })

  it("declares what the engine needs: client_secret_post, user_type, lifetimes, rotation, Version header", () => {
    const p = HighLevel.provider({ ...options, userType: "Company" })
    expect(p.clientAuth).toBe("client_secret_post")
    expect(p.pkce).toBe("none")
    expect(p.endpoints?.token).toBe("https://services.leadconnectorhq.com/oauth/token")
    expect(p.tokenParams).toEqual({ user_type: "Company" })
    expect(p.defaultAccessTokenSeconds).toBe(86_399)
    expect(p.defaultRefreshTokenSeconds).toBe(365 * 24 * 3600)
    expect(p.refreshTokenPolicy).toBe("rotating")
    expect(p.providerInitiated).toBe(true)
    expect(p.apiBaseUrl).toBe("https://services.leadconnectorhq.com")
    expect(p.authorizeRequest({ kind: "oauth", accessToken: "tok", tokenType: "bearer" })).toEqual({
      authorization: "Bearer tok",
      version: "2021-07-28"
    })
    expect(HighLevel.provider(options).tokenParams).toEqual({ user_type: "Location" })
  })

  it("refreshes only for a refused token, not for a missing Version header, a missing scope or a foreign location", () => {
    const classify = HighLevel.provider(options).classifyResponse
    const info = (status: number, body: unknown) => ({ status, headers: new Headers(), body })
    expect(classify(info(401, { statusCode: 401, message: "Invalid token: access token is invalid" }))).toBe(
      "token_invalid"
    )
    expect(classify(info(401, { statusCode: 401, message: "version header was not found" }))).toBe("ok")
    expect(classify(info(403, { message: "The token does not have access to this location." }))).toBe("ok")
    expect(
      classify(info(401, { statusCode: 401, message: "The token is not authorized for this scope." }))
    ).toBe("ok")
    expect(classify(info(429, undefined))).toBe("rate_limited")
  })

  it("refuses a plain-http host that is not loopback, naming the field", () => {
    expect(() => HighLevel.provider({ ...options, apiUrl: "http://hl.example.com" })).toThrow(
      ProviderDefinitionError
    )
    expect(() => HighLevel.provider({ ...options, apiUrl: "http://hl.example.com" })).toThrow(
      /endpoints\.token/
    )
  })

  it("the app id is the client id up to its first dash", () => {
    expect(HighLevel.appIdOf("64f0c0ffee-lk1a2b3c")).toBe("64f0c0ffee")
  })
})
