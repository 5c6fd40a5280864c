/**
 * Issue 12 item 8: HighLevel webhook replays across instances. Two Latchkey instances share one
 * SQLite file (two handles, as two app servers share a database); each has its own `Webhooks`
 * (nothing shared in memory). A delivery one instance handled is a duplicate for the other, and a
 * replayed UNINSTALL never revokes the connection linked again after it. Deliveries without a
 * `timestamp` or `webhookId` are refused unless `acceptLegacy`.
 */
import { generateKeyPairSync, sign } from "node:crypto"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { type LatchkeyClient, SqliteStore } from "@latchkey/core"
import { Hostile } from "@latchkey/core/testing"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { HighLevel, WebhookError } from "../src/index.ts"
import { type HighLevelSandbox, startSandbox } from "../src/sandbox.ts"
import { latchkeyFor, link } from "./support.ts"

const ed = generateKeyPairSync("ed25519")
const edPem = ed.publicKey.export({ type: "spki", format: "pem" }).toString()
const signed = (payload: Record<string, unknown>) => {
  const body = JSON.stringify(payload)
  return {
    body,
    headers: { "x-ghl-signature": sign(null, Buffer.from(body), ed.privateKey).toString("base64") }
  }
}

const dir = mkdtempSync(join(tmpdir(), "latchkey-webhooks-"))
let sandbox: HighLevelSandbox
let a: LatchkeyClient
let b: LatchkeyClient
const appId = () => HighLevel.appIdOf(sandbox.clientId)

beforeAll(async () => {
  sandbox = await startSandbox()
  const path = join(dir, "shared.db")
  a = latchkeyFor(sandbox, { store: SqliteStore.make({ path }), vault: { plaintext: true } })
  b = latchkeyFor(sandbox, { store: SqliteStore.make({ path }), vault: { plaintext: true } })
})
afterAll(async () => {
  await Promise.all([a.close(), b.close(), sandbox.close()])
  rmSync(dir, { recursive: true, force: true })
  console.info(Hostile.report("provider-highlevel/test/webhook-replay.test.ts"))
})

const handle = (
  lk: LatchkeyClient,
  webhooks: HighLevel.Webhooks.Webhooks,
  delivery: ReturnType<typeof signed>
) =>
  HighLevel.Webhooks.handleWebhook(lk, webhooks, { ...delivery, owners: () => ["tenant-1"] }).then(
    (r) => ({ ok: true as const, revoked: r.revoked }),
    (e: unknown) => {
      if (!(e instanceof WebhookError)) throw e
      return { ok: false as const, reason: e.reason, status: e.status }
    }
  )

describe("item 8: webhook replay protection across instances", () => {
  it("a delivery handled by one instance is a duplicate for another, and cannot revoke a re-linked connection", async () => {
    const hooksA = HighLevel.Webhooks.make({ ed25519PublicKey: edPem, appId: appId() })
    const hooksB = HighLevel.Webhooks.make({ ed25519PublicKey: edPem, appId: appId() })
    const first = await link(a, sandbox, "sbxLocation001", "tenant-1")
    const uninstall = signed({
      type: "UNINSTALL",
      appId: appId(),
      locationId: "sbxLocation001",
      webhookId: `wh-${first.id}`,
      timestamp: new Date().toISOString()
    })
    expect(await handle(a, hooksA, uninstall)).toEqual({ ok: true, revoked: [first.id] })
    const relinked = await link(b, sandbox, "sbxLocation001", "tenant-1")
    expect(relinked.status).toBe("active")
    for (const [lk, hooks] of [
      [b, hooksB],
      [a, hooksA],
      [b, hooksB]
    ] as const) {
      expect(await handle(lk, hooks, uninstall)).toEqual({ ok: false, reason: "duplicate", status: 200 })
      Hostile.record("replayed webhook", "refused")
    }
    expect((await a.connection(relinked.id)).status).toBe("active")
  })

  it("deliveries without timestamp or webhookId are refused by default, accepted only with acceptLegacy", async () => {
    const strict = HighLevel.Webhooks.make({ ed25519PublicKey: edPem, appId: appId() })
    const legacy = HighLevel.Webhooks.make({ ed25519PublicKey: edPem, appId: appId(), acceptLegacy: true })
    const c = await link(a, sandbox, "sbxLocation002", "tenant-1")
    const base = { type: "UNINSTALL", appId: appId(), locationId: "sbxLocation002" }
    const now = new Date().toISOString()
    const table: Array<[string, Record<string, unknown>]> = [
      ["neither", base],
      ["no timestamp", { ...base, webhookId: "wh-legacy-1" }],
      ["no webhookId", { ...base, timestamp: now }],
      ["empty webhookId", { ...base, webhookId: "", timestamp: now }],
      ["numeric webhookId", { ...base, webhookId: 42, timestamp: now }],
      ["null timestamp", { ...base, webhookId: "wh-legacy-2", timestamp: null }]
    ]
    for (const [label, payload] of table) {
      for (const lk of [a, b]) {
        const result = await handle(lk, strict, signed(payload))
        expect(result.ok, label).toBe(false)
        expect(["stale", "malformed"], label).toContain(result.ok ? "" : result.reason)
        Hostile.record("legacy webhook without id or timestamp", "refused")
      }
      expect((await a.connection(c.id)).status, label).toBe("active")
    }
    // The app that still receives old payloads says so explicitly.
    expect(await handle(a, legacy, signed(base))).toEqual({ ok: true, revoked: [c.id] })
  })
})
