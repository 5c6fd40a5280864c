// biome-ignore-all lint/suspicious/noTemplateCurlyInString: ${env:NAME} is the provider files' own syntax
/**
 * Declarative providers: the seed-002 provider as a YAML file, linked, refreshed, used and revoked
 * against a real authorization server (oidc-provider); and every way a file can be wrong, each
 * answered with an error that names the file, the provider and the field.
 */
import { mkdtempSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { consent, type OidcServer } from "@latchkey/testkit-oidc"
import { Redacted } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { ConnectionStore, createLatchkey, Declarative, type Provider } from "../src/index.ts"
import { plain, REDIRECT, startServer, stored } from "./support.ts"

const SEED_002 = join(import.meta.dirname, "declarative-fixtures", "seed-002.yaml")
const SECRET_IN_ENV = "s3cr3t-from-the-environment-0123456789"

let server: OidcServer
let env: Record<string, string>

beforeAll(async () => {
  server = await startServer()
  env = {
    SEED002_ISSUER: server.issuer,
    SEED002_CLIENT_ID: "basic-client",
    SEED002_CLIENT_SECRET: server.clients.find((c) => c.client_id === "basic-client")!.client_secret!,
    SEED002_REDIRECT_URI: REDIRECT
  }
})
afterAll(() => server.close())

const link = async (lk: ReturnType<typeof createLatchkey>, provider: Provider.Provider, login: string) => {
  const { url } = await lk.startAuthorization({ providerId: provider.id, ownerId: "user-1" })
  const callback = await consent(url, { login, redirectUri: REDIRECT })
  return (await lk.completeAuthorization({ callback, providerId: provider.id, ownerId: "user-1" })).connection
}

describe("the seed-002 provider as a YAML file, against oidc-provider", () => {
  it("reads every field of the file into the provider", () => {
    const p = Declarative.load(SEED_002, { env })
    expect(p).toMatchObject({
      id: "seed-002",
      name: "Example Corp",
      clientId: "basic-client",
      clientAuth: "client_secret_basic",
      pkce: "S256",
      scopes: ["openid", "offline_access", "email", "read", "write"],
      scopeSeparator: " ",
      authorizationParams: { prompt: "consent" },
      refreshTokenPolicy: "rotating",
      defaultAccessTokenSeconds: 3600,
      defaultRefreshTokenSeconds: 2592000,
      apiBaseUrl: server.issuer,
      endpoints: { token: `${server.issuer}/token`, userinfo: `${server.issuer}/me` }
    })
    // The secret from the environment is kept only as a Redacted value.
    expect(JSON.stringify(p)).not.toContain(env.SEED002_CLIENT_SECRET)
    expect(Redacted.value(p.clientSecretValue!)).toBe(env.SEED002_CLIENT_SECRET)
    expect(p.authorizeRequest({ kind: "oauth", accessToken: "tok", tokenType: "bearer" })).toEqual({
      Authorization: "Bearer tok"
    })
  })

  it("links, calls the API with the file's headers, refreshes with rotation and revokes", async () => {
    const provider = Declarative.load(SEED_002, { env })
    const store = ConnectionStore.makeMemory()
    const lk = createLatchkey({ providers: [provider], store })
    const { url } = await lk.startAuthorization({ providerId: "seed-002", ownerId: "user-1" })
    const authorize = new URL(url)
    expect(authorize.origin + authorize.pathname).toBe(`${server.issuer}/auth`)
    expect(authorize.searchParams.get("scope")).toBe("openid offline_access email read write")
    expect(authorize.searchParams.get("code_challenge_method")).toBe("S256")
    expect(authorize.searchParams.get("prompt")).toBe("consent")

    const connection = await link(lk, provider, "alice")
    expect(connection).toMatchObject({
      providerId: "seed-002",
      accountId: "alice",
      label: "alice@example.com",
      // The file maps name too, but oidc-provider sends it only for the profile scope: absent, omitted.
      profile: { email: "alice@example.com" },
      hasRefreshToken: true,
      status: "active"
    })
    // The file's refresh-token lifetime applies (oidc-provider does not say).
    expect(connection.refreshExpiresAt! - Date.now()).toBeGreaterThan(2592000_000 - 60_000)

    // A relative URL resolves against api.baseUrl and carries "{tokenType} {token}".
    const me = await lk.fetch(connection.id, "/me")
    expect(me.status).toBe(200)
    expect(((await me.json()) as { sub: string }).sub).toBe("alice")

    const before = await stored(store, connection.id)
    const refreshes = server.grants.refresh_token
    await lk.refresh(connection.id)
    expect(server.grants.refresh_token - refreshes).toBe(1)
    const after = await stored(store, connection.id)
    expect(plain(after.refreshToken)).not.toBe(plain(before.refreshToken))
    expect((await lk.fetch(connection.id, "/me")).status).toBe(200)

    expect(await lk.unlink(connection.id)).toEqual({ revokedAtProvider: true })
    const stale = await fetch(`${server.issuer}/me`, {
      headers: { authorization: `Bearer ${plain(after.accessToken)}` }
    })
    expect(stale.status).toBe(401)
    await lk.close()
  })

  it("reads the same provider from JSON", async () => {
    const json = JSON.stringify({
      id: "seed-002-json",
      name: "Example Corp",
      clientId: "${env:SEED002_CLIENT_ID}",
      clientSecret: "${env:SEED002_CLIENT_SECRET}",
      clientAuth: "client_secret_basic",
      endpoints: {
        issuer: "${env:SEED002_ISSUER}",
        authorization: "${env:SEED002_ISSUER}/auth",
        token: "${env:SEED002_ISSUER}/token"
      },
      redirectUri: "${env:SEED002_REDIRECT_URI}",
      scopes: ["openid", "offline_access", "email"],
      authorizationParams: { prompt: "consent" },
      identity: { url: "${env:SEED002_ISSUER}/me", accountIdPath: "$.sub", labelPath: "email" }
    })
    const provider = Declarative.parse(json, { file: "seed-002.json", env })
    const lk = createLatchkey({ providers: [provider] })
    const connection = await link(lk, provider, "bob")
    expect(connection).toMatchObject({ accountId: "bob", label: "bob@example.com", hasRefreshToken: true })
    // No revocation endpoint in this file: nothing is revoked at the provider, the connection goes.
    expect(await lk.unlink(connection.id)).toEqual({ revokedAtProvider: false })
    await lk.close()
  })

  it("overrides replace the file's values before validation", () => {
    const p = Declarative.load(SEED_002, {
      env,
      overrides: { name: "Staging", scopes: ["read"], endpoints: { token: "http://127.0.0.1:1/other" } }
    })
    expect(p.name).toBe("Staging")
    expect(p.scopes).toEqual(["read"])
    // Deep merge: the other endpoints are the file's.
    expect(p.endpoints).toMatchObject({ token: "http://127.0.0.1:1/other", userinfo: `${server.issuer}/me` })
  })
})

describe("identity, API headers and error classes from the file", () => {
  const base = {
    id: "acme",
    name: "Acme",
    clientId: "client",
    clientSecret: "file-secret-value",
    clientAuth: "client_secret_post",
    endpoints: {
      issuer: "https://auth.acme.test",
      authorization: "https://auth.acme.test/authorize",
      token: "https://auth.acme.test/token"
    },
    redirectUri: "https://app.test/callback",
    identity: {
      url: "/v2/me",
      accountIdPath: "data.user.id",
      labelPath: ["data.user.email", "data.user.login"]
    },
    api: {
      baseUrl: "https://api.acme.test",
      headers: { Authorization: "token {token}", "X-Api-Version": "2024-06-01" },
      tokenInvalidStatuses: [401, 403],
      rateLimitedStatuses: [429, 503]
    },
    apiKey: { headers: { "X-Api-Key": "{apiKey}" } }
  }

  const answering = (status: number, body: unknown) => {
    const calls: Array<{ url: string; init: RequestInit | undefined }> = []
    const fetch = async (input: string | URL, init?: RequestInit) => {
      calls.push({ url: String(input), init })
      return new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json" } })
    }
    return { calls, fetch }
  }
  const tokens = {} as Parameters<Provider.Provider["identify"]>[0]["tokens"]

  it("identifies the account through JSON paths, with label fallbacks and profile fields", async () => {
    const p = Declarative.fromObject(
      {
        ...base,
        identity: { ...base.identity, profile: { plan: "data.plan.name", first: "data.emails[0]" } }
      },
      { file: "acme.yaml" }
    )
    const server = answering(200, {
      data: { user: { id: 4711, login: "octo" }, plan: { name: "pro" }, emails: ["a@acme.test"] }
    })
    const identity = await p.identify({ tokens, fetch: server.fetch })
    expect(identity).toEqual({
      accountId: "4711",
      label: "octo",
      profile: { plan: "pro", first: "a@acme.test" }
    })
    expect(server.calls[0]!.url).toBe("https://api.acme.test/v2/me")
    expect(server.calls[0]!.init?.method).toBe("GET")
  })

  it("fails identification with the path and the URL, never the body", async () => {
    const p = Declarative.fromObject(base, { file: "acme.yaml" })
    await expect(
      p.identify({ tokens, fetch: answering(200, { data: { secret: "x" } }).fetch })
    ).rejects.toThrow(
      "identity.accountIdPath data.user.id is not in the answer of GET https://api.acme.test/v2/me"
    )
    await expect(p.identify({ tokens, fetch: answering(401, {}).fetch })).rejects.toThrow(
      "GET https://api.acme.test/v2/me answered 401"
    )
  })

  it("authorizes API requests with the file's headers and classifies with its statuses", () => {
    const p = Declarative.fromObject(base, { file: "acme.yaml" })
    expect(p.authorizeRequest({ kind: "oauth", accessToken: "at-1", tokenType: "bearer" })).toEqual({
      Authorization: "token at-1",
      "X-Api-Version": "2024-06-01"
    })
    expect(p.apiKeys).toBe(true)
    expect(p.authorizeRequest({ kind: "api_key", apiKey: "key-1" })).toEqual({ "X-Api-Key": "key-1" })
    const info = (status: number) => ({ status, headers: new Headers(), body: undefined })
    expect(p.classifyResponse(info(403))).toBe("token_invalid")
    expect(p.classifyResponse(info(401))).toBe("token_invalid")
    expect(p.classifyResponse(info(503))).toBe("rate_limited")
    expect(p.classifyResponse(info(404))).toBe("ok")
    // Without api settings the contract's defaults apply.
    const plainProvider = Declarative.fromObject({
      ...base,
      identity: { ...base.identity, url: "https://api.acme.test/v2/me" },
      api: undefined,
      apiKey: undefined
    })
    expect(plainProvider.authorizeRequest({ kind: "oauth", accessToken: "at", tokenType: "bearer" })).toEqual(
      {
        authorization: "Bearer at"
      }
    )
    expect(plainProvider.classifyResponse(info(403))).toBe("ok")
    expect(plainProvider.apiKeys).toBeUndefined()
  })

  it("reads JSON paths", () => {
    const body = { $x: 1, a: { "b-c": [{ d: "deep" }] }, list: [[1, 2]] }
    expect(Declarative.valueAt(body, "a.b-c[0].d")).toBe("deep")
    expect(Declarative.valueAt(body, "$.a.b-c[0].d")).toBe("deep")
    expect(Declarative.valueAt(body, "list[0][1]")).toBe(2)
    expect(Declarative.valueAt([{ id: 7 }], "[0].id")).toBe(7)
    expect(Declarative.valueAt(body, "a.missing.d")).toBeUndefined()
    expect(Declarative.valueAt(body, "a[0]")).toBeUndefined()
    expect(Declarative.valueAt({ toString: 1 }, "constructor")).toBeUndefined()
    for (const bad of ["", "$", "a..b", "a.", ".a", "a b", "a[x]", "a[0"]) {
      expect(Declarative.parsePath(bad), bad).toBeUndefined()
    }
  })
})

describe("errors name the file, the provider and the field", () => {
  const good = `id: acme
name: Acme
clientId: client
clientSecret: \${env:ACME_SECRET}
clientAuth: client_secret_basic
endpoints:
  issuer: https://auth.acme.test
  authorization: https://auth.acme.test/authorize
  token: https://auth.acme.test/token
redirectUri: https://app.test/callback
identity:
  url: https://api.acme.test/me
  accountIdPath: id
`
  const envOk = { ACME_SECRET: SECRET_IN_ENV }

  const broken = (text: string, env: Record<string, string> = envOk, file = "providers/acme.yaml") => {
    try {
      Declarative.parse(text, { file, env })
    } catch (e) {
      expect(e).toBeInstanceOf(Declarative.DeclarativeError)
      const error = e as Declarative.DeclarativeError
      // The secret read from the environment never appears, whatever went wrong.
      expect(`${String(error)} ${error.message} ${JSON.stringify(error)}`).not.toContain(SECRET_IN_ENV)
      expect(error.isRetryable).toBe(false)
      return error
    }
    throw new Error("expected the file to be refused")
  }

  it("accepts the valid file", () => {
    expect(Declarative.parse(good, { file: "providers/acme.yaml", env: envOk }).id).toBe("acme")
  })

  it.each([
    [
      "a missing identity path",
      good.replace("  accountIdPath: id\n", ""),
      "identity.accountIdPath",
      "is required"
    ],
    [
      "a misspelt field",
      good.replace("name: Acme", "name: Acme\nscope: [read]"),
      "scope",
      "is not a known field (did you mean scopes?)"
    ],
    [
      "a misspelt nested field",
      good.replace("  token: https", "  tokne: https"),
      "endpoints.tokne",
      "is not a known field (did you mean token?)"
    ],
    [
      "an unknown client authentication",
      good.replace("client_secret_basic", "client_secret_jwt"),
      "clientAuth",
      "must be one of"
    ],
    [
      "plain http to a remote host",
      good.replace("token: https://auth", "token: http://auth"),
      "endpoints.token",
      "must use https"
    ],
    [
      "a broken JSON path",
      good.replace("accountIdPath: id", "accountIdPath: data..id"),
      "identity.accountIdPath",
      "must be a JSON path"
    ],
    [
      "API headers without the token",
      `${good}api:\n  headers:\n    X-Version: "1"\n`,
      "api.headers",
      "must put {token} in at least one header"
    ],
    [
      "an unknown header placeholder",
      `${good}api:\n  headers:\n    Authorization: "Bearer {access_token}"\n`,
      "api.headers.Authorization",
      "unknown placeholder {access_token}"
    ],
    [
      "a confidential client without a secret",
      good.replace("clientSecret: ${env:ACME_SECRET}\n", ""),
      "clientSecret",
      "is required with clientAuth client_secret_basic"
    ],
    [
      "a negative lifetime",
      `${good}lifetimes:\n  accessTokenSeconds: -5\n`,
      "lifetimes.accessTokenSeconds",
      "must be at least"
    ],
    [
      "a fractional lifetime",
      `${good}lifetimes:\n  accessTokenSeconds: 1.5\n`,
      "lifetimes.accessTokenSeconds",
      "must be an integer"
    ],
    [
      "no identity URL and no userinfo endpoint",
      good.replace("  url: https://api.acme.test/me\n", ""),
      "identity.url",
      "is required"
    ],
    [
      "a relative identity URL without a base",
      good.replace("url: https://api.acme.test/me", "url: /me"),
      "identity.url",
      "api.baseUrl"
    ],
    ["an id that is not lowercase", good.replace("id: acme", "id: Acme Corp"), "id", "lowercase"],
    [
      "both endpoints and discovery",
      `${good}discovery:\n  issuer: https://auth.acme.test\n`,
      "endpoints",
      "endpoints or discovery: give exactly one of the two"
    ],
    ["a scope list that is a string", `${good}scopes: read write\n`, "scopes", "must be a list"],
    [
      "an unsupported reference",
      good.replace("clientId: client", "clientId: ${vault:acme}"),
      "clientId",
      "only ${env:NAME} is supported"
    ]
  ])("%s", (_what, text, field, detail) => {
    const error = broken(text)
    const providerId = text.includes("id: Acme Corp") ? "Acme Corp" : "acme"
    expect(error).toMatchObject({ reason: "invalid", file: "providers/acme.yaml", providerId, field })
    expect(error.message).toContain("providers/acme.yaml")
    expect(error.message).toContain(`provider "${providerId}"`)
    expect(error.message).toContain(`${field} `)
    expect(error.message).toContain(detail)
  })

  it("a missing environment variable is named, with the field that refers to it", () => {
    const error = broken(good, {})
    expect(error).toMatchObject({ reason: "missing_env", field: "clientSecret", providerId: "acme" })
    expect(error.message).toBe(
      'providers/acme.yaml: provider "acme": clientSecret refers to the environment variable ACME_SECRET, which is not set'
    )
  })

  it("a YAML syntax error gives the line", () => {
    const error = broken("id: acme\nname: [Acme\nclientId: x\n")
    expect(error).toMatchObject({ reason: "syntax", file: "providers/acme.yaml", field: "(file)" })
    expect(error.message).toMatch(/^providers\/acme\.yaml: is not valid YAML \(line \d+, column \d+\)/)
  })

  it("a duplicated key is a syntax error", () => {
    expect(broken(`${good}name: Other\n`).reason).toBe("syntax")
  })

  it("a JSON syntax error names the file", () => {
    const error = broken('{"id": "acme",', envOk, "providers/acme.json")
    expect(error).toMatchObject({ reason: "syntax", file: "providers/acme.json" })
    expect(error.message).toMatch(/^providers\/acme\.json: is not valid JSON/)
  })

  it("a file that holds no provider object", () => {
    const error = broken("- id: acme\n")
    expect(error).toMatchObject({ reason: "invalid", field: "(file)", providerId: "(unnamed)" })
    expect(error.message).toBe("providers/acme.yaml: must hold a provider object")
  })

  it("a file that does not exist, or is a directory", () => {
    const missing = join(tmpdir(), "latchkey-no-such-provider.yaml")
    expect(() => Declarative.load(missing)).toThrow(`${missing}: does not exist`)
    const dir = mkdtempSync(join(tmpdir(), "latchkey-declarative-"))
    try {
      Declarative.load(dir)
      throw new Error("expected a failure")
    } catch (e) {
      expect(e).toMatchObject({ _tag: "DeclarativeError", reason: "unreadable", file: dir })
    }
  })

  it("load reads .json files as JSON and .yml files as YAML", () => {
    const dir = mkdtempSync(join(tmpdir(), "latchkey-declarative-"))
    const yml = join(dir, "acme.yml")
    writeFileSync(yml, good)
    expect(Declarative.load(yml, { env: envOk }).id).toBe("acme")
    const json = join(dir, "acme.json")
    writeFileSync(json, "id: acme\n")
    expect(() => Declarative.load(json, { env: envOk })).toThrow(/is not valid JSON/)
  })
})
