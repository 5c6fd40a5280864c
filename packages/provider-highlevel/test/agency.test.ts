/**
 * Agency (Company) connections: installed locations, location tokens minted from the agency token,
 * each location its own linked account (`kind: "minted"`), minted again by the engine (never
 * refreshed) when its token expires — through `latchkey.accessToken`, `latchkey.fetch` and the Refresher.
 */
import { AuthorizationError, ConnectionStore, type Events, ReauthorizationRequired } from "@latchkey/core"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import { HighLevel, LocationError } from "../src/index.ts"
import { type HighLevelSandbox, startSandbox } from "../src/sandbox.ts"
import { expireAccess, latchkeyFor, link, refreshCalls, stored } from "./support.ts"

let sandbox: HighLevelSandbox
beforeAll(async () => {
  sandbox = await startSandbox()
})
afterAll(() => sandbox.close())

const closing: Array<{ close(): Promise<void> }> = []
afterEach(async () => {
  await Promise.all(closing.splice(0).map((c) => c.close()))
})

const agencySetup = async () => {
  const store = ConnectionStore.makeMemory()
  const lk = latchkeyFor(sandbox, { store, userType: "Company" })
  closing.push(lk)
  const agency = await link(lk, sandbox, "sbxCompany0001", "agency-owner")
  return { lk, store, agency, locations: HighLevel.Locations.client(lk) }
}

const mints = () => sandbox.calls.location_token ?? 0

describe("agency connections", () => {
  it("an agency install is its own account (the company), labelled from GET /companies/{id}", async () => {
    const { agency } = await agencySetup()
    expect(agency).toMatchObject({ accountId: "sbxCompany0001", label: "Sandbox Agency", status: "active" })
    expect(agency.profile).toMatchObject({ userType: "Company", companyId: "sbxCompany0001" })
    expect(agency.hasRefreshToken).toBe(true)
  })

  it("lists the installed locations and links each as its own account with a location token", async () => {
    const { lk, agency, locations } = await agencySetup()
    const installed = await locations.installed(agency.id)
    expect(installed.map((l) => [l.id, l.name, l.isInstalled])).toEqual([
      ["sbxLocation001", "Acme Plumbing", true],
      ["sbxLocation002", "Bright Dental", true],
      ["sbxLocation003", "Cedar Realty", true]
    ])
    const before = mints()
    const linked = await locations.linkAll(agency.id)
    expect(mints()).toBe(before + 3)
    expect(linked.map((r) => [r.source, r.connection.accountId, r.connection.label])).toEqual([
      ["agency", "sbxLocation001", "Acme Plumbing"],
      ["agency", "sbxLocation002", "Bright Dental"],
      ["agency", "sbxLocation003", "Cedar Realty"]
    ])
    const all = await lk.connections("agency-owner")
    expect(all.map((c) => c.accountId)).toEqual([
      "sbxCompany0001",
      "sbxLocation001",
      "sbxLocation002",
      "sbxLocation003"
    ])
    const acme = linked[0]!.connection
    expect(acme).toMatchObject({ kind: "minted", parentId: agency.id, hasRefreshToken: false })
    expect(acme.profile).toMatchObject({ userType: "Location", companyId: "sbxCompany0001" })
    const res = await lk.fetch(acme.id, "/locations/sbxLocation001")
    expect(res.status).toBe(200)
    // The location token is scoped to its location.
    expect((await lk.fetch(acme.id, "/locations/sbxLocation002")).status).toBe(403)
    // Linking again replaces the location's token instead of adding a connection.
    const again = await locations.link(agency.id, "sbxLocation001")
    expect(again).toMatchObject({ source: "agency", relinked: true })
    expect(again.connection.id).toBe(acme.id)
  })

  it("latchkey.accessToken mints an expiring location token again from the agency token: one mint, no refresh, one refreshed event", async () => {
    const { lk, store, agency, locations } = await agencySetup()
    const events: Array<Events.LatchkeyEvent> = []
    lk.on((e) => events.push(e))
    const acme = (await locations.linkAll(agency.id, ["sbxLocation001"]))[0]!.connection
    const first = await lk.accessToken(acme.id)
    expect(await lk.accessToken(acme.id)).toBe(first)
    const minted = mints()
    const refreshes = refreshCalls(sandbox)
    await expireAccess(store, acme.id)
    events.length = 0
    const second = await Promise.all(Array.from({ length: 20 }, () => lk.accessToken(acme.id)))
    expect(new Set(second).size).toBe(1)
    expect(second[0]).not.toBe(first)
    expect(mints()).toBe(minted + 1)
    expect(refreshCalls(sandbox)).toBe(refreshes)
    expect(events.map((e) => [e.type, e.connectionId])).toEqual([["refreshed", acme.id]])
    expect((await lk.fetch(acme.id, "/locations/sbxLocation001")).status).toBe(200)
  })

  it("the agency's own refresh goes through the engine first when its token expired too", async () => {
    const { lk, store, agency, locations } = await agencySetup()
    const acme = (await locations.linkAll(agency.id, ["sbxLocation001"]))[0]!.connection
    await expireAccess(store, agency.id)
    await expireAccess(store, acme.id)
    const minted = mints()
    const refreshes = refreshCalls(sandbox)
    const token = await lk.accessToken(acme.id)
    expect(mints()).toBe(minted + 1)
    expect(refreshCalls(sandbox)).toBe(refreshes + 1)
    expect((await lk.connection(agency.id)).lastRefreshAt).toBeDefined()
    expect(token).toBe(await lk.accessToken(acme.id))
  })

  it("a location token HighLevel refuses is minted again through latchkey.fetch and the request retried once", async () => {
    const { lk, agency, locations } = await agencySetup()
    const events: Array<Events.LatchkeyEvent> = []
    lk.on((e) => events.push(e))
    const bright = (await locations.linkAll(agency.id, ["sbxLocation002"]))[0]!.connection
    sandbox.oauth.expireAccessTokens({ accountId: "sbxLocation002" })
    const minted = mints()
    const res = await lk.fetch(bright.id, "/locations/sbxLocation002")
    expect(res.status).toBe(200)
    expect(mints()).toBe(minted + 1)
    expect((await lk.connection(bright.id)).status).toBe("active")
    expect(events.some((e) => e.type === "refreshed" && e.connectionId === bright.id)).toBe(true)
    expect(events.some((e) => e.type === "needs_reauth")).toBe(false)
  })

  it("the Refresher keeps minted locations fresh: a due location is minted again by a sweep", async () => {
    const { lk, store, agency, locations } = await agencySetup()
    const cedar = (await locations.linkAll(agency.id, ["sbxLocation003"]))[0]!.connection
    expect((await stored(store, cedar.id)).refreshDueAt).not.toBeNull()
    await expireAccess(store, cedar.id)
    const minted = mints()
    const report = await lk.refresher.sweep()
    expect(report).toMatchObject({ refreshed: 1, failed: 0 })
    expect(mints()).toBe(minted + 1)
    expect((await lk.fetch(cedar.id, "/locations/sbxLocation003")).status).toBe(200)
    // Nothing is due right after.
    expect(await lk.refresher.sweep()).toMatchObject({ refreshed: 0 })
    expect(mints()).toBe(minted + 1)
  })

  it("a location already linked directly (with its own refresh token) is kept as it is", async () => {
    const store = ConnectionStore.makeMemory()
    const direct = latchkeyFor(sandbox, { store })
    const agencyLk = latchkeyFor(sandbox, { store, userType: "Company" })
    closing.push(direct, agencyLk)
    const own = await link(direct, sandbox, "sbxLocation001", "agency-owner")
    const agency = await link(agencyLk, sandbox, "sbxCompany0001", "agency-owner")
    const minted = mints()
    const result = await HighLevel.Locations.client(agencyLk).link(agency.id, "sbxLocation001")
    expect(result).toMatchObject({ source: "direct", relinked: false })
    expect(result.connection.id).toBe(own.id)
    expect(result.connection.hasRefreshToken).toBe(true)
    expect(mints()).toBe(minted + 1)
    expect((await direct.connection(own.id)).version).toBe(own.version)
  })

  it("only agency connections can mint: a location connection is refused with a typed error", async () => {
    const store = ConnectionStore.makeMemory()
    const lk = latchkeyFor(sandbox, { store })
    closing.push(lk)
    const loc = await link(lk, sandbox, "sbxLocation001")
    const error = await HighLevel.Locations.client(lk)
      .installed(loc.id)
      .catch((e: unknown) => e)
    expect(error).toBeInstanceOf(LocationError)
    expect((error as LocationError).reason).toBe("not_an_agency_connection")
    const minting = await lk
      .linkMinted({ parentId: loc.id, accountId: "sbxLocation002" })
      .catch((e: unknown) => e)
    expect(minting).toBeInstanceOf(AuthorizationError)
    expect((minting as AuthorizationError).reason).toBe("provider_error")
  })

  it("when the agency is uninstalled, its location tokens die with it: renewal names the agency, and the location revives once the agency is linked again", async () => {
    const { lk, store, agency, locations } = await agencySetup()
    const acme = (await locations.linkAll(agency.id, ["sbxLocation001"]))[0]!.connection
    await sandbox.uninstall({ companyId: "sbxCompany0001" })
    await expireAccess(store, acme.id)
    const error = await lk.accessToken(acme.id).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(ReauthorizationRequired)
    expect((error as ReauthorizationRequired).message).toContain(agency.id)
    expect((await lk.connection(agency.id)).status).toBe("needs_reauth")
    // The location itself was not refused: it waits for its agency.
    expect((await lk.connection(acme.id)).status).toBe("active")
    await link(lk, sandbox, "sbxCompany0001", "agency-owner")
    const minted = mints()
    expect((await lk.fetch(acme.id, "/locations/sbxLocation001")).status).toBe(200)
    expect(mints()).toBe(minted + 1)
  })
})
