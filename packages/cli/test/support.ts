/**
 * The `latchkey` command end to end, one suite per store (sqlite.test.ts, postgres.test.ts,
 * redis.test.ts, so that vitest runs them side by side): real processes (the bin, spawned with Node)
 * on the app's config module (fixtures/latchkey.config.ts), with HeyGen connections linked on its
 * sandbox by the app's own setup.
 */
import { execFile } from "node:child_process"
import { randomBytes, randomUUID } from "node:crypto"
import { mkdtempSync, rmSync } from "node:fs"
import { createServer } from "node:http"
import type { AddressInfo } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import {
  ConnectionStore,
  createLatchkey,
  type LatchkeyClient,
  LifecycleEvents,
  SqliteStore,
  Vault,
  Webhooks
} from "@latchkey/core"
import { HeyGen } from "@latchkey/provider-heygen"
import { type HeyGenSandbox, startHeyGenSandbox } from "@latchkey/provider-heygen/sandbox"
import { PostgresStore } from "@latchkey/store-postgres"
import { RedisStore } from "@latchkey/store-redis"
import { Effect, Fiber, type Layer } from "effect"
import { Redis } from "ioredis"
import pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"

export type StoreKind = "sqlite" | "postgres" | "redis"

const BIN = join(import.meta.dirname, "../src/bin.ts")
const CONFIG = join(import.meta.dirname, "fixtures/latchkey.config.ts")
const PG_URL = process.env.LATCHKEY_TEST_POSTGRES_URL ?? "postgres://postgres@127.0.0.1:5432/test"
const REDIS_URL = process.env.LATCHKEY_TEST_REDIS_URL ?? "redis://127.0.0.1:6379"
const REDIRECT = "http://127.0.0.1:9/callback"

interface Run {
  readonly code: number
  readonly stdout: string
  readonly stderr: string
}

interface Target {
  readonly env: Record<string, string>
  readonly store: () => Layer.Layer<ConnectionStore.ConnectionStore, unknown>
  readonly cleanup: () => Promise<void>
}

const targets: Record<StoreKind, () => Target> = {
  sqlite: () => {
    const dir = mkdtempSync(join(tmpdir(), "latchkey-cli-"))
    const path = join(dir, "latchkey.db")
    return {
      env: { LK_STORE: "sqlite", LK_SQLITE_PATH: path },
      store: () => SqliteStore.layer({ path }),
      cleanup: async () => rmSync(dir, { recursive: true, force: true })
    }
  },
  postgres: () => {
    const schema = `lk_cli_${randomBytes(6).toString("hex")}`
    return {
      env: { LK_STORE: "postgres", LK_PG_URL: PG_URL, LK_PG_SCHEMA: schema },
      store: () => PostgresStore.layer({ connectionString: PG_URL, schema, maxConnections: 2 }),
      cleanup: async () => {
        const admin = new pg.Pool({ connectionString: PG_URL, max: 1 })
        await admin.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`)
        await admin.end()
      }
    }
  },
  redis: () => {
    const prefix = `latchkey-cli-${randomUUID()}:`
    return {
      env: { LK_STORE: "redis", LK_REDIS_URL: REDIS_URL, LK_REDIS_PREFIX: prefix },
      store: () => RedisStore.layer({ url: REDIS_URL, keyPrefix: prefix }),
      cleanup: async () => {
        const client = new Redis(REDIS_URL)
        let cursor = "0"
        do {
          const [next, keys] = await client.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 500)
          cursor = next
          if (keys.length > 0) await client.del(...keys)
        } while (cursor !== "0")
        await client.quit()
      }
    }
  }
}

export const cliSuite = (kind: StoreKind) =>
  describe(`latchkey on ${kind}`, () => {
    // Every command runs on every store; the checks that do not depend on the store (text layout,
    // error output, a second rotation) run on SQLite only, to keep the suite lean.
    const full = kind === "sqlite"
    let sandbox: HeyGenSandbox
    let target: Target
    let seeder: LatchkeyClient
    const k1 = Vault.generateKey()
    const k2 = Vault.generateKey()
    let env: Record<string, string>
    const ids: Record<string, string> = {}
    const tokens: Array<string> = []

    const cli = (args: ReadonlyArray<string>, extra: Record<string, string> = {}) =>
      new Promise<Run>((resolve) => {
        execFile(
          process.execPath,
          [BIN, "--config", CONFIG, ...args],
          { env: { ...process.env, ...env, ...extra, NO_COLOR: "1" }, timeout: 60_000 },
          (error, stdout, stderr) =>
            resolve({ code: error ? ((error as { code?: number }).code ?? 1) : 0, stdout, stderr })
        )
      })
    const cliJson = async (args: ReadonlyArray<string>, extra: Record<string, string> = {}) => {
      const run = await cli([...args, "--json"], extra)
      return { ...run, json: JSON.parse(run.stdout) }
    }

    beforeAll(async () => {
      // Half-hour access tokens: both live connections are due for a refresh within the hour.
      sandbox = await startHeyGenSandbox({
        redirectUris: [REDIRECT],
        lifetimes: { accessTokenSeconds: 1800 }
      })
      target = targets[kind]!()
      env = {
        ...target.env,
        HEYGEN_URL: sandbox.url,
        HEYGEN_CLIENT_ID: sandbox.clientId,
        HEYGEN_REDIRECT_URI: REDIRECT,
        LK_KEYS: JSON.stringify([
          { id: "k2", key: k2 },
          { id: "k1", key: k1 }
        ]),
        LK_WRITE_KEY: "k1"
      }
      // Seed with the app's own setup: three HeyGen accounts sealed with k1, one of them dead at HeyGen.
      seeder = createLatchkey({
        providers: [
          HeyGen.provider({ clientId: sandbox.clientId, redirectUri: REDIRECT, urls: sandbox.urls })
        ],
        store: target.store(),
        vault: { keys: [{ id: "k1", key: k1 }] }
      })
      const link = async (ownerId: string, account: string) => {
        const { url } = await seeder.startAuthorization({ providerId: "heygen", ownerId })
        const { connection } = await seeder.completeAuthorization({
          callback: await sandbox.approve(url, { account })
        })
        tokens.push(await seeder.accessToken(connection.id))
        return connection.id
      }
      ids.jane = await link("user-1", "jane_doe")
      ids.walt = await link("user-1", "walt_wallet")
      ids.uma = await link("user-2", "uma_metered")
      for (const grant of sandbox.registry.grants()) {
        if (grant.accountId === "uma_metered") sandbox.registry.revokeGrant(grant.id)
      }
      await seeder.refresh(ids.uma).catch(() => undefined)
    })
    afterAll(async () => {
      await seeder?.close()
      await sandbox?.close()
      await target?.cleanup()
    })

    it("store migrate, then doctor: one verdict per line, readable at 80 columns", async () => {
      const migrated = await cli(["store", "migrate"])
      expect(migrated.code).toBe(0)
      expect(migrated.stdout).toMatch(new RegExp(`^${kind} store ready`))
      const doctor = await cli(["doctor"])
      console.log(`latchkey doctor (${kind}):\n${doctor.stdout}`)
      const lines = doctor.stdout.trimEnd().split("\n")
      for (const line of lines) expect(line.length).toBeLessThanOrEqual(80)
      expect(lines.some((l) => /^ok {4}vault +2 key\(s\) valid \(k2, k1\), writing with "k1"/.test(l))).toBe(
        true
      )
      expect(lines.some((l) => new RegExp(`^ok {4}store +${kind} reachable in \\d+ ms`).test(l))).toBe(true)
      expect(lines.some((l) => /^ok {4}clock +the store's clock is within/.test(l))).toBe(true)
      expect(
        lines.some((l) => /^WARN {2}provider heygen +redirect URI http:\/\/127\.0\.0\.1:9\/callback/.test(l))
      ).toBe(true)
      expect(doctor.code).toBe(0)
      if (kind === "redis")
        expect(lines.some((l) => /^ok {4}redis eviction +maxmemory-policy is noeviction/.test(l))).toBe(true)
      expect(lines.at(-1)).toBe("no problems; 1 warning(s)")
    })

    it("connections list and show: filters, and never a token value", async () => {
      const [all, show] = await Promise.all([
        cliJson(["connections", "list"]),
        cli(["connections", "show", ids.jane!])
      ])
      expect(all.json.map((c: { id: string }) => c.id).sort()).toEqual([ids.jane, ids.walt, ids.uma].sort())
      expect(show.stdout).toMatch(/^status {8}active$/m)
      expect(show.stdout).toMatch(/^sealed with {3}accessToken: k1, refreshToken: k1, extras: k1$/m)
      const outputs = [all.stdout, show.stdout]
      if (full) {
        const [mine, dead, missing, heygen, none] = await Promise.all([
          cliJson(["connections", "list", "--owner", "user-1"]),
          cli(["connections", "list", "--status", "needs_reauth"]),
          cli(["connections", "show", "conn_nope"]),
          cliJson(["connections", "list", "--provider", "heygen", "--status", "active"]),
          cli(["connections", "list", "--provider", "nope"])
        ])
        expect(heygen.json.map((c: { id: string }) => c.id).sort()).toEqual([ids.jane, ids.walt].sort())
        expect(none.stdout).toBe("0 connections\n")
        expect(mine.json.map((c: { id: string }) => c.id).sort()).toEqual([ids.jane, ids.walt].sort())
        expect(dead.stdout).toContain(ids.uma)
        expect(dead.stdout).not.toContain(ids.jane)
        expect(dead.stdout.trimEnd().split("\n").at(-1)).toBe("1 connection")
        expect(missing.code).toBe(1)
        expect(missing.stderr).toBe("error: no connection conn_nope\n")
        outputs.push(mine.stdout, dead.stdout)
      }
      for (const output of outputs) {
        for (const token of tokens) expect(output).not.toContain(token)
        for (const line of output.trimEnd().split("\n")) expect(line.length).toBeLessThanOrEqual(80)
      }
    })

    it("health: counts, due refreshes, needs_reauth causes, oldest refresh tokens", async () => {
      const health = await cliJson(["health"])
      expect(health.json).toMatchObject({
        total: 3,
        byStatus: { active: 2, needs_reauth: 1, revoked: 0 },
        dueWithinHour: 2,
        needsReauth: [{ code: "invalid_grant", count: 1 }]
      })
      expect(health.json.oldestRefreshTokens.map((r: { id: string }) => r.id).sort()).toEqual(
        [ids.jane, ids.walt].sort()
      )
      if (full) {
        const text = await cli(["health"])
        console.log(`latchkey health (${kind}):\n${text.stdout}`)
        expect(text.stdout).toMatch(/^connections {4}3: 2 active, 1 needs_reauth, 0 revoked$/m)
        expect(text.stdout).toMatch(/^due in 1 hour {2}2 refreshes, next in (19|20)m/m)
        expect(text.stdout).toMatch(/^ {2}1 × invalid_grant/m)
        for (const line of text.stdout.trimEnd().split("\n")) expect(line.length).toBeLessThanOrEqual(80)
      }
    })

    it("refresh, vault check, vault rotate --to (resumable), unlink", async () => {
      const refreshed = await cliJson(["refresh", ids.jane!])
      // version 3: the refresh journal, then the new tokens
      expect(refreshed.json).toMatchObject({ id: ids.jane, status: "active", version: 3 })
      if (full) {
        const before = await cliJson(["vault", "check"], { LK_WRITE_KEY: "k2" })
        expect(before.json).toMatchObject({ connections: 3, writeKeyId: "k2", stale: 3, failed: [] })
      }
      const rotated = await cliJson(["vault", "rotate", "--to", "k2"])
      expect(rotated.code).toBe(0)
      expect(rotated.json).toMatchObject({ to: "k2", done: 3, total: 3, resealed: 3, failed: [] })
      if (full) {
        // Run again: it resumes, with nothing left to do.
        const again = await cli(["vault", "rotate", "--to", "k2"], { LK_WRITE_KEY: "k2" })
        expect(again.stdout).toMatch(/^re-sealed 0 of 3 connections with key "k2"/)
        expect(again.stderr).toMatch(/\[#{30}\] 3\/3 100%/)
      }
      // With only the new key configured, everything still opens.
      const onlyNew = await cli(["vault", "check"], {
        LK_KEYS: JSON.stringify([{ id: "k2", key: k2 }]),
        LK_WRITE_KEY: ""
      })
      expect(onlyNew.code).toBe(0)
      expect(onlyNew.stdout).toMatch(/^all 3 connections open with the configured keys/)
      const unlinked = await cli(["unlink", ids.walt!])
      expect(unlinked.code).toBe(0)
      expect(unlinked.stdout).toMatch(new RegExp(`^unlinked ${ids.walt} \\(revoked at the provider\\)`))
      if (full) expect((await cliJson(["connections", "list"])).json).toHaveLength(2)
    })

    it("webhooks: the dead letters of the worker, and --redeliver", async () => {
      // A receiver that refuses everything: with one attempt per event, each one is dead-lettered.
      const server = createServer((_req, res) => {
        res.statusCode = 500
        res.end()
      })
      await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
      const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hooks`
      const connection = { id: ids.jane!, ownerId: "user-1", providerId: "heygen" }
      const events = [
        LifecycleEvents.make(
          "needs_reauth",
          connection,
          { reason: "invalid_grant", code: "invalid_grant" },
          1
        ),
        LifecycleEvents.make("revoked", connection, { reason: "revoked_at_provider" }, 2)
      ]
      try {
        await seeder.run(
          Effect.gen(function* () {
            const store = yield* ConnectionStore.ConnectionStore
            // The seeding's own events (links, refreshes) are in the log too: start the worker past them.
            let end = 0
            for (;;) {
              const page = yield* store.readEvents!(end, 500)
              if (page.events.length === 0) break
              end = page.next
            }
            yield* store.setConsumerState!(
              Webhooks.stateKey("app"),
              JSON.stringify({ ...Webhooks.emptyState, cursor: end })
            )
            yield* store.appendEvents!(events)
            const worker = yield* Effect.forkChild(
              Webhooks.run({ url, secret: "s", name: "app", maxAttempts: 1, pollIntervalMs: 20 })
            )
            for (let i = 0; i < 500; i++) {
              if ((yield* Webhooks.readState(store, "app")).deadLetters.length === 2) break
              yield* Effect.sleep(10)
            }
            yield* Fiber.interrupt(worker)
          })
        )
      } finally {
        server.close()
      }
      const [listed, text] = await Promise.all([
        cliJson(["webhooks", "--name", "app"]),
        cli(["webhooks", "--name", "app"])
      ])
      expect(listed.json).toMatchObject({
        name: "app",
        delivered: 0,
        failing: null,
        redeliveryPending: false
      })
      expect(listed.json.deadLetters.map((d: { eventId: string }) => d.eventId)).toEqual(
        events.map((e) => e.id)
      )
      expect(listed.json.deadLetters[0]).toMatchObject({
        type: "needs_reauth",
        attempts: 1,
        lastError: "answered 500"
      })
      expect(text.stdout).toMatch(/^dead letters {3}2:$/m)
      for (const line of text.stdout.trimEnd().split("\n")) expect(line.length).toBeLessThanOrEqual(80)
      // With the app's options configuring the worker (name "app"), the commands read its state.
      const hooked = { LK_WEBHOOK_URL: "http://127.0.0.1:9/hooks" }
      const redelivered = await cli(["webhooks", "--redeliver"], hooked)
      expect(redelivered.stdout).toMatch(/^requeued 2 dead letter\(s\)/m)
      const [pending, health, healthText] = await Promise.all([
        cliJson(["webhooks"], hooked),
        cliJson(["health"], hooked),
        cli(["health"], hooked)
      ])
      expect(pending.json).toMatchObject({ name: "app", redeliveryPending: true })
      expect(health.json.webhooks).toEqual({ name: "app", delivered: 0, failing: false, deadLetters: 2 })
      expect(healthText.stdout).toMatch(/^webhooks {7}0 delivered, none failing, 2 dead letter\(s\)$/m)
      // Nothing but ids, types, counts and the HTTP status: no token of the seeded accounts.
      for (const token of tokens) expect(`${listed.stdout}${text.stdout}`).not.toContain(token)
    })
  })
