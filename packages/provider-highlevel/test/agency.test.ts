/**
 * Agency (Company) connections: installed locations, location tokens minted from the agency token,
 * each location its own linked account, re-minted (never refreshed) when its token expires.
 */
import { ConnectionStore, type Events, ReauthorizationRequired } from "@latchkey/core"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import { HighLevel, LocationError } from "../src/index.ts"
import { type HighLevelSandbox, startSandbox } from "../src/sandbox.ts"
import { expireAccess, latchkeyFor, link, refreshCalls } from "./support.ts"

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
    expect(acme.hasRefreshToken).toBe(false)
    expect(acme.profile).toMatchObject({
      via: "agency",
      agencyConnectionId: agency.id,
      companyId: "sbxCompany0001"
    })
    const res = await locations.fetch(acme.id, "/locations/sbxLocation001")
    expect(res.status).toBe(200)
    // The location token is scoped to its location.
    expect((await locations.fetch(acme.id, "/locations/sbxLocation002")).status).toBe(403)
    // Linking again replaces the location's token instead of adding a connection.
    const again = await locations.link(agency.id, "sbxLocation001")
    expect(again).toMatchObject({ source: "agency", relinked: true })
    expect(again.connection.id).toBe(acme.id)
  })

  it("an expiring location token is minted again from the agency token, never sent to the token endpoint", async () => {
    const { store, agency, locations } = await agencySetup()
    const acme = (await locations.linkAll(agency.id, ["sbxLocation001"]))[0]!.connection
    const first = await locations.accessToken(acme.id)
    expect(await locations.accessToken(acme.id)).toBe(first)
    const minted = mints()
    const refreshes = refreshCalls(sandbox)
    await expireAccess(store, acme.id)
    const second = await locations.accessToken(acme.id)
    expect(second).not.toBe(first)
    expect(mints()).toBe(minted + 1)
    expect(refreshCalls(sandbox)).toBe(refreshes)
  })

  it("a location token HighLevel refuses is minted again and the request retried once", async () => {
    const { lk, agency, locations } = await agencySetup()
    const events: Array<Events.LatchkeyEvent> = []
    lk.on((e) => events.push(e))
    const bright = (await locations.linkAll(agency.id, ["sbxLocation002"]))[0]!.connection
    sandbox.oauth.expireAccessTokens({ accountId: "sbxLocation002" })
    const minted = mints()
    const res = await locations.fetch(bright.id, "/locations/sbxLocation002")
    expect(res.status).toBe(200)
    expect(mints()).toBe(minted + 1)
    expect((await lk.connection(bright.id)).status).toBe("active")
    expect(events.some((e) => e.type === "refreshed" && e.connectionId === bright.id)).toBe(true)
  })

  it("renewDue revives a location the plain ApiClient let expire into needs_reauth", async () => {
    const { lk, store, agency, locations } = await agencySetup()
    const cedar = (await locations.linkAll(agency.id, ["sbxLocation003"]))[0]!.connection
    await expireAccess(store, cedar.id)
    // The core engine cannot renew a token without a refresh token.
    const error = await lk.accessToken(cedar.id).catch((e: unknown) => e)
    expect((error as ReauthorizationRequired).reason).toBe("no_refresh_token")
    expect(await locations.renewDue("agency-owner")).toEqual({ renewed: 1, failed: 0 })
    expect((await lk.connection(cedar.id)).status).toBe("active")
    expect((await lk.fetch(cedar.id, "/locations/sbxLocation003")).status).toBe(200)
    // Nothing is due right after.
    expect(await locations.renewDue("agency-owner")).toEqual({ renewed: 0, failed: 0 })
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
  })

  it("when the agency is uninstalled, its location tokens die with it and renewal reports the agency", async () => {
    const { lk, store, agency, locations } = await agencySetup()
    const acme = (await locations.linkAll(agency.id, ["sbxLocation001"]))[0]!.connection
    await sandbox.uninstall({ companyId: "sbxCompany0001" })
    await expireAccess(store, acme.id)
    const error = await locations.accessToken(acme.id).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(ReauthorizationRequired)
    expect((await lk.connection(agency.id)).status).toBe("needs_reauth")
    expect((await lk.connection(acme.id)).status).toBe("needs_reauth")
    expect((await lk.connection(acme.id)).lastError?.code).toBe("agency_needs_reauth")
  })
})
