/**
 * The HighLevel provider against its sandbox: linking locations from the chooselocation page, the
 * token endpoint's rules (client_secret_post, user_type, single-use codes), a public marketplace
 * install, single-use refresh tokens (rotation, reuse, a rotated answer lost in transit), and the
 * Version header on the API.
 */
import { AuthorizationError, ConnectionStore, createLatchkey, ReauthorizationRequired } from "@latchkey/core"
import { Redacted } from "effect"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import { HighLevel } from "../src/index.ts"
import { type HighLevelSandbox, startSandbox } from "../src/sandbox.ts"
import {
  expireAccess,
  latchkeyFor,
  link,
  modifyStored,
  plain,
  providerFor,
  refreshCalls,
  stored
} from "./support.ts"

let sandbox: HighLevelSandbox
beforeAll(async () => {
  sandbox = await startSandbox()
})
afterAll(() => sandbox.close())

const closing: Array<{ close(): Promise<void> }> = []
afterEach(async () => {
  sandbox.clearFaults()
  sandbox.setReuseRevokesGrant(false)
  await Promise.all(closing.splice(0).map((c) => c.close()))
})

const setup = (options: Parameters<typeof latchkeyFor>[1] = {}) => {
  const store = ConnectionStore.makeMemory()
  const lk = latchkeyFor(sandbox, { store, ...options })
  closing.push(lk)
  return { lk, store }
}

const rejection = async (p: Promise<unknown>) => {
  try {
    await p
  } catch (e) {
    return e
  }
  throw new Error("expected a rejection")
}

describe("linking locations", () => {
  it("two locations linked side by side, each its own account, label from GET /locations/{id}", async () => {
    const { lk } = setup()
    const before = Date.now()
    const acme = await link(lk, sandbox, "sbxLocation001")
    const bright = await link(lk, sandbox, "sbxLocation002")
    expect(acme).toMatchObject({ accountId: "sbxLocation001", label: "Acme Plumbing", status: "active" })
    expect(bright).toMatchObject({ accountId: "sbxLocation002", label: "Bright Dental", status: "active" })
    expect(acme.profile).toMatchObject({
      userType: "Location",
      locationId: "sbxLocation001",
      companyId: "sbxCompany0001"
    })
    expect(acme.hasRefreshToken).toBe(true)
    // expires_in 86399; the refresh token's year is tracked.
    expect(acme.expiresAt! - before).toBeGreaterThanOrEqual(86_399_000 - 5_000)
    expect(acme.expiresAt! - before).toBeLessThanOrEqual(86_399_000 + 5_000)
    expect(acme.refreshExpiresAt! - acme.expiresAt!).toBeGreaterThan(364 * 86_400_000)
    expect((await lk.connections("user-1")).map((c) => c.label)).toEqual(["Acme Plumbing", "Bright Dental"])

    const own = await lk.fetch(acme.id, "/locations/sbxLocation001")
    expect(own.status).toBe(200)
    expect(((await own.json()) as { location: { name: string } }).location.name).toBe("Acme Plumbing")
    // Each connection carries its own location's token.
    const other = await lk.fetch(acme.id, "/locations/sbxLocation002")
    expect(other.status).toBe(403)
    const theirs = await lk.fetch(bright.id, "/locations/sbxLocation002")
    expect(theirs.status).toBe(200)
  })

  it("every API call carries Version: 2021-07-28; without it HighLevel answers 401 and no refresh follows", async () => {
    const { lk } = setup()
    const c = await link(lk, sandbox, "sbxLocation003")
    const token = await lk.accessToken(c.id)
    const bare = await fetch(`${sandbox.url}/locations/sbxLocation003`, {
      headers: { authorization: `Bearer ${token}` }
    })
    expect(bare.status).toBe(401)
    expect(await bare.json()).toMatchObject({ message: "version header was not found" })
    const refreshes = refreshCalls(sandbox)
    // Through the ApiClient the header is always set (over whatever the caller passed).
    const res = await lk.fetch(c.id, "/locations/sbxLocation003", { headers: { version: "1999-01-01" } })
    expect(res.status).toBe(200)
    expect(refreshCalls(sandbox)).toBe(refreshes)
  })

  it("without locations.readonly the location id is the label, and the scope error is not mistaken for a bad token", async () => {
    const store = ConnectionStore.makeMemory()
    const lk = latchkeyFor(sandbox, { store })
    closing.push(lk)
    const narrow = createLatchkey({
      providers: [providerFor(sandbox, { scopes: ["oauth.readonly"] })],
      store,
      config: { baseBackoffMs: 10, maxBackoffMs: 200 }
    })
    closing.push(narrow)
    const c = await link(narrow, sandbox, "sbxLocation002", "user-7")
    expect(c).toMatchObject({ accountId: "sbxLocation002", label: "sbxLocation002", status: "active" })
    const refreshes = refreshCalls(sandbox)
    const res = await narrow.fetch(c.id, "/locations/sbxLocation002")
    expect(res.status).toBe(401)
    expect(await res.json()).toMatchObject({ message: "The token is not authorized for this scope." })
    expect(refreshCalls(sandbox)).toBe(refreshes)
    expect((await narrow.connection(c.id)).status).toBe("active")
  })

  it("a denied chooselocation page is access_denied; nothing is stored", async () => {
    const { lk } = setup()
    const { url } = await lk.startAuthorization({ providerId: "highlevel", ownerId: "user-1" })
    const callback = await sandbox.deny(url)
    const error = await rejection(lk.completeAuthorization({ callback }))
    expect(error).toBeInstanceOf(AuthorizationError)
    expect((error as AuthorizationError).reason).toBe("access_denied")
    expect(await lk.connections("user-1")).toEqual([])
  })
})

describe("the token endpoint's rules", () => {
  it("a wrong client secret is refused (HighLevel's 401) and nothing is stored", async () => {
    const store = ConnectionStore.makeMemory()
    const lk = latchkeyFor(
      { ...sandbox, providerOptions: { ...sandbox.providerOptions, clientSecret: "not-the-secret" } },
      { store }
    )
    closing.push(lk)
    const { url } = await lk.startAuthorization({ providerId: "highlevel", ownerId: "user-1" })
    const error = await rejection(
      lk.completeAuthorization({ callback: await sandbox.approve(url, "sbxLocation001") })
    )
    expect((error as AuthorizationError).reason).toBe("invalid_client")
    expect(String(error)).not.toContain("not-the-secret")
    expect(await lk.connections("user-1")).toEqual([])
  })

  it("user_type must match the installation: an agency token is not handed to a Location exchange", async () => {
    const { lk } = setup({ userType: "Location" })
    const { url } = await lk.startAuthorization({ providerId: "highlevel", ownerId: "user-1" })
    const error = await rejection(
      lk.completeAuthorization({ callback: await sandbox.approve(url, "sbxCompany0001") })
    )
    expect((error as AuthorizationError).reason).toBe("exchange_failed")
    expect((error as AuthorizationError).providerErrorDescription).toMatch(/user_type must be Company/)
    expect(await lk.connections("user-1")).toEqual([])
    // And a token request without user_type is refused outright.
    const raw = await fetch(`${sandbox.url}/oauth/token`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({
        grant_type: "refresh_token",
        refresh_token: "whatever",
        client_id: sandbox.clientId,
        client_secret: sandbox.clientSecret
      })
    })
    expect(raw.status).toBe(400)
    expect(await raw.json()).toMatchObject({
      error: "invalid_request",
      error_description: "user_type is required"
    })
  })
})

describe("public marketplace install", () => {
  it("a code with no state goes through completeMarketplaceInstall, never through completeAuthorization", async () => {
    const { lk } = setup()
    const callback = await sandbox.install({ locationId: "sbxLocation003" })
    const url = new URL(callback)
    expect(url.searchParams.has("code")).toBe(true)
    expect(url.searchParams.has("state")).toBe(false)

    const refused = await rejection(lk.completeAuthorization({ callback }))
    expect((refused as AuthorizationError).reason).toBe("missing_state")
    expect(await lk.connections("tenant-9")).toEqual([])

    const { connection, relinked } = await HighLevel.completeMarketplaceInstall(lk, {
      ownerId: "tenant-9",
      callback
    })
    expect(relinked).toBe(false)
    expect(connection).toMatchObject({
      ownerId: "tenant-9",
      accountId: "sbxLocation003",
      label: "Cedar Realty"
    })
    expect(connection.scopes).toContain("locations.readonly")
    const res = await lk.fetch(connection.id, `/locations/${connection.accountId}`)
    expect(res.status).toBe(200)

    // The same code again: HighLevel refuses it (single use).
    const again = await rejection(HighLevel.completeMarketplaceInstall(lk, { ownerId: "tenant-9", callback }))
    expect((again as AuthorizationError).reason).toBe("invalid_grant")
  })

  it("a callback carrying a state belongs to a flow the app started and is refused by the install entry point", async () => {
    const { lk } = setup()
    const { url } = await lk.startAuthorization({ providerId: "highlevel", ownerId: "user-1" })
    const callback = await sandbox.approve(url, "sbxLocation001")
    const error = await rejection(HighLevel.completeMarketplaceInstall(lk, { ownerId: "user-1", callback }))
    expect((error as AuthorizationError).reason).toBe("foreign_state")
    // The state is still good for the normal path.
    const { connection } = await lk.completeAuthorization({ callback })
    expect(connection.accountId).toBe("sbxLocation001")
  })
})

describe("single-use refresh tokens", () => {
  it("each refresh rotates; the new one is stored and the old one is refused by HighLevel", async () => {
    const { lk, store } = setup()
    const c = await link(lk, sandbox, "sbxLocation001")
    const first = plain((await stored(store, c.id)).refreshToken)
    const before = refreshCalls(sandbox)
    const after = await lk.refresh(c.id)
    expect(refreshCalls(sandbox)).toBe(before + 1)
    const second = plain((await stored(store, c.id)).refreshToken)
    expect(second).not.toBe(first)
    expect(after.refreshExpiresAt).toBeGreaterThan(c.refreshExpiresAt!)
    const reused = await fetch(`${sandbox.url}/oauth/token`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({
        grant_type: "refresh_token",
        refresh_token: first,
        user_type: "Location",
        client_id: sandbox.clientId,
        client_secret: sandbox.clientSecret
      })
    })
    expect(reused.status).toBe(400)
    expect(await reused.json()).toMatchObject({ error: "invalid_grant" })
  })

  it("a reused old refresh token ends in needs_reauth, is sent once and never retried", async () => {
    const { lk, store } = setup()
    const c = await link(lk, sandbox, "sbxLocation002")
    const old = (await stored(store, c.id)).refreshToken
    await lk.refresh(c.id)
    // A restored backup (or a store that lost a write) brings back the spent refresh token.
    await modifyStored(store, c.id, (cur) => ({
      ...cur,
      tokens: { ...cur.tokens, refreshToken: Redacted.make(plain(old)) }
    }))
    await expireAccess(store, c.id)
    const before = refreshCalls(sandbox)
    const error = await rejection(lk.accessToken(c.id))
    expect(error).toBeInstanceOf(ReauthorizationRequired)
    expect((error as ReauthorizationRequired).reason).toBe("invalid_grant")
    expect(refreshCalls(sandbox)).toBe(before + 1)
    expect((await lk.connection(c.id)).status).toBe("needs_reauth")
    // Later callers get the verdict from the store; HighLevel is not asked again.
    await rejection(lk.accessToken(c.id))
    await rejection(lk.fetch(c.id, "/locations/sbxLocation002"))
    expect(refreshCalls(sandbox)).toBe(before + 1)
  })

  it("with reuse detection revoking the grant (RFC 9700), the reuse also ends the current tokens", async () => {
    sandbox.setReuseRevokesGrant(true)
    const { lk, store } = setup()
    const c = await link(lk, sandbox, "sbxLocation003")
    const spent = plain((await stored(store, c.id)).refreshToken)
    await lk.refresh(c.id)
    const current = await lk.accessToken(c.id)
    const reuse = await fetch(`${sandbox.url}/oauth/token`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({
        grant_type: "refresh_token",
        refresh_token: spent,
        user_type: "Location",
        client_id: sandbox.clientId,
        client_secret: sandbox.clientSecret
      })
    })
    expect(reuse.status).toBe(400)
    const api = await fetch(`${sandbox.url}/locations/sbxLocation003`, {
      headers: { authorization: `Bearer ${current}`, version: "2021-07-28" }
    })
    expect(api.status).toBe(401)
    // The app's refresh with its (valid-looking) token now fails for real: needs_reauth.
    const error = await rejection(lk.refresh(c.id))
    expect((error as ReauthorizationRequired).reason).toBe("invalid_grant")
  })

  it("rotate-then-drop: the answer is lost after HighLevel rotated; the one resend is refused and the link is marked refresh_interrupted", async () => {
    const { lk } = setup()
    const c = await link(lk, sandbox, "sbxLocation001")
    const before = refreshCalls(sandbox)
    sandbox.inject({ endpoint: "token", grantType: "refresh_token", fault: "drop_after_rotate" })
    const error = await rejection(lk.refresh(c.id))
    expect(error).toBeInstanceOf(ReauthorizationRequired)
    expect((error as ReauthorizationRequired).reason).toBe("refresh_interrupted")
    expect((error as ReauthorizationRequired).message).toMatch(/the answer was lost/)
    // The dropped call and one resend of the same token, which HighLevel had already consumed.
    expect(refreshCalls(sandbox)).toBe(before + 2)
    expect((await lk.connection(c.id)).status).toBe("needs_reauth")
  })

  it("transient failures (503, 429, a dropped connection before processing) never cost the link", async () => {
    const { lk } = setup()
    const c = await link(lk, sandbox, "sbxLocation002")
    sandbox.inject({ endpoint: "token", grantType: "refresh_token", fault: "status", status: 503 })
    sandbox.inject({
      endpoint: "token",
      grantType: "refresh_token",
      fault: "rate_limit",
      retryAfterSeconds: 0
    })
    sandbox.inject({ endpoint: "token", grantType: "refresh_token", fault: "drop" })
    const after = await lk.refresh(c.id)
    expect(after.status).toBe("active")
    const res = await lk.fetch(c.id, "/locations/sbxLocation002")
    expect(res.status).toBe(200)
  })
})
