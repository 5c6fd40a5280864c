/**
 * What a store offers a fleet of instances, checked on every store that offers it: claimed batches
 * (`claimDue`), and the changes it announces (`watch`) as the Promise API's token cache uses them:
 * the cache never serves a token after its expiry or after a local write, and sees a write made
 * through another store object (another process's view of the same data). Registered by `storeConformance`.
 */
import { randomUUID } from "node:crypto"
import { Effect, Redacted } from "effect"
import { describe, expect, it } from "vitest"
import type { Connection, ConnectionRecord } from "../Connection.ts"
import * as ConnectionModule from "../Connection.ts"
import type { ConnectionStoreShape, StoreChange } from "../ConnectionStore.ts"
import { createLatchkey, markRevoked } from "../Latchkey.ts"
import * as Vault from "../Vault.ts"
import { oauthConnection } from "./oauthConnection.ts"
import { openWithOpener } from "./storeConformanceWorker.ts"
import { type StoreConformanceOptions, unreachableProvider, withStore } from "./storeKit.ts"

const run = <A, E>(effect: Effect.Effect<A, E>) => Effect.runPromise(effect)
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

const HOUR = 3_600_000

const connectionAt = (id: string, now: number, accessToken: string, version = 1): Connection =>
  oauthConnection({
    id,
    ownerId: "cache-owner",
    providerId: "p",
    accountId: `acct-${id}`,
    label: id,
    accessToken,
    refreshToken: `refresh-${randomUUID()}`,
    obtainedAt: now,
    expiresAt: now + HOUR,
    scopes: ["read"],
    version,
    now
  })

/** Call `f` until it says yes (a change announced by another process arrives when it arrives). */
const eventually = async (f: () => Promise<boolean>, ms = 5_000) => {
  const until = Date.now() + ms
  for (;;) {
    if (await f()) return true
    if (Date.now() > until) return false
    await sleep(20)
  }
}

type ClaimDue = NonNullable<ConnectionStoreShape["claimDue"]>

const claimerOf = (store: ConnectionStoreShape): ClaimDue => {
  if (store.claimDue === undefined) throw new Error("claimDue missing")
  return store.claimDue
}

export const storeFleet = (
  options: StoreConformanceOptions,
  sampleRecord: (id: string, patch?: Partial<ConnectionRecord>) => ConnectionRecord
): void => {
  describe("claimed batches (claimDue)", () => {
    it("hands each due connection to one claimer only, soonest first, never a connection that is not due or not active", async () => {
      await withStore(options, async (store) => {
        if (store.claimDue === undefined) return
        const claim = claimerOf(store)
        const due = Array.from({ length: 60 }, (_, i) => `due-${String(i).padStart(2, "0")}`)
        // Inserted out of order (a fixed permutation), so that "soonest first" is the store's doing.
        for (let n = 0; n < due.length; n++) {
          const i = (n * 37) % due.length
          await run(store.insert(sampleRecord(due[i]!, { refreshDueAt: 1_000 + i })))
        }
        await run(store.insert(sampleRecord("later", { refreshDueAt: 9_999_999 })))
        await run(store.insert(sampleRecord("never", { refreshDueAt: null })))
        await run(store.insert(sampleRecord("reauth", { status: "needs_reauth", refreshDueAt: 10 })))

        // The first claim takes the soonest.
        const first = await run(claim(5_000, 3, "A", 60_000))
        expect(first.map((r) => r.id)).toEqual(["due-00", "due-01", "due-02"])
        expect(first[0]).toEqual(sampleRecord("due-00", { refreshDueAt: 1_000 }))

        // Eight claimers at once, again and again, until nothing is left: every connection once.
        const got: Array<string> = [...first.map((r) => r.id)]
        for (let round = 0; round < 20; round++) {
          const batches = await Promise.all(
            Array.from({ length: 8 }, (_, i) => run(claim(5_000, 4, `holder-${i}`, 60_000)))
          )
          const ids = batches.flatMap((b) => b.map((r) => r.id))
          // No claimer comes back short while connections are free (even one whose view is a moment old).
          expect(ids.length).toBe(Math.min(32, due.length - got.length))
          got.push(...ids)
          if (ids.length === 0) break
        }
        expect(got.length).toBe(new Set(got).size)
        expect([...got].sort()).toEqual(due)
        // Every claim is still held: a new claimer gets nothing.
        expect(await run(claim(5_000, 100, "late", 60_000))).toEqual([])
        // A limit of zero claims nothing.
        expect(await run(claim(9_999_999_999, 0, "zero", 60_000))).toEqual([])
      })
    })

    it("skips connections someone holds the refresh lease on, until the lease is released or lapses", async () => {
      await withStore(options, async (store) => {
        if (store.claimDue === undefined) return
        const claim = claimerOf(store)
        for (const id of ["l1", "l2", "l3"]) await run(store.insert(sampleRecord(id, { refreshDueAt: 10 })))
        const lease = await run(store.acquireLease("l1", "refresher-elsewhere", 60_000))
        const short = await run(store.acquireLease("l2", "refresher-elsewhere", 150))
        expect(lease).toBeDefined()
        expect(short).toBeDefined()
        expect((await run(claim(100, 10, "A", 60_000))).map((r) => r.id)).toEqual(["l3"])
        await run(store.releaseLease(lease!))
        await sleep(400)
        // Released, and lapsed by the store's clock: both claimable now.
        expect((await run(claim(100, 10, "B", 60_000))).map((r) => r.id).sort()).toEqual(["l1", "l2"])
      })
    })

    it("a Refresher's sweep sends nothing for a connection another instance holds the lease on, and never waits it out", async () => {
      await withStore(options, async (store) => {
        const vaultOptions = { keys: [{ id: "sweep", key: Vault.generateKey() }] }
        const now = Date.now()
        // Expired an hour ago: due.
        const c = connectionAt("held", now - 2 * HOUR, "token-held")
        await run(store.insert(ConnectionModule.toRecord(Vault.make(vaultOptions), c, now - HOUR)))
        const lease = await run(store.acquireLease("held", "another-instance", 60_000))
        expect(lease).toBeDefined()
        const sweepWith = async (through: ConnectionStoreShape) => {
          // Leases of 1 s: a sweep that waited for the holder would give up after 2 s, counted as failed.
          const lk = createLatchkey({
            providers: [unreachableProvider("Sweep test provider")],
            store: through,
            vault: vaultOptions,
            config: { maxAttempts: 1, requestTimeoutMs: 2_000, leaseTtlMs: 1_000 }
          })
          try {
            return await lk.refresher.sweep()
          } finally {
            await lk.close()
          }
        }
        // Listed (as on a store without claims): the sweep leaves it to the holder and moves on.
        const { claimDue: _, ...listing } = store
        expect(await sweepWith(listing)).toEqual({ due: 1, refreshed: 0, failed: 0, skipped: 1 })
        // With the store's claims: not handed out at all.
        if (store.claimDue !== undefined)
          expect(await sweepWith(store)).toEqual({ due: 0, refreshed: 0, failed: 0 })
        // Nothing was written: the row is the holder's to refresh.
        const after = await run(store.get("held"))
        expect(after?.version).toBe(1)
        expect(after?.journal ?? null).toBeNull()
        expect(after?.status).toBe("active")
      })
    })

    it("lets a claim lapse by the store's clock (a claimer that died), then hands the connection out again", async () => {
      await withStore(options, async (store) => {
        if (store.claimDue === undefined) return
        const claim = claimerOf(store)
        await run(store.insert(sampleRecord("c1", { refreshDueAt: 10 })))
        await run(store.insert(sampleRecord("c2", { refreshDueAt: 20 })))
        expect((await run(claim(100, 1, "dies", 150))).map((r) => r.id)).toEqual(["c1"])
        expect((await run(claim(100, 1, "lives", 60_000))).map((r) => r.id)).toEqual(["c2"])
        // Held: not handed out, not even to its own claimer.
        expect(await run(claim(100, 10, "other", 60_000))).toEqual([])
        expect(await run(claim(100, 10, "dies", 60_000))).toEqual([])
        await sleep(400)
        expect((await run(claim(100, 10, "other", 60_000))).map((r) => r.id)).toEqual(["c1"])
        // A write of the connection (its refresh) ends the claim: due again, it is claimable at once.
        expect(await run(claim(100, 10, "next", 60_000))).toEqual([])
        await run(store.update(sampleRecord("c1", { refreshDueAt: 15, version: 2 }), 1))
        expect((await run(claim(100, 10, "next", 60_000))).map((r) => r.id)).toEqual(["c1"])
        // A removed connection leaves no claim behind, and a re-inserted one is claimable at once.
        expect(await run(store.remove("c2"))).toBe(true)
        await run(store.insert(sampleRecord("c2", { refreshDueAt: 20 })))
        expect((await run(claim(100, 10, "other", 60_000))).map((r) => r.id)).toEqual(["c2"])
      })
    })
  })

  describe("rate budgets shared by the fleet (takeRateBudget)", () => {
    it("hands out slots spaced windowMs / limit apart to concurrent takers, never two alike, per key, with a cost", async () => {
      await withStore(options, async (store) => {
        const take = store.takeRateBudget
        if (take === undefined) return
        const started = performance.now()
        const waits = await Promise.all(
          Array.from({ length: 40 }, () => run(take("refresh:provider-a", 10, 1_000)))
        )
        const elapsed = performance.now() - started
        waits.sort((a, b) => a - b)
        // 10 per second: at most 10 slots in the first second (plus what the store's clock moved meanwhile).
        const firstSecond = waits.filter((w) => w < 1_000).length
        expect(firstSecond).toBeGreaterThanOrEqual(1)
        expect(firstSecond).toBeLessThanOrEqual(11 + Math.ceil(elapsed / 100))
        // Every slot was handed out once: the last of 40 is about 3.9 s out.
        expect(waits.at(-1)!).toBeGreaterThanOrEqual(3_900 - elapsed - 5)
        expect(waits.at(-1)!).toBeLessThanOrEqual(3_900 + 5)
        // Another key has its own budget.
        expect(await run(take("refresh:provider-b", 10, 1_000))).toBeLessThan(50)
        // A cost of 5 holds the next 5 slots: the next taker waits about half a second.
        expect(await run(take("api:c", 10, 1_000, 5))).toBeLessThan(50)
        const next = await run(take("api:c", 10, 1_000))
        expect(next).toBeGreaterThan(400)
        expect(next).toBeLessThanOrEqual(505)
      })
    })
  })

  describe("the token cache of the Promise API, on this store's announcements (watch)", () => {
    const vaultOptions = { keys: [{ id: "cache", key: Vault.generateKey() }] }
    const vault = Vault.make(vaultOptions)
    const put = (store: ConnectionStoreShape, c: Connection) =>
      c.version === 1
        ? run(store.insert(ConnectionModule.toRecord(vault, c, null)))
        : run(store.update(ConnectionModule.toRecord(vault, c, null), c.version - 1))

    it("never serves a token past its expiry minus the skew (injected clock), nor after a local write", async () => {
      await withStore(options, async (store) => {
        const start = Date.now()
        let now = start
        const lk = createLatchkey({
          providers: [unreachableProvider("Token cache test provider")],
          store,
          vault: vaultOptions,
          clock: () => now,
          config: { maxAttempts: 1, requestTimeoutMs: 2_000 },
          tokenCache: { maxStaleMs: HOUR }
        })
        try {
          const c = connectionAt("cached", start, "token-A")
          await put(store, c)
          expect(await lk.accessToken("cached")).toBe("token-A")
          expect(await lk.accessToken("cached")).toBe("token-A")
          // A local write (through this store object): the very next call sees it.
          await put(store, {
            ...c,
            version: 2,
            tokens: { ...c.tokens, accessToken: Redacted.make("token-B") }
          })
          expect(await lk.accessToken("cached")).toBe("token-B")
          expect(await lk.accessToken("cached")).toBe("token-B")
          // Revoked locally: refused at once, not served from the cache.
          expect(await lk.accessToken("cached")).toBe("token-B")
          await lk.run(markRevoked("cached"))
          await expect(lk.accessToken("cached")).rejects.toMatchObject({ _tag: "ReauthorizationRequired" })
          // Removed locally: not found.
          await run(store.remove("cached"))
          await expect(lk.accessToken("cached")).rejects.toMatchObject({ _tag: "ConnectionNotFound" })
          // Another connection: served from the cache until expiry minus the skew (5 min), never at it.
          await put(store, connectionAt("expiring", start, "token-E"))
          expect(await lk.accessToken("expiring")).toBe("token-E")
          // One millisecond before expiry minus the skew (5 min): still served.
          now = start + HOUR - 5 * 60_000 - 1
          expect(await lk.accessToken("expiring")).toBe("token-E")
          // At it: the cached token is never served; the engine must refresh (and the provider is unreachable).
          now = start + HOUR - 5 * 60_000
          const late = await lk.accessToken("expiring").then(
            (token) => ({ token }),
            (error: unknown) => ({ error })
          )
          expect(late).not.toEqual({ token: "token-E" })
          expect(late).toHaveProperty("error")
        } finally {
          await lk.close()
        }
      })
    })

    it("announces writes through this store object synchronously, before the write completes", async () => {
      await withStore(options, async (store) => {
        if (store.watch === undefined) return
        const seen: Array<StoreChange> = []
        const stop = store.watch((change) => seen.push(change))
        try {
          const c = connectionAt("announced", Date.now(), "token-A")
          await put(store, c)
          expect(
            seen.filter((x) => x._tag === "Changed" && x.id === "announced").length
          ).toBeGreaterThanOrEqual(1)
          const before = seen.length
          await put(store, { ...c, version: 2 })
          expect(seen.slice(before)).toContainEqual({ _tag: "Changed", id: "announced" })
          const beforeRemove = seen.length
          await run(store.remove("announced"))
          expect(seen.slice(beforeRemove)).toContainEqual({ _tag: "Changed", id: "announced" })
        } finally {
          stop()
        }
      })
    })

    const cross = options.crossProcess
    if (cross !== undefined) {
      if (cross.quietWrites === true) {
        it("leaves a quiet write (a journal: nothing a token cache holds) out of its channel, and sends every other one", async () => {
          await withStore(options, async (store, opened) => {
            if (store.watch === undefined) throw new Error(`${options.name} has no watch`)
            const other = await openWithOpener(cross.opener, opened.settings)
            const seen: Array<string> = []
            let live = false
            const stop = other.watch!((change) => {
              if (change._tag === "Live") live = true
              else if (change._tag === "Changed") seen.push(change.id)
            })
            try {
              expect(await eventually(async () => live)).toBe(true)
              const c = connectionAt("quiet", Date.now(), "token-A")
              await put(store, c)
              expect(await eventually(async () => seen.includes("quiet"))).toBe(true)
              seen.length = 0
              // The journal's write: the same tokens, status and expiry, marked quiet.
              const row = (await run(store.get("quiet")))!
              await run(
                store.update(
                  {
                    ...row,
                    journal: { holder: "h", fence: 1, startedAt: 1, fingerprint: "f" },
                    version: row.version + 1
                  },
                  row.version,
                  [],
                  { quiet: true }
                )
              )
              // A write of another connection after it: once that one is seen, the quiet one would have been.
              await put(store, connectionAt("barrier", Date.now(), "token-X"))
              expect(await eventually(async () => seen.includes("barrier"))).toBe(true)
              expect(seen).not.toContain("quiet")
              // Not quiet (new tokens): sent.
              await put(store, {
                ...c,
                version: 3,
                tokens: { ...c.tokens, accessToken: Redacted.make("token-B") }
              })
              expect(await eventually(async () => seen.includes("quiet"))).toBe(true)
            } finally {
              stop()
              await run(other.close?.() ?? Effect.void)
            }
          })
        })
      }

      it("sees a write made through another store object (another process's view) through the store's channel", async () => {
        await withStore(options, async (store, opened) => {
          if (store.watch === undefined) throw new Error(`${options.name} has no watch`)
          const other = await openWithOpener(cross.opener, opened.settings)
          const start = Date.now()
          // Trusted for an hour without a channel: only an announcement can make it see the change.
          const lk = createLatchkey({
            providers: [unreachableProvider("Token cache test provider")],
            store,
            vault: vaultOptions,
            tokenCache: { maxStaleMs: HOUR }
          })
          try {
            const c = connectionAt("elsewhere", start, "token-A")
            await put(store, c)
            // Wait until this instance's channel is live (a write before that is flushed by `Live` anyway).
            const live = await new Promise<boolean>((resolve) => {
              const stop = store.watch!((change) => {
                if (change._tag === "Live") {
                  resolve(true)
                  queueMicrotask(() => stop())
                }
              })
              setTimeout(() => resolve(false), 5_000)
            })
            expect(live).toBe(true)
            expect(await lk.accessToken("elsewhere")).toBe("token-A")
            expect(await lk.accessToken("elsewhere")).toBe("token-A")
            await put(other, {
              ...c,
              version: 2,
              tokens: { ...c.tokens, accessToken: Redacted.make("token-B") }
            })
            expect(await eventually(async () => (await lk.accessToken("elsewhere")) === "token-B")).toBe(true)
            // Removed elsewhere: not served either.
            await run(other.remove("elsewhere"))
            expect(
              await eventually(() =>
                lk.accessToken("elsewhere").then(
                  () => false,
                  (e: { _tag?: string }) => e._tag === "ConnectionNotFound"
                )
              )
            ).toBe(true)
          } finally {
            await lk.close()
            await run(other.close?.() ?? Effect.void)
          }
        })
      })
    }
  })
}
