/**
 * What a store offers a fleet of instances, checked on every store that offers it: claimed batches
 * (`claimDue`). Registered by `storeConformance`.
 */
import { Effect } from "effect"
import { describe, expect, it } from "vitest"
import type { ConnectionRecord } from "../Connection.ts"
import type { ConnectionStoreShape } from "../ConnectionStore.ts"
import type { OpenedStore, StoreConformanceOptions } from "./storeKit.ts"

const run = <A, E>(effect: Effect.Effect<A, E>) => Effect.runPromise(effect)
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

const withStore = async (
  options: StoreConformanceOptions,
  f: (store: ConnectionStoreShape, opened: OpenedStore) => Promise<void>
) => {
  const opened = await options.open()
  try {
    await f(opened.store, opened)
  } finally {
    await opened.close()
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
        for (const [i, id] of due.entries()) {
          await run(store.insert(sampleRecord(id, { refreshDueAt: 1_000 + i })))
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
        // A removed connection leaves no claim behind, and a re-inserted one is claimable at once.
        expect(await run(store.remove("c2"))).toBe(true)
        await run(store.insert(sampleRecord("c2", { refreshDueAt: 20 })))
        expect((await run(claim(100, 10, "other", 60_000))).map((r) => r.id)).toEqual(["c2"])
      })
    })
  })
}
