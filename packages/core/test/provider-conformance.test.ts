/**
 * The provider conformance suite, run against a real authorization server (oidc-provider): a
 * provider written with Provider.make, the seed-002 provider as a declarative file, and a provider
 * for a server that answers token errors with HTTP 200 and its own error codes (as GitHub does).
 * Then the suite itself is put to the test: each way a provider can misdescribe its server makes the
 * check that covers it fail.
 */
import { join } from "node:path"
import { consent, type OidcServer, startOidcServer } from "@latchkey/testkit-oidc"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { Declarative, type Provider } from "../src/index.ts"
import {
  type ConformanceServer,
  checks,
  providerConformance,
  runCheck
} from "../src/testing/providerConformance.ts"
import { exampleProvider, REDIRECT } from "./support.ts"

const ACCOUNTS = [
  { login: "alice", accountId: "alice", label: "alice@example.com" },
  { login: "carol", accountId: "carol", label: "carol@example.com" }
] as const

/** oidc-provider described for the suite, with the provider a test builds for it. */
const onOidcProvider = async (
  make: (server: OidcServer) => Provider.Provider,
  extra: (server: OidcServer) => Partial<ConformanceServer> = () => ({})
): Promise<ConformanceServer> => {
  const server = await startOidcServer({ redirectUris: [REDIRECT] })
  return {
    provider: make(server),
    approve: (url, login) => consent(url, { login, redirectUri: REDIRECT }),
    deny: (url) => consent(url, { login: "alice", redirectUri: REDIRECT, deny: true }),
    accounts: ACCOUNTS,
    whoAmI: server.endpoints.userinfo,
    refreshCount: () => server.grants.refresh_token,
    close: () => server.close(),
    ...extra(server)
  }
}

const secretOf = (server: OidcServer, id: string) =>
  server.clients.find((c) => c.client_id === id)!.client_secret!

providerConformance({
  name: "conformance: a Provider.make provider on oidc-provider",
  server: () => onOidcProvider((server) => exampleProvider(server))
})

providerConformance({
  name: "conformance: the seed-002 declarative file on oidc-provider",
  server: () =>
    onOidcProvider((server) =>
      Declarative.load(join(import.meta.dirname, "declarative-fixtures", "seed-002.yaml"), {
        env: {
          SEED002_ISSUER: server.issuer,
          SEED002_CLIENT_ID: "post-client",
          SEED002_CLIENT_SECRET: secretOf(server, "post-client"),
          SEED002_REDIRECT_URI: REDIRECT
        },
        // The same file, for a client registered for client_secret_post.
        overrides: { clientAuth: "client_secret_post" }
      })
    )
})

/**
 * A fetch in front of oidc-provider that answers token-endpoint errors the way GitHub does: HTTP 200
 * with its own error codes (bad_verification_code, bad_refresh_token, incorrect_client_credentials).
 */
const githubStyleErrors = (server: OidcServer): typeof fetch => {
  return async (input, init) => {
    const response = await fetch(input, init)
    const url = String(input instanceof Request ? input.url : input)
    if (url !== server.endpoints.token || response.status < 400) return response
    const body = (await response.json()) as { error?: string; error_description?: string }
    const grant = new URLSearchParams(String(init?.body ?? "")).get("grant_type")
    const error =
      body.error === "invalid_client"
        ? "incorrect_client_credentials"
        : body.error === "invalid_grant"
          ? grant === "refresh_token"
            ? "bad_refresh_token"
            : "bad_verification_code"
          : body.error
    return new Response(JSON.stringify({ error, error_description: body.error_description }), {
      status: 200,
      headers: { "content-type": "application/json; charset=utf-8" }
    })
  }
}

const GITHUB_CODES = {
  bad_verification_code: "invalid_grant",
  bad_refresh_token: "invalid_grant",
  incorrect_client_credentials: "invalid_client"
} as const

providerConformance({
  name: "conformance: token errors answered with HTTP 200 and the provider's own codes",
  server: () =>
    onOidcProvider(
      (server) => exampleProvider(server, { tokenErrorCodes: GITHUB_CODES }),
      (server) => ({ fetch: githubStyleErrors(server) })
    )
})

describe("the suite fails a provider that misdescribes its server", () => {
  let server: ConformanceServer
  let oidc: OidcServer
  beforeAll(async () => {
    server = await onOidcProvider((s) => {
      oidc = s
      return exampleProvider(s)
    })
  })
  afterAll(() => server.close!())

  const failing = async (name: string, patch: Partial<ConformanceServer>, message: RegExp) => {
    await expect(runCheck(name, { ...server, ...patch })).rejects.toThrow(message)
    // The same check passes for the provider as it should be.
    await expect(runCheck(name, server)).resolves.toBe("passed")
  }

  it("declares reusable refresh tokens while the server rotates them", () =>
    failing(
      "refresh",
      { provider: exampleProvider(oidc, { refreshTokenPolicy: "reusable" }) },
      /a reusable provider keeps the refresh token/
    ))

  it("does not recognize the API's answer to a bad token", () =>
    failing(
      "api-401",
      { provider: exampleProvider(oidc, { classifyResponse: () => "ok" }) },
      /must classify it token_invalid/
    ))

  it("reports another account id than the server's", () =>
    failing(
      "link",
      {
        provider: exampleProvider(oidc, {
          identify: async () => ({ accountId: "alice@example.com", label: "x" })
        })
      },
      /account id of alice/
    ))

  it("gives one id to every account", () =>
    failing(
      "accounts",
      {
        provider: exampleProvider(oidc, { identify: async () => ({ accountId: "everyone", label: "x" }) }),
        // Without expected ids, only the suite's own rule catches it.
        accounts: [{ login: "alice" }, { login: "carol" }]
      },
      /two accounts have two account ids/
    ))

  it("lets an extra parameter replace the declared scopes", () =>
    failing(
      "definition",
      {
        provider: {
          ...exampleProvider(oidc),
          authorizationParams: { prompt: "consent", scope: "openid,offline_access" }
        } as Provider.Provider
      },
      /scope/
    ))

  it("has no revocation while the server revokes (or the other way round)", () =>
    failing(
      "revoke",
      {
        provider: exampleProvider(oidc, { endpoints: { ...oidc.endpoints, revocation: undefined } }),
        revocation: true
      },
      /revokes at the server/
    ))

  it("claims the server issues no refresh tokens", () =>
    failing("link", { issuesRefreshTokens: false }, /linking yields no refresh token/))

  it("leaves the provider's own token error codes unmapped (GitHub's 200 + bad_refresh_token)", async () => {
    const github = { ...server, fetch: githubStyleErrors(oidc) }
    // Without the mapping, a rejected refresh token looks like a transient error: retried, never needs_reauth.
    await expect(runCheck("rejected-refresh", github)).rejects.toThrow(
      /never retried|ReauthorizationRequired/
    )
    await expect(runCheck("wrong-secret", github)).rejects.toThrow(/invalid_client/)
    const mapped = { ...github, provider: exampleProvider(oidc, { tokenErrorCodes: GITHUB_CODES }) }
    await expect(runCheck("rejected-refresh", mapped)).resolves.toBe("passed")
    await expect(runCheck("wrong-secret", mapped)).resolves.toBe("passed")
  })

  it("reads a 200 with an error field as the error it is, even without a mapping", async () => {
    // An unknown code is refused for good (not a retryable malformed answer) and nothing is stored.
    await expect(runCheck("bad-code", { ...server, fetch: githubStyleErrors(oidc) })).resolves.toBe("passed")
  })

  it("skips what does not apply, and names every check once", async () => {
    expect(await runCheck("refresh", { ...server, issuesRefreshTokens: false })).toBe("not_applicable")
    expect(await runCheck("denied", { ...server, deny: undefined })).toBe("not_applicable")
    expect(
      await runCheck("wrong-secret", {
        ...server,
        provider: exampleProvider(oidc, {
          clientId: "public-client",
          clientAuth: "none",
          clientSecret: undefined
        })
      })
    ).toBe("not_applicable")
    const names = checks.map((c) => c.name)
    expect(new Set(names).size).toBe(names.length)
    await expect(runCheck("no-such-check", server)).rejects.toThrow(/No conformance check/)
  })
})
