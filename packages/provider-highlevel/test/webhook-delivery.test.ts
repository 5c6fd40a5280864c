/**
 * INSTALL / UNINSTALL deliveries from the sandbox to an app's webhook endpoint (a node:http server on
 * 127.0.0.1 that hands the raw body to `HighLevel.Webhooks.handleWebhook`): a good UNINSTALL marks
 * the connection revoked; a bad signature, a stale timestamp or a duplicate changes nothing.
 */
import { createServer, type Server } from "node:http"
import type { AddressInfo } from "node:net"
import { ConnectionStore, type Events, type LatchkeyClient, ReauthorizationRequired } from "@latchkey/core"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { HighLevel, WebhookError } from "../src/index.ts"
import { type HighLevelSandbox, startSandbox } from "../src/sandbox.ts"
import { latchkeyFor, link } from "./support.ts"

let sandbox: HighLevelSandbox
let lk: LatchkeyClient
let agencyLk: LatchkeyClient
let app: Server
let hookUrl: string
const handled: Array<{ status: number; reason?: string; type?: string; revoked?: ReadonlyArray<string> }> = []
const events: Array<Events.LatchkeyEvent> = []

beforeAll(async () => {
  sandbox = await startSandbox()
  const store = ConnectionStore.makeMemory()
  lk = latchkeyFor(sandbox, { store })
  agencyLk = latchkeyFor(sandbox, { store, userType: "Company" })
  lk.on((e) => events.push(e))
  const webhooks = HighLevel.Webhooks.make({
    ...sandbox.webhookKeys,
    appId: HighLevel.appIdOf(sandbox.clientId)
  })
  app = createServer((req, res) => {
    const chunks: Array<Buffer> = []
    req.on("data", (c: Buffer) => chunks.push(c))
    req.on("end", () => {
      HighLevel.Webhooks.handleWebhook(lk, webhooks, {
        body: Buffer.concat(chunks),
        headers: req.headers,
        // This app keeps one tenant per HighLevel company.
        owners: (event) => (event.companyId === "sbxCompany0001" || event.locationId ? ["tenant-1"] : [])
      }).then(
        (result) => {
          handled.push({ status: 200, type: result.event.type, revoked: result.revoked })
          res.writeHead(200).end()
        },
        (error: unknown) => {
          const status = error instanceof WebhookError ? error.status : 500
          handled.push({ status, reason: error instanceof WebhookError ? error.reason : String(error) })
          res.writeHead(status).end()
        }
      )
    })
  })
  await new Promise<void>((resolve) => app.listen(0, "127.0.0.1", resolve))
  hookUrl = `http://127.0.0.1:${(app.address() as AddressInfo).port}/highlevel/webhooks`
})

afterAll(async () => {
  await Promise.all([lk.close(), agencyLk.close(), sandbox.close()])
  await new Promise<void>((resolve) => app.close(() => resolve()))
})

const last = () => handled.at(-1)!

describe("webhook delivery", () => {
  it("a signed INSTALL is accepted and changes no connection", async () => {
    const c = await link(lk, sandbox, "sbxLocation001", "tenant-1")
    const delivery = await sandbox.sendWebhook(hookUrl, "INSTALL", { locationId: "sbxLocation001" })
    expect(delivery.status).toBe(200)
    expect(last()).toMatchObject({ type: "INSTALL", revoked: [] })
    expect(delivery.payload).toMatchObject({
      type: "INSTALL",
      installType: "Location",
      companyId: "sbxCompany0001"
    })
    expect((await lk.connection(c.id)).version).toBe(c.version)
  })

  it("a bad signature, a missing one, a stale timestamp: refused (401) and nothing changes", async () => {
    const c = await link(lk, sandbox, "sbxLocation002", "tenant-1")
    const bad = await sandbox.sendWebhook(
      hookUrl,
      "UNINSTALL",
      { locationId: "sbxLocation002" },
      { signing: "invalid" }
    )
    expect(bad.status).toBe(401)
    expect(last().reason).toBe("bad_signature")
    const none = await sandbox.sendWebhook(
      hookUrl,
      "UNINSTALL",
      { locationId: "sbxLocation002" },
      { signing: "none" }
    )
    expect(none.status).toBe(401)
    expect(last().reason).toBe("missing_signature")
    const stale = await sandbox.sendWebhook(
      hookUrl,
      "UNINSTALL",
      { locationId: "sbxLocation002" },
      { payload: { timestamp: new Date(Date.now() - 10 * 60_000).toISOString() } }
    )
    expect(stale.status).toBe(401)
    expect(last().reason).toBe("stale")
    const after = await lk.connection(c.id)
    expect(after.status).toBe("active")
    expect(after.version).toBe(c.version)
    expect((await lk.fetch(c.id, "/locations/sbxLocation002")).status).toBe(200)
  })

  it("a good UNINSTALL marks the location revoked; the same delivery again is a duplicate (200) and does nothing more", async () => {
    const c = await link(lk, sandbox, "sbxLocation003", "tenant-1")
    const delivery = await sandbox.uninstall(
      { locationId: "sbxLocation003" },
      { webhookUrl: hookUrl, signing: "ed25519" }
    )
    expect(delivery?.status).toBe(200)
    expect(last()).toMatchObject({ type: "UNINSTALL", revoked: [c.id] })
    expect((await lk.connection(c.id)).status).toBe("revoked")
    expect(events.filter((e) => e.type === "revoked" && e.connectionId === c.id)).toHaveLength(1)
    const error = await lk.accessToken(c.id).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(ReauthorizationRequired)
    expect((error as ReauthorizationRequired).reason).toBe("revoked")

    // HighLevel retries deliveries: the same webhookId again.
    const replay = await sandbox.sendWebhook(
      hookUrl,
      "UNINSTALL",
      { locationId: "sbxLocation003" },
      { payload: { webhookId: delivery!.payload.webhookId } }
    )
    expect(replay.status).toBe(200)
    expect(last().reason).toBe("duplicate")
    expect(events.filter((e) => e.type === "revoked" && e.connectionId === c.id)).toHaveLength(1)
  })

  it("legacy RSA x-wh-signature deliveries verify too; an agency UNINSTALL revokes the agency and the locations minted from it", async () => {
    const agency = await link(agencyLk, sandbox, "sbxCompany0001", "tenant-1")
    const locations = HighLevel.Locations.client(agencyLk)
    // sbxLocation001 and 002 are linked directly (earlier tests) and stay as they are; 003 was revoked
    // and is now reached through the agency.
    const results = await locations.linkAll(agency.id)
    expect(results.map((r) => r.source)).toEqual(["direct", "direct", "agency"])
    const cedar = results[2]!.connection
    expect(cedar).toMatchObject({ accountId: "sbxLocation003", status: "active" })
    const delivery = await sandbox.uninstall(
      { companyId: "sbxCompany0001" },
      { webhookUrl: hookUrl, signing: "rsa" }
    )
    expect(delivery?.status).toBe(200)
    expect(new Set(last().revoked)).toEqual(new Set([agency.id, cedar.id]))
    expect((await lk.connection(agency.id)).status).toBe("revoked")
    expect((await lk.connection(cedar.id)).status).toBe("revoked")
    const direct = (await lk.connections("tenant-1")).filter(
      (c) => c.accountId !== "sbxLocation003" && c.id !== agency.id
    )
    expect(direct.map((c) => [c.accountId, c.status])).toEqual([
      ["sbxLocation001", "active"],
      ["sbxLocation002", "active"]
    ])
    expect((await lk.fetch(direct[0]!.id, "/locations/sbxLocation001")).status).toBe(200)
  })
})
