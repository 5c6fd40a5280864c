/** Reading the demo's settings from the environment: offline by default, real providers on request. */
import { describe, expect, it } from "vitest"
import { ConfigError, DEFAULT_HIGHLEVEL_SCOPES, defaultDataDir, readConfig } from "../src/config.ts"

describe("readConfig", () => {
  it("with nothing set: port 3000, sandboxes everywhere, data in apps/demo/.latchkey", () => {
    const config = readConfig({})
    expect(config).toMatchObject({
      port: 3000,
      publicUrl: undefined,
      dataDir: defaultDataDir,
      vaultKey: undefined,
      accessTokenSeconds: 40,
      refresherIntervalMs: 5000,
      workers: 3,
      refreshDelayMs: 1500,
      heygen: undefined,
      highlevel: undefined
    })
    expect(defaultDataDir.endsWith(`apps/demo/.latchkey`)).toBe(true)
  })

  it("honours PORT, the lifetimes and the Refresher's pace", () => {
    expect(
      readConfig({ PORT: "0", DEMO_ACCESS_TOKEN_SECONDS: "30", DEMO_REFRESHER_INTERVAL_SECONDS: "2" })
    ).toMatchObject({ port: 0, accessTokenSeconds: 30, refresherIntervalMs: 2000 })
    expect(readConfig({ DEMO_WORKERS: "0", DEMO_REFRESH_DELAY_MS: "0" })).toMatchObject({
      workers: 0,
      refreshDelayMs: 0
    })
    expect(() => readConfig({ DEMO_WORKERS: "9" })).toThrow(ConfigError)
  })

  it("switches HeyGen and HighLevel to the real services when their client settings are given", () => {
    const config = readConfig({
      HEYGEN_CLIENT_ID: "hg-client",
      HEYGEN_REDIRECT_URI: "http://127.0.0.1:3000/oauth/heygen/callback",
      HIGHLEVEL_CLIENT_ID: "66aa-bb",
      HIGHLEVEL_CLIENT_SECRET: "hl-secret-value",
      HIGHLEVEL_REDIRECT_URI: "https://demo.example.com/connect/hl",
      HIGHLEVEL_SCOPES: "locations.readonly, oauth.readonly"
    })
    expect(config.heygen).toEqual({
      clientId: "hg-client",
      redirectUri: "http://127.0.0.1:3000/oauth/heygen/callback",
      scopes: undefined
    })
    expect(config.highlevel).toEqual({
      clientId: "66aa-bb",
      clientSecret: "hl-secret-value",
      redirectUri: "https://demo.example.com/connect/hl",
      scopes: ["locations.readonly", "oauth.readonly"],
      userType: "Location"
    })
    expect(
      readConfig({
        HIGHLEVEL_CLIENT_ID: "a-b",
        HIGHLEVEL_CLIENT_SECRET: "s",
        HIGHLEVEL_REDIRECT_URI: "https://x.example/cb"
      }).highlevel?.scopes
    ).toEqual(DEFAULT_HIGHLEVEL_SCOPES)
  })

  it("refuses a half-configured provider, naming the missing variable and never a value", () => {
    const attempt = () =>
      readConfig({ HIGHLEVEL_CLIENT_ID: "66aa-bb", HIGHLEVEL_CLIENT_SECRET: "hl-secret-value" })
    expect(attempt).toThrow(ConfigError)
    try {
      attempt()
    } catch (error) {
      expect((error as ConfigError).variable).toBe("HIGHLEVEL_REDIRECT_URI")
      expect(String(error)).not.toContain("hl-secret-value")
    }
    expect(() => readConfig({ HEYGEN_REDIRECT_URI: "https://x.example/cb" })).toThrow(/HEYGEN_CLIENT_ID/)
  })

  it("refuses malformed values with typed errors", () => {
    const variable = (env: Record<string, string>) => {
      try {
        readConfig(env)
      } catch (error) {
        if (error instanceof ConfigError) return error.variable
        throw error
      }
      return undefined
    }
    expect(variable({ PORT: "eighty" })).toBe("PORT")
    expect(variable({ PORT: "70000" })).toBe("PORT")
    expect(variable({ DEMO_ACCESS_TOKEN_SECONDS: "1" })).toBe("DEMO_ACCESS_TOKEN_SECONDS")
    expect(variable({ LATCHKEY_VAULT_KEY: "too-short" })).toBe("LATCHKEY_VAULT_KEY")
    expect(variable({ PUBLIC_URL: "not a url" })).toBe("PUBLIC_URL")
    expect(variable({ HEYGEN_CLIENT_ID: "x", HEYGEN_REDIRECT_URI: "https://x.example/cb#frag" })).toBe(
      "HEYGEN_REDIRECT_URI"
    )
    expect(variable({ HIGHLEVEL_USER_TYPE: "Agency" })).toBe("HIGHLEVEL_USER_TYPE")
  })
})
