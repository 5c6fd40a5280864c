/**
 * What is particular to GitHub, beyond the conformance suite: its two token modes, its error codes at
 * HTTP 200, its token endpoint's answer format, grant deletion, and its rate-limit answers — each
 * checked against the GitHub sandbox.
 */
import { request } from "node:http"
import { createLatchkey, type LatchkeyClient } from "@latchkey/core"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { GitHub } from "../src/index.ts"
import { type GitHubSandbox, startSandbox } from "../src/sandbox.ts"

const REDIRECT = "http://127.0.0.1:9/github/callback"

const providerFor = (sandbox: GitHubSandbox) =>
  GitHub.provider({
    clientId: sandbox.clientId,
    clientSecret: sandbox.clientSecret,
    redirectUri: REDIRECT,
    scopes: ["read:user", "repo"],
    webUrl: sandbox.url,
    apiUrl: sandbox.url
  })

const link = async (lk: LatchkeyClient, sandbox: GitHubSandbox, login = "octocat") => {
  const { url } = await lk.startAuthorization({ providerId: "github", ownerId: "user-1" })
  const callback = await sandbox.approve(url, login)
  return (await lk.completeAuthorization({ callback, ownerId: "user-1" })).connection
}

const settle = async <A>(promise: Promise<A>) =>
  promise.then(
    () => {
      throw new Error("expected a failure")
    },
    (e: unknown) => e as { _tag: string; reason: string; providerError?: string; message: string }
  )

describe("GitHub with user-token expiration on", () => {
  let sandbox: GitHubSandbox
  beforeAll(async () => {
    sandbox = await startSandbox({ redirectUris: [REDIRECT] })
  })
  afterAll(() => sandbox.close())

  it("links with 8-hour access tokens and a 6-month refresh token; the numeric id is the account", async () => {
    const lk = createLatchkey({ providers: [providerFor(sandbox)] })
    const { url } = await lk.startAuthorization({ providerId: "github", ownerId: "user-1" })
    const authorize = new URL(url)
    expect(authorize.pathname).toBe("/login/oauth/authorize")
    expect(authorize.searchParams.get("scope")).toBe("read:user repo")
    expect(authorize.searchParams.get("code_challenge_method")).toBe("S256")
    const before = Date.now()
    const { connection } = await lk.completeAuthorization({
      callback: await sandbox.approve(url, "octocat"),
      ownerId: "user-1"
    })
    expect(connection).toMatchObject({
      accountId: "583231",
      label: "octocat",
      profile: { login: "octocat", name: "The Octocat", email: "octocat@github.com" },
      hasRefreshToken: true
    })
    // GitHub grants scopes comma-separated; they are read as a list.
    expect(connection.scopes).toEqual(["read:user", "repo"])
    expect(connection.expiresAt! - before).toBeGreaterThanOrEqual(28_800_000 - 1_000)
    expect(connection.expiresAt! - before).toBeLessThan(28_800_000 + 60_000)
    expect(connection.refreshExpiresAt! - before).toBeGreaterThanOrEqual(15_897_600_000 - 1_000)
    await lk.close()
  })

  it("a refresh ends the old access token, as GitHub documents", async () => {
    const lk = createLatchkey({ providers: [providerFor(sandbox)] })
    const connection = await link(lk, sandbox)
    const old = await lk.accessToken(connection.id)
    await lk.refresh(connection.id)
    const fresh = await lk.accessToken(connection.id)
    const me = (token: string) =>
      fetch(`${sandbox.url}/user`, { headers: { authorization: `Bearer ${token}`, "user-agent": "test" } })
    expect((await me(old)).status).toBe(401)
    expect((await me(fresh)).status).toBe(200)
    await lk.close()
  })

  it("keeps GitHub's own error codes in errors: bad_verification_code and bad_refresh_token", async () => {
    const lk = createLatchkey({ providers: [providerFor(sandbox)] })
    const { url } = await lk.startAuthorization({ providerId: "github", ownerId: "user-1" })
    const callback = new URL(await sandbox.approve(url, "octocat"))
    callback.searchParams.set("code", "not-a-code")
    expect(await settle(lk.completeAuthorization({ callback: callback.href }))).toMatchObject({
      _tag: "AuthorizationError",
      reason: "invalid_grant",
      providerError: "bad_verification_code"
    })
    const connection = await link(lk, sandbox)
    // The app was uninstalled behind Latchkey's back: GitHub refuses the refresh token.
    for (const grant of sandbox.registry.grants({ accountId: "octocat" }))
      sandbox.registry.revokeGrant(grant.id)
    const error = await settle(lk.refresh(connection.id))
    expect(error).toMatchObject({
      _tag: "ReauthorizationRequired",
      reason: "invalid_grant",
      providerError: "bad_refresh_token"
    })
    expect(error.message).toContain("The refresh token passed is incorrect or expired.")
    expect((await lk.connection(connection.id)).status).toBe("needs_reauth")
    await lk.close()
  })

  it("wrong client credentials are incorrect_client_credentials, read as invalid_client", async () => {
    const lk = createLatchkey({
      providers: [GitHub.provider({ ...providerOptions(sandbox), clientSecret: "0".repeat(40) })]
    })
    const { url } = await lk.startAuthorization({ providerId: "github", ownerId: "user-1" })
    const error = await settle(lk.completeAuthorization({ callback: await sandbox.approve(url, "hubot") }))
    expect(error).toMatchObject({ reason: "invalid_client", providerError: "incorrect_client_credentials" })
    expect(error.message).not.toContain("0".repeat(40))
    await lk.close()
  })

  it("unlink deletes the grant with the app's Basic credentials; every token of it stops working", async () => {
    const lk = createLatchkey({ providers: [providerFor(sandbox)] })
    const connection = await link(lk, sandbox, "hubot")
    const token = await lk.accessToken(connection.id)
    const deletes = sandbox.calls.delete_grant ?? 0
    expect(await lk.unlink(connection.id)).toEqual({ revokedAtProvider: true })
    expect(sandbox.calls.delete_grant).toBe(deletes + 1)
    const me = await fetch(`${sandbox.url}/user`, {
      headers: { authorization: `Bearer ${token}`, "user-agent": "test" }
    })
    expect(me.status).toBe(401)
    expect(await me.json()).toMatchObject({ message: "Bad credentials" })
    await lk.close()
  })

  it("a secondary rate limit (403 with Retry-After) is waited out; a primary one is returned as is", async () => {
    const lk = createLatchkey({ providers: [providerFor(sandbox)] })
    const connection = await link(lk, sandbox)
    const limited = (headers: Record<string, string>) =>
      sandbox.inject({
        endpoint: "user",
        fault: "status",
        status: 403,
        headers: { "content-type": "application/json; charset=utf-8", ...headers },
        body: JSON.stringify({ message: "API rate limit exceeded" })
      })
    const calls = sandbox.calls.user ?? 0
    limited({ "retry-after": "0" })
    const retried = await lk.fetch(connection.id, "/user")
    expect(retried.status).toBe(200)
    expect(((await retried.json()) as { login: string }).login).toBe("octocat")
    expect(sandbox.calls.user).toBe(calls + 2)
    limited({
      "x-ratelimit-remaining": "0",
      "x-ratelimit-reset": String(Math.floor(Date.now() / 1000) + 3600)
    })
    const primary = await lk.fetch(connection.id, "/user")
    expect(primary.status).toBe(403)
    expect(sandbox.calls.user).toBe(calls + 3)
    await lk.close()
  })
})

const providerOptions = (sandbox: GitHubSandbox) => ({
  clientId: sandbox.clientId,
  clientSecret: sandbox.clientSecret,
  redirectUri: REDIRECT,
  webUrl: sandbox.url,
  apiUrl: sandbox.url
})

describe("GitHub with user-token expiration off (OAuth apps)", () => {
  let sandbox: GitHubSandbox
  beforeAll(async () => {
    sandbox = await startSandbox({ redirectUris: [REDIRECT], tokenExpiration: false })
  })
  afterAll(() => sandbox.close())

  it("links a token that never expires: nothing to refresh, ever", async () => {
    const lk = createLatchkey({ providers: [GitHub.provider(providerOptions(sandbox))] })
    const connection = await link(lk, sandbox)
    expect(connection).toMatchObject({ accountId: "583231", hasRefreshToken: false })
    expect(connection.expiresAt).toBeUndefined()
    expect(await lk.refresher.sweep()).toEqual({ due: 0, refreshed: 0, failed: 0 })
    const token = await lk.accessToken(connection.id)
    expect(await lk.accessToken(connection.id)).toBe(token)
    expect(sandbox.refreshes()).toBe(0)
    await lk.close()
  })
})

describe("the sandbox's token endpoint answers as GitHub's does", () => {
  let sandbox: GitHubSandbox
  beforeAll(async () => {
    sandbox = await startSandbox({ redirectUris: [REDIRECT] })
  })
  afterAll(() => sandbox.close())

  const exchange = (accept: string | undefined, secret = sandbox.clientSecret) =>
    fetch(`${sandbox.url}/login/oauth/access_token`, {
      method: "POST",
      headers: {
        "content-type": "application/x-www-form-urlencoded",
        ...(accept ? { accept } : {})
      },
      body: new URLSearchParams({ client_id: sandbox.clientId, client_secret: secret, code: "nope" })
    })

  it("form-encoded unless JSON is asked for, errors with HTTP 200", async () => {
    const form = await exchange(undefined)
    expect(form.status).toBe(200)
    expect(form.headers.get("content-type")).toContain("application/x-www-form-urlencoded")
    expect(new URLSearchParams(await form.text()).get("error")).toBe("bad_verification_code")
    const asJson = await exchange("application/json")
    expect(asJson.status).toBe(200)
    expect(await asJson.json()).toMatchObject({
      error: "bad_verification_code",
      error_description: "The code passed is incorrect or expired."
    })
    expect(await (await exchange("application/json", "wrong")).json()).toMatchObject({
      error: "incorrect_client_credentials"
    })
  })

  it("refuses API requests without a User-Agent, as GitHub does", async () => {
    const status = await new Promise<number>((resolve, reject) => {
      const req = request(`${sandbox.url}/user`, { headers: { authorization: "Bearer x" } }, (res) => {
        res.resume()
        resolve(res.statusCode ?? 0)
      })
      req.on("error", reject)
      req.end()
    })
    expect(status).toBe(403)
  })
})
