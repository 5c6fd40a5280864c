/**
 * The Refresher in a fleet: instances on one store split the due work through claimed batches
 * (`claimDue`) instead of chasing the same batch, and a failing store is reported, never hidden.
 * The token server is real (oidc-provider).
 */
import type { OidcServer } from "@latchkey/testkit-oidc"
import { Effect } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { ConnectionStore, createLatchkey, StoreError } from "../src/index.ts"
import { exampleProvider, expire, link, startServer } from "./support.ts"

let server: OidcServer
beforeAll(async () => {
  server = await startServer()
})
afterAll(() => server.close())

describe("Refresher: claimed batches", () => {
  it("two instances sweeping one store at once refresh every due connection once between them", async () => {
    const store = ConnectionStore.makeMemory()
    const setup = createLatchkey({ providers: [exampleProvider(server)], store })
    const ids: Array<string> = []
    try {
      for (let i = 0; i < 6; i++) ids.push((await link(setup, `fleet-${i}`, `owner-${i}`)).id)
    } finally {
      await setup.close()
    }
    for (const id of ids) await expire(store, id)
    const instances = [0, 1].map(() =>
      createLatchkey({
        providers: [exampleProvider(server)],
        store,
        refresher: { concurrency: 2, ratePerSecond: Number.POSITIVE_INFINITY }
      })
    )
    try {
      const before = server.grants.refresh_token
      const reports = await Promise.all(instances.map((lk) => lk.refresher.sweep()))
      // Each due connection was handed to one instance: no lease chase, no second look.
      expect(reports.reduce((n, r) => n + r.due, 0)).toBe(ids.length)
      expect(reports.reduce((n, r) => n + r.refreshed, 0)).toBe(ids.length)
      expect(reports.every((r) => r.failed === 0 && r.storeErrors === undefined)).toBe(true)
      expect(server.grants.refresh_token - before).toBe(ids.length)
      expect(await Effect.runPromise(store.listDue(Date.now(), 100))).toEqual([])
    } finally {
      await Promise.all(instances.map((lk) => lk.close()))
    }
  })
})

describe("Refresher: store failures are reported", () => {
  const failing = new StoreError({ reason: "unavailable", message: "test store: down" })

  for (const variant of ["claimDue", "listDue"] as const) {
    it(`a failing ${variant} shows in the sweep report and reaches onStoreError`, async () => {
      const base = ConnectionStore.makeMemory()
      const { claimDue: _claimDue, ...withoutClaims } = base
      const store: ConnectionStore.ConnectionStoreShape =
        variant === "claimDue"
          ? { ...base, claimDue: () => Effect.fail(failing) }
          : { ...withoutClaims, listDue: () => Effect.fail(failing) }
      const seen: Array<StoreError> = []
      const lk = createLatchkey({
        providers: [exampleProvider(server)],
        store,
        refresher: { onStoreError: (e) => seen.push(e) }
      })
      try {
        const report = await lk.refresher.sweep()
        expect(report).toMatchObject({ due: 0, refreshed: 0, failed: 0, storeErrors: 1 })
        expect(report.storeError).toBe(failing)
        expect(seen).toEqual([failing])
      } finally {
        await lk.close()
      }
    })
  }
})
