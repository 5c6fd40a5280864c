import { randomUUID } from "node:crypto"
import { Effect, Redacted } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import type { Connection, ConnectionRecord } from "../Connection.ts"
import * as ConnectionModule from "../Connection.ts"
import { ConnectionStore, type ConnectionStoreShape, type PendingAuthorization } from "../ConnectionStore.ts"
import type { StoreError } from "../Errors.ts"
import { createLatchkey, type LatchkeyClient } from "../Latchkey.ts"
import * as Provider from "../Provider.ts"
import * as Vault from "../VaultNamespace.ts"
import { oauthConnection } from "./oauthConnection.ts"
import { openWithOpener, type WorkerSettings } from "./storeConformanceWorker.ts"
import { storeEvents } from "./storeEvents.ts"
import { storeFaults } from "./storeFaults.ts"
import { storeFleet } from "./storeFleet.ts"
import type { ConformanceTokenServer, OpenedStore, StoreConformanceOptions } from "./storeKit.ts"
import { startStoreWorker, unreachableProvider, withStore } from "./storeKit.ts"

export type { ConformanceProviderSettings, StoreOpener, WorkerSettings } from "./storeConformanceWorker.ts"
export {
  type ConformanceTokenServer,
  type OpenedStore,
  type StoreConformanceOptions,
  startStoreWorker,
  type WorkerHandle
} from "./storeKit.ts"

const run = <A, E>(effect: Effect.Effect<A, E>) => Effect.runPromise(effect)
const flip = <A>(effect: Effect.Effect<A, StoreError>) => run(Effect.flip(effect))
const PROVIDER_ID = "conformance"

/** A stored connection with every field set; token fields in the vault's `plain.` form. */
export const sampleRecord = (id: string, patch: Partial<ConnectionRecord> = {}): ConnectionRecord => ({
  id,
  ownerId: "owner",
  providerId: "p",
  accountId: `acct-${id}`,
  label: id,
  kind: "oauth",
  status: "active",
  version: 1,
  createdAt: 1,
  updatedAt: 1,
  lastRefreshAt: null,
  lastError: null,
  profile: null,
  accessToken: "plain.a",
  refreshToken: "plain.r",
  tokenType: "Bearer",
  obtainedAt: 1,
  expiresAt: 100,
  refreshExpiresAt: null,
  scopes: ["read"],
  extras: "plain.{}",
  refreshDueAt: 50,
  ...patch
})

/** A decoded connection with a valid access token (so reading it never calls a provider). */
const sampleConnection = (id: string, now: number): Connection =>
  oauthConnection({
    id,
    ownerId: "rotation-owner",
    providerId: "p",
    accountId: `acct-${id}`,
    label: id,
    accessToken: `access-${id}-${randomUUID()}`,
    refreshToken: `refresh-${id}-${randomUUID()}`,
    obtainedAt: now,
    expiresAt: now + 3_600_000,
    scopes: ["read"],
    extras: { tenant: `t-${id}`, secretish: randomUUID() },
    now
  })

const rotateOn = (store: ConnectionStoreShape, vault: Vault.VaultShape, options: Vault.RotateOptions = {}) =>
  run(
    Vault.rotate(options).pipe(
      Effect.provideService(Vault.Vault, vault),
      Effect.provideService(ConnectionStore, store)
    )
  )

/**
 * Register the suite (vitest `describe` / `it`). Call it at the top level of a test file.
 */
export const storeConformance = (options: StoreConformanceOptions): void => {
  const record = sampleRecord

  describe(`store conformance: ${options.name}`, () => {
    describe("the store contract", () => {
      it("inserts, reads, lists by owner, finds by account and refuses duplicates", async () => {
        await withStore(options, async (store) => {
          await run(store.insert(record("a")))
          await run(store.insert(record("b", { createdAt: 2 })))
          await run(store.insert(record("c", { ownerId: "other" })))
          expect((await run(store.get("a")))?.label).toBe("a")
          expect(await run(store.get("zzz"))).toBeUndefined()
          expect((await run(store.listByOwner("owner"))).map((r) => r.id)).toEqual(["a", "b"])
          expect(await run(store.listByOwner("nobody"))).toEqual([])
          expect((await run(store.findByAccount("owner", "p", "acct-b")))?.id).toBe("b")
          expect(await run(store.findByAccount("owner", "p", "acct-zzz"))).toBeUndefined()
          // The same account id under another owner or provider is another connection.
          expect(await run(store.findByAccount("other", "p", "acct-a"))).toBeUndefined()
          const dupId = await flip(store.insert(record("a", { accountId: "new" })))
          expect(dupId).toMatchObject({ _tag: "StoreError", reason: "conflict" })
          const dupAccount = await flip(store.insert(record("d", { accountId: "acct-a" })))
          expect(dupAccount).toMatchObject({ _tag: "StoreError", reason: "conflict" })
          expect(await run(store.get("d"))).toBeUndefined()
          await run(store.insert(record("e", { ownerId: "other", accountId: "acct-a" })))
          await run(store.insert(record("f", { providerId: "q", accountId: "acct-a" })))
          expect(await run(store.remove("a"))).toBe(true)
          expect(await run(store.remove("a"))).toBe(false)
        })
      })

      it("returns every field exactly as written", async () => {
        await withStore(options, async (store) => {
          const full = record("full", {
            label: 'Ada \u00e9 \u{1F511} "quoted" \\ back',
            status: "needs_reauth",
            version: 7,
            createdAt: 1_700_000_000_123,
            updatedAt: 1_700_000_100_456,
            lastRefreshAt: 1_700_000_050_000,
            lastError: { code: "invalid_grant", description: "Token was revoked", at: 1_700_000_060_000 },
            profile: { email: "ada@example.com", nested: { list: [1, "two", null, true] }, nul: "a\u0000b" },
            accessToken: "lk1.k1.aXY.Ym9keQ",
            refreshToken: null,
            tokenType: "DPoP",
            obtainedAt: 1_700_000_000_000,
            expiresAt: null,
            refreshExpiresAt: 1_731_536_000_000,
            scopes: [],
            extras: "lk1.k1.aXY.ZXh0cmFz",
            refreshDueAt: null,
            journal: {
              holder: "4242-holder",
              fence: 12,
              startedAt: 1_700_000_000_500,
              fingerprint: "q1w2e3r4t5y6u7i8o9p0aa",
              suspectedAt: 1_700_000_200_000,
              resend: { holder: "4343-other", fence: 13, at: 1_700_000_300_000 }
            }
          })
          await run(store.insert(full))
          expect(await run(store.get("full"))).toEqual(full)
          expect(await run(store.findByAccount("owner", "p", "acct-full"))).toEqual(full)
          expect(await run(store.listByOwner("owner"))).toEqual([full])
          const next = { ...full, version: 8, status: "active" as const, refreshDueAt: 5, scopes: ["a", "b"] }
          await run(store.update(next, 7))
          expect(await run(store.get("full"))).toEqual(next)
          expect(await run(store.listDue(10, 10))).toEqual([next])
        })
      })

      it("updates only by compare-and-set on the version", async () => {
        await withStore(options, async (store) => {
          await run(store.insert(record("a")))
          await run(store.update(record("a", { version: 2, label: "two" }), 1))
          const stale = await flip(store.update(record("a", { version: 2, label: "stale" }), 1))
          expect(stale).toMatchObject({ _tag: "StoreError", reason: "conflict" })
          const skip = await flip(store.update(record("a", { version: 4 }), 2))
          expect(skip).toMatchObject({ reason: "conflict" })
          const same = await flip(store.update(record("a", { version: 2 }), 2))
          expect(same).toMatchObject({ reason: "conflict" })
          const missing = await flip(store.update(record("nope", { version: 2 }), 1))
          expect(missing).toMatchObject({ reason: "conflict" })
          expect(await run(store.get("nope"))).toBeUndefined()
          expect((await run(store.get("a")))?.label).toBe("two")
          expect((await run(store.get("a")))?.version).toBe(2)
        })
      })

      it("lets exactly one of many concurrent writers of the same version win", async () => {
        await withStore(options, async (store) => {
          await run(store.insert(record("a")))
          const writers = Array.from({ length: 12 }, (_, i) =>
            run(Effect.result(store.update(record("a", { version: 2, label: `writer-${i}` }), 1)))
          )
          const results = await Promise.all(writers)
          const winners = results.flatMap((r, i) => (r._tag === "Success" ? [i] : []))
          expect(winners).toHaveLength(1)
          for (const r of results) {
            if (r._tag === "Failure") expect(r.failure).toMatchObject({ reason: "conflict" })
          }
          expect((await run(store.get("a")))?.label).toBe(`writer-${winners[0]}`)
        })
      })

      it("lists due active connections soonest first, following updates and removals", async () => {
        await withStore(options, async (store) => {
          await run(store.insert(record("late", { refreshDueAt: 90 })))
          await run(store.insert(record("soon", { refreshDueAt: 10 })))
          await run(store.insert(record("never", { refreshDueAt: null })))
          await run(store.insert(record("dead", { refreshDueAt: 5, status: "needs_reauth" })))
          expect((await run(store.listDue(100, 10))).map((r) => r.id)).toEqual(["soon", "late"])
          expect((await run(store.listDue(100, 1))).map((r) => r.id)).toEqual(["soon"])
          expect(await run(store.listDue(9, 10))).toEqual([])
          expect((await run(store.listDue(10, 10))).map((r) => r.id)).toEqual(["soon"])
          // An update moves a connection in and out of the due list.
          await run(store.update(record("soon", { version: 2, refreshDueAt: 95 }), 1))
          await run(store.update(record("never", { version: 2, refreshDueAt: 20 }), 1))
          await run(store.update(record("late", { version: 2, status: "revoked" }), 1))
          expect((await run(store.listDue(100, 10))).map((r) => r.id)).toEqual(["never", "soon"])
          await run(store.update(record("dead", { version: 2, status: "active", refreshDueAt: 1 }), 1))
          expect((await run(store.listDue(100, 10))).map((r) => r.id)).toEqual(["dead", "never", "soon"])
          await run(store.remove("never"))
          expect((await run(store.listDue(100, 10))).map((r) => r.id)).toEqual(["dead", "soon"])
        })
      })

      it("follows updates and removals in the owner list and the account index", async () => {
        await withStore(options, async (store) => {
          await run(store.insert(record("a", { createdAt: 1 })))
          await run(store.insert(record("b", { createdAt: 2 })))
          await run(store.update(record("a", { version: 2, label: "renamed" }), 1))
          expect((await run(store.listByOwner("owner"))).map((r) => [r.id, r.label])).toEqual([
            ["a", "renamed"],
            ["b", "b"]
          ])
          expect((await run(store.findByAccount("owner", "p", "acct-a")))?.label).toBe("renamed")
          expect(await run(store.remove("a"))).toBe(true)
          expect(await run(store.get("a"))).toBeUndefined()
          expect(await run(store.findByAccount("owner", "p", "acct-a"))).toBeUndefined()
          expect((await run(store.listByOwner("owner"))).map((r) => r.id)).toEqual(["b"])
          // Once removed, the account can be linked again under a new id.
          await run(store.insert(record("a2", { accountId: "acct-a", createdAt: 3 })))
          expect((await run(store.findByAccount("owner", "p", "acct-a")))?.id).toBe("a2")
          expect((await run(store.listByOwner("owner"))).map((r) => r.id)).toEqual(["b", "a2"])
        })
      })

      it("grants the lease to one holder at a time with increasing fences, judged by the store's clock", async () => {
        await withStore(options, async (store) => {
          const before = Date.now()
          const first = await run(store.acquireLease("c1", "A", 60_000))
          expect(first).toMatchObject({ connectionId: "c1", holder: "A", fence: 1 })
          // The store says when, on its own clock (this host's, or the database server's).
          expect(first!.expiresAt - first!.grantedAt).toBe(60_000)
          expect(Math.abs(first!.grantedAt - before)).toBeLessThan(5_000)
          expect(await run(store.acquireLease("c1", "B", 60_000))).toBeUndefined()
          // Only the holder's own lease is released.
          await run(store.releaseLease({ ...first!, holder: "B" }))
          expect(await run(store.acquireLease("c1", "B", 60_000))).toBeUndefined()
          await run(store.releaseLease({ ...first!, fence: 7 }))
          expect(await run(store.acquireLease("c1", "B", 60_000))).toBeUndefined()
          await run(store.releaseLease(first!))
          // A released lease is not renewed.
          expect(await run(store.renewLease(first!, 60_000))).toBeUndefined()
          const second = await run(store.acquireLease("c1", "B", 150))
          expect(second?.fence).toBe(2)
          // An expired lease (by the store's clock) can be taken over.
          await new Promise((r) => setTimeout(r, 400))
          const third = await run(store.acquireLease("c1", "C", 60_000))
          expect(third?.fence).toBe(3)
          // The previous holder can neither renew nor release the new holder's lease.
          expect(await run(store.renewLease(second!, 60_000))).toBeUndefined()
          await run(store.releaseLease(second!))
          expect(await run(store.acquireLease("c1", "D", 60_000))).toBeUndefined()
          // Leases of different connections are independent.
          expect((await run(store.acquireLease("c2", "D", 60_000)))?.fence).toBe(1)
          // Fences keep increasing after a release.
          await run(store.releaseLease(third!))
          expect((await run(store.acquireLease("c1", "E", 60_000)))?.fence).toBe(4)
        })
      })

      it("releases the caller's lease with a compare-and-set write that writes, and only then (releasesLeaseOnUpdate)", async () => {
        await withStore(options, async (store) => {
          await run(store.insert(record("w1")))
          const lease = (await run(store.acquireLease("w1", "A", 60_000)))!
          if (store.releasesLeaseOnUpdate !== true) {
            // A store that does not release with a write still writes (the engine releases after).
            await run(store.update({ ...record("w1"), version: 2 }, 1, undefined, { releaseLease: lease }))
            expect((await run(store.get("w1")))?.version).toBe(2)
            return
          }
          // A compare-and-set that does not write keeps the lease.
          await expect(
            run(
              store.update({ ...record("w1"), version: 3, label: "stale" }, 2, undefined, {
                releaseLease: lease
              })
            )
          ).rejects.toMatchObject({ reason: "conflict" })
          expect(await run(store.acquireLease("w1", "B", 60_000))).toBeUndefined()
          // Another holder's lease, or another fence, is not released by the write.
          await run(
            store.update({ ...record("w1"), version: 2, label: "second" }, 1, undefined, {
              releaseLease: { ...lease, holder: "B" }
            })
          )
          await run(
            store.update({ ...record("w1"), version: 3, label: "third" }, 2, undefined, {
              releaseLease: { ...lease, fence: lease.fence + 7 }
            })
          )
          expect(await run(store.acquireLease("w1", "B", 60_000))).toBeUndefined()
          // The holder's own: written and released in one write, never renewed after.
          await run(
            store.update({ ...record("w1"), version: 4, label: "fourth" }, 3, undefined, {
              releaseLease: lease
            })
          )
          expect((await run(store.get("w1")))?.label).toBe("fourth")
          expect(await run(store.renewLease(lease, 60_000))).toBeUndefined()
          expect((await run(store.acquireLease("w1", "B", 60_000)))?.fence).toBe(lease.fence + 1)
          // With events and quiet, the same.
          await run(store.insert(record("w2")))
          const second = (await run(store.acquireLease("w2", "A", 60_000)))!
          await run(
            store.update({ ...record("w2"), version: 2 }, 1, [], { quiet: true, releaseLease: second })
          )
          expect((await run(store.acquireLease("w2", "B", 60_000)))?.fence).toBe(second.fence + 1)
        })
      })

      it("renews only the holder's own lease, from the store's now, also after it lapsed unclaimed", async () => {
        await withStore(options, async (store) => {
          const lease = (await run(store.acquireLease("r1", "A", 200)))!
          const renewed = await run(store.renewLease(lease, 60_000))
          expect(renewed).toMatchObject({ connectionId: "r1", holder: "A", fence: lease.fence })
          expect(renewed!.expiresAt - renewed!.grantedAt).toBe(60_000)
          expect(renewed!.grantedAt).toBeGreaterThanOrEqual(lease.grantedAt)
          // Renewed: nobody else gets it, even after the first TTL has passed.
          await new Promise((r) => setTimeout(r, 300))
          expect(await run(store.acquireLease("r1", "B", 60_000))).toBeUndefined()
          expect(await run(store.renewLease({ ...renewed!, holder: "B" }, 60_000))).toBeUndefined()
          await run(store.releaseLease(renewed!))
          // A lease that lapsed while nobody claimed it can still be renewed by its holder (no newer fence exists) ...
          const short = (await run(store.acquireLease("r2", "A", 100)))!
          await new Promise((r) => setTimeout(r, 250))
          const late = await run(store.renewLease(short, 60_000))
          expect(late?.fence).toBe(short.fence)
          expect(await run(store.acquireLease("r2", "B", 60_000))).toBeUndefined()
          await run(store.releaseLease(late!))
          // ... but not once another holder took it.
          const lapsed = (await run(store.acquireLease("r3", "A", 100)))!
          await new Promise((r) => setTimeout(r, 250))
          const taker = await run(store.acquireLease("r3", "B", 60_000))
          expect(taker?.fence).toBe(lapsed.fence + 1)
          expect(await run(store.renewLease(lapsed, 60_000))).toBeUndefined()
        })
      })

      it("grants the lease once when many ask at the same moment", async () => {
        await withStore(options, async (store) => {
          const leases = await Promise.all(
            Array.from({ length: 16 }, (_, i) => run(store.acquireLease("hot", `holder-${i}`, 30_000)))
          )
          const granted = leases.filter((l) => l !== undefined)
          expect(granted).toHaveLength(1)
          expect(granted[0]?.fence).toBe(1)
        })
      })

      it("hands a pending authorization out once", async () => {
        await withStore(options, async (store) => {
          const pending: PendingAuthorization = {
            state: "s1",
            providerId: "p",
            ownerId: "o",
            redirectUri: "https://app.test/cb",
            codeVerifier: null,
            scopes: [],
            createdAt: 0,
            expiresAt: 600_000,
            metadata: { back: "/x" }
          }
          await run(store.putPending(pending))
          await run(
            store.putPending({
              ...pending,
              state: "s2",
              codeVerifier: "lk1.k1.aXY.dmVyaWZpZXI",
              scopes: ["a", "b"],
              metadata: null
            })
          )
          const results = await Promise.all([1, 2, 3].map(() => run(store.takePending("s1", 10))))
          expect(results.filter((r) => r._tag === "Found")).toHaveLength(1)
          expect(results.filter((r) => r._tag === "Consumed")).toHaveLength(2)
          expect(results.find((r) => r._tag === "Found")).toEqual({ _tag: "Found", pending })
          expect(await run(store.takePending("s1", 20))).toEqual({ _tag: "Consumed" })
          expect(await run(store.takePending("nope", 10))).toEqual({ _tag: "Missing" })
          expect(await run(store.takePending("s2", 30))).toMatchObject({
            _tag: "Found",
            pending: {
              state: "s2",
              codeVerifier: "lk1.k1.aXY.dmVyaWZpZXI",
              scopes: ["a", "b"],
              metadata: null
            }
          })
        })
      })

      it("walks every connection in pages ordered by id, and counts them", async () => {
        await withStore(options, async (store) => {
          if (store.scan === undefined || store.count === undefined) {
            throw new Error(`${options.name} has no scan/count; Vault.rotate needs them`)
          }
          expect(await run(store.scan(undefined, 10))).toEqual({ records: [], next: undefined })
          expect(await run(store.count())).toBe(0)
          const ids = ["k3", "a1", "m7", "b2", "z9", "c4", "x0"]
          for (const [i, id] of ids.entries()) {
            await run(store.insert(record(id, { ownerId: `owner-${i % 3}` })))
          }
          expect(await run(store.count())).toBe(ids.length)
          const seen: Array<string> = []
          let after: string | undefined
          for (let page = 0; page < 10; page++) {
            const result = await run(store.scan(after, 3))
            expect(result.records.length).toBeLessThanOrEqual(3)
            seen.push(...result.records.map((r) => r.id))
            if (result.next === undefined) break
            expect(result.next).toBe(result.records.at(-1)?.id)
            after = result.next
          }
          expect(seen).toEqual([...ids].sort())
          expect((await run(store.scan("m7", 100))).records.map((r) => r.id)).toEqual(["x0", "z9"])
          expect(await run(store.scan("z9", 100))).toEqual({ records: [], next: undefined })
          expect((await run(store.scan(undefined, 100))).records[0]).toEqual(
            record("a1", { ownerId: "owner-1" })
          )
          await run(store.remove("m7"))
          expect(await run(store.count())).toBe(ids.length - 1)
        })
      })
    })

    const plantRecord = options.plantRecord
    if (plantRecord !== undefined) {
      describe("a stored row that is not a record", () => {
        // Written straight through the driver, as a bug, a manual edit or a damaged backup would.
        const garbage: ReadonlyArray<readonly [string, string]> = [
          ["text that is not JSON", "{not json"],
          ["JSON null", "null"],
          ["a JSON array", "[]"],
          ["an object missing the record's fields", JSON.stringify({ id: "x", version: 1 })],
          ["a record whose version is not a number", JSON.stringify({ ...record("x"), version: "2" })]
        ]
        for (const [what, text] of garbage) {
          it(`${what}: StoreError("corrupt"), not retryable, from get, listByOwner and listDue`, async () => {
            await withStore(options, async (store, opened) => {
              await run(store.insert(record("sound", { refreshDueAt: 10 })))
              await run(store.insert(record("bad", { refreshDueAt: 20 })))
              await plantRecord(opened, "bad", text)
              // The sound row still reads; nothing is made up for the bad one.
              expect((await run(store.get("sound")))?.id).toBe("sound")
              for (const error of [
                await flip(store.get("bad")),
                await flip(store.listByOwner("owner")),
                await flip(store.listDue(1_000, 10))
              ]) {
                expect(error).toMatchObject({ _tag: "StoreError", reason: "corrupt" })
                expect(error.isRetryable).toBe(false)
                // The message never quotes what was stored (records hold sealed tokens).
                expect(error.message).not.toContain("plain.")
              }
            })
          })
        }
      })
    }

    storeEvents(options, record)

    describe("Vault rotation through this store", () => {
      const keyA = { id: "key-a", key: Redacted.make(Vault.generateKey()) }
      const keyB = { id: "key-b", key: Redacted.make(Vault.generateKey()) }
      const vaultA = Vault.make({ keys: [keyA] })
      const vaultBA = Vault.make({ keys: [keyA, keyB], writeKeyId: "key-b" })
      const vaultB = Vault.make({ keys: [keyB] })

      it("re-seals every connection with the new write key, reports progress, and reads with that key alone", async () => {
        await withStore(options, async (store) => {
          const now = Date.now()
          const connections = ["r1", "r2", "r3", "r4", "r5"].map((id) => sampleConnection(id, now))
          for (const c of connections) {
            await run(store.insert(ConnectionModule.toRecord(vaultA, c, now + 60_000)))
          }
          // One written before any key was configured.
          const early = sampleConnection("r0", now)
          await run(store.insert(ConnectionModule.toRecord(Vault.make(), early, null)))
          connections.unshift(early)

          const progress: Array<Vault.RotateProgress> = []
          const report = await rotateOn(store, vaultBA, { pageSize: 2, onProgress: (p) => progress.push(p) })
          expect(report).toEqual({ done: 6, total: 6, resealed: 6, failed: [] })
          expect(progress.map((p) => p.done)).toEqual([1, 2, 3, 4, 5, 6])
          expect(progress.at(-1)).toEqual({ done: 6, total: 6, resealed: 6 })

          for (const c of connections) {
            const stored = (await run(store.get(c.id)))!
            expect(stored.version).toBe(2)
            for (const field of [stored.accessToken, stored.refreshToken!, stored.extras]) {
              expect(vaultB.keyIdOf(field)).toBe("key-b")
              expect(field).not.toContain(Redacted.value(c.tokens.accessToken))
            }
            const opened = await run(ConnectionModule.fromRecord(vaultB, stored))
            expect(Redacted.value(opened.tokens.accessToken)).toBe(Redacted.value(c.tokens.accessToken))
            expect(Redacted.value(opened.tokens.refreshToken!)).toBe(Redacted.value(c.tokens.refreshToken!))
            expect(opened.tokens.extras).toEqual(c.tokens.extras)
          }

          // A Latchkey instance holding only the new key serves every token.
          const lk = createLatchkey({
            providers: [unreachableProvider("Rotation test provider")],
            store,
            vault: { keys: [keyB] }
          })
          try {
            for (const c of connections) {
              expect(await lk.accessToken(c.id)).toBe(Redacted.value(c.tokens.accessToken))
            }
          } finally {
            await lk.close()
          }
          // Nothing left to do the second time (here through the Promise API's `run`).
          const again = createLatchkey({
            providers: [unreachableProvider("Rotation test provider")],
            store,
            vault: { keys: [keyA, keyB], writeKeyId: "key-b" }
          })
          try {
            expect(await again.run(Vault.rotate())).toEqual({ done: 6, total: 6, resealed: 0, failed: [] })
          } finally {
            await again.close()
          }
        })
      })

      it("waits for a refresh in progress (the lease) before re-sealing, and never loses a write", async () => {
        await withStore(options, async (store) => {
          const now = Date.now()
          const c = sampleConnection("busy", now)
          await run(store.insert(ConnectionModule.toRecord(vaultA, c, null)))
          // Someone holds the lease; the rotation gives up on this connection after a few attempts.
          const held = await run(store.acquireLease("busy", "refresher", 60_000))
          const report = await rotateOn(store, vaultBA, { maxAttempts: 2 })
          expect(report.resealed).toBe(0)
          expect(report.failed).toHaveLength(1)
          expect(report.failed[0]).toMatchObject({ connectionId: "busy", error: { _tag: "StoreError" } })
          expect(vaultA.keyIdOf((await run(store.get("busy")))!.accessToken)).toBe("key-a")
          // The refresher writes while holding it; then the rotation re-seals its tokens.
          const refreshed = { ...c, version: 2, tokens: { ...c.tokens, accessToken: Redacted.make("fresh") } }
          await run(store.update(ConnectionModule.toRecord(vaultA, refreshed, null), 1))
          await run(store.releaseLease(held!))
          expect(await rotateOn(store, vaultBA)).toMatchObject({ resealed: 1, failed: [] })
          const stored = (await run(store.get("busy")))!
          expect(stored.version).toBe(3)
          const opened = await run(ConnectionModule.fromRecord(vaultB, stored))
          expect(Redacted.value(opened.tokens.accessToken)).toBe("fresh")
        })
      })

      it("a wrong key, a tampered or a truncated ciphertext: a VaultError naming the connection", async () => {
        await withStore(options, async (store) => {
          const now = Date.now()
          const good = sampleConnection("good", now)
          const tampered = sampleConnection("tampered", now)
          const truncated = sampleConnection("truncated", now)
          for (const c of [good, tampered, truncated]) {
            await run(store.insert(ConnectionModule.toRecord(vaultA, c, null)))
          }
          const flipChar = (s: string) => {
            const i = s.length - 5
            return `${s.slice(0, i)}${s[i] === "A" ? "B" : "A"}${s.slice(i + 1)}`
          }
          const t = (await run(store.get("tampered")))!
          await run(store.update({ ...t, accessToken: flipChar(t.accessToken), version: 2 }, 1))
          const u = (await run(store.get("truncated")))!
          await run(store.update({ ...u, accessToken: u.accessToken.slice(0, 30), version: 2 }, 1))

          const readers: Array<[string, Vault.VaultOptions]> = [
            ["the right key", { keys: [keyA] }],
            ["a wrong key under the same id", { keys: [{ id: "key-a", key: Vault.generateKey() }] }],
            ["only an unrelated key", { keys: [keyB] }],
            ["no key", { keys: [] }]
          ]
          for (const [label, vault] of readers) {
            const lk = createLatchkey({
              providers: [unreachableProvider("Rotation test provider")],
              store,
              vault
            })
            try {
              const outcomes = await Promise.all(
                [good, tampered, truncated].map((c) =>
                  lk.accessToken(c.id).then(
                    (token) => ({ ok: true as const, token }),
                    (error: unknown) => ({ ok: false as const, error })
                  )
                )
              )
              for (const [i, c] of [good, tampered, truncated].entries()) {
                const outcome = outcomes[i]!
                if (label === "the right key" && c === good) {
                  expect(outcome).toEqual({ ok: true, token: Redacted.value(c.tokens.accessToken) })
                  continue
                }
                expect(outcome.ok, `${label}: ${c.id}`).toBe(false)
                if (outcome.ok) continue
                expect(outcome.error).toMatchObject({ _tag: "VaultError", connectionId: c.id })
                const text = `${String(outcome.error)} ${(outcome.error as Error).message}`
                expect(text).toContain(c.id)
                expect(text).not.toContain(Redacted.value(c.tokens.accessToken))
                expect(text).not.toContain(Redacted.value(keyA.key))
              }
            } finally {
              await lk.close()
            }
          }

          // The rotation re-seals what it can open and reports the others, untouched.
          const report = await rotateOn(store, vaultBA)
          expect(report).toMatchObject({ done: 3, total: 3, resealed: 1 })
          expect(report.failed.map((f) => [f.connectionId, f.error._tag, f.error.reason]).sort()).toEqual([
            ["tampered", "VaultError", "tampered"],
            ["truncated", "VaultError", "malformed"]
          ])
          expect((await run(store.get("tampered")))?.version).toBe(2)
          expect(vaultA.keyIdOf((await run(store.get("good")))!.accessToken)).toBe("key-b")
        })
      })
    })

    storeFaults(options)
    storeFleet(options, sampleRecord)

    const cross = options.crossProcess
    if (cross === undefined) {
      describe("across OS processes", () => {
        it.skip(`${options.name} lives in one process: no cross-process lease, nothing survives a restart (not applicable)`, () => {})
      })
      return
    }

    describe("with Latchkey, across OS processes", () => {
      const processes = cross.processes ?? 4
      const callers = cross.callers ?? 50
      const vaultKey = Vault.generateKey()
      let server: ConformanceTokenServer
      beforeAll(async () => {
        server = await cross.tokenServer()
      })
      afterAll(async () => {
        await server?.close()
      })

      const provider = () =>
        Provider.make({
          id: PROVIDER_ID,
          name: "Store conformance",
          ...server.provider,
          identify: server.identify
        })
      const latchkey = (
        store: ConnectionStoreShape,
        vault: Vault.VaultOptions = { keys: [{ id: "k1", key: vaultKey }] }
      ) => createLatchkey({ providers: [provider()], store, vault })
      const link = async (lk: LatchkeyClient, login: string) => {
        const { url } = await lk.startAuthorization({ providerId: PROVIDER_ID, ownerId: "user-1" })
        const callback = await server.approve(url, login)
        const { connection } = await lk.completeAuthorization({ callback })
        return connection
      }
      const expire = async (store: ConnectionStoreShape, id: string) => {
        const now = Date.now()
        const r = (await run(store.get(id)))!
        await run(
          store.update(
            {
              ...r,
              obtainedAt: now - 3_600_000,
              expiresAt: now - 1_000,
              refreshDueAt: now - 1_000,
              version: r.version + 1
            },
            r.version
          )
        )
      }
      const reopen = (opened: OpenedStore) => openWithOpener(cross.opener, opened.settings)
      const closeHandle = async (store: ConnectionStoreShape) => {
        if (store.close) await run(store.close())
      }
      const settingsFor = (
        opened: OpenedStore,
        connectionId: string,
        extra: Partial<WorkerSettings> = {}
      ): WorkerSettings => ({
        opener: cross.opener,
        storeSettings: opened.settings,
        providerId: PROVIDER_ID,
        provider: server.provider,
        connectionId,
        callers,
        leaseTtlMs: 10_000,
        vaultKey,
        ...extra
      })
      /** Link an account, then make its access token expired in the store. */
      const linkExpired = async (opened: OpenedStore, login: string) => {
        const lk = latchkey(opened.store)
        try {
          const c = await link(lk, login)
          await expire(opened.store, c.id)
          return c.id
        } finally {
          await lk.close()
        }
      }

      it("keeps connections across a reopen, with tokens sealed at rest", async () => {
        await withStore(options, async (store, opened) => {
          const first = latchkey(store)
          const c = await link(first, "alice")
          const token = await first.accessToken(c.id)
          await first.close()
          if (opened.raw) {
            const raw = await opened.raw()
            expect(raw).toContain(c.id)
            expect(raw).not.toContain(token)
          }
          const again = await reopen(opened)
          try {
            const second = latchkey(again)
            expect((await second.connections("user-1")).map((x) => x.id)).toEqual([c.id])
            expect(await second.accessToken(c.id)).toBe(token)
            await second.close()
            // Without the key the tokens cannot be read, and the error names the connection.
            const keyless = latchkey(again, { keys: [] })
            await expect(keyless.accessToken(c.id)).rejects.toMatchObject({
              _tag: "VaultError",
              connectionId: c.id
            })
            await keyless.close()
          } finally {
            await closeHandle(again)
          }
        })
      })

      it(`${processes} processes x ${callers} callers on one expired connection: exactly one refresh, and the grant survives`, async () => {
        await withStore(options, async (store, opened) => {
          const id = await linkExpired(opened, "bob")
          const workers = Array.from({ length: processes }, () => startStoreWorker(settingsFor(opened, id)))
          try {
            await Promise.all(workers.map((w) => w.ready))
            const before = await server.refreshCount()
            const errorsBefore = (await server.refreshErrors?.()) ?? 0
            for (const w of workers) w.child.stdin.write("go\n")
            const results = await Promise.all(workers.map((w) => w.result))
            expect((await server.refreshCount()) - before).toBe(1)
            expect(results.flatMap((r) => r.failures)).toEqual([])
            expect(new Set(results.flatMap((r) => r.tokens)).size).toBe(1)
            // The grant survived: the stored (rotated) refresh token still refreshes.
            const lk = latchkey(store)
            try {
              const refreshed = await lk.refresh(id)
              expect(refreshed.status).toBe("active")
              expect((await server.refreshCount()) - before).toBe(2)
              if (server.refreshErrors) expect((await server.refreshErrors()) - errorsBefore).toBe(0)
              expect(await lk.accessToken(id)).not.toBe(results[0]!.tokens[0])
            } finally {
              await lk.close()
            }
          } finally {
            for (const w of workers) w.child.kill("SIGKILL")
          }
        })
      })
    })
  })
}
