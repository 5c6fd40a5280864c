/**
 * The ApiClient's request budget shared through the store (`config.apiRateLimits`, the store's
 * `takeRateBudget`): four instances on one store take distinct slots of one budget, and a response
 * saying the budget is spent (`X-RateLimit-Remaining: 0`, `X-RateLimit-Reset`) holds it for all of
 * them. The store's clock is frozen, so the slots it hands out are exact; a real HTTP server answers.
 */
import { createServer, type Server } from "node:http"
import type { AddressInfo } from "node:net"
import { Effect } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { rateLimitResetMs } from "../src/ApiClient.ts"
import { Connection, ConnectionStore, createLatchkey, Vault } from "../src/index.ts"
import { oauthConnection } from "../src/testing/oauthConnection.ts"
import { unreachableProvider } from "../src/testing/storeKit.ts"

let server: Server
let base: string
const spent = false
const seen: Array<string> = []
beforeAll(async () => {
  server = createServer((req, res) => {
    seen.push(req.url ?? "")
    const headers: Record<string, string> = { "content-type": "application/json" }
    if (spent || req.url === "/spent")
      Object.assign(headers, { "x-ratelimit-remaining": "0", "x-ratelimit-reset": "2" })
    res.writeHead(200, headers).end("{}")
  })
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r))
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
})
afterAll(() => new Promise<void>((r) => server.close(() => r())))

const provider = () => unreachableProvider({ id: "api", name: "Budget test API", apiBaseUrl: base })

const vaultOptions = { keys: [{ id: "k", key: Vault.generateKey() }] }

const insertConnection = async (store: ConnectionStore.ConnectionStoreShape, id: string) => {
  const now = Date.now()
  const c = oauthConnection({
    id,
    ownerId: "o",
    providerId: "api",
    accountId: `acct-${id}`,
    label: id,
    accessToken: `token-${id}`,
    obtainedAt: now,
    expiresAt: now + 3_600_000,
    now
  })
  await Effect.runPromise(store.insert(Connection.toRecord(Vault.make(vaultOptions), c, null)))
}

describe("ApiClient: request budgets shared through the store", () => {
  it("four instances take distinct slots of one budget; a spent answer holds it for all", async () => {
    const inner = ConnectionStore.makeMemory({ clock: () => 1_000_000 })
    const waits: Array<{ key: string; wait: number }> = []
    const store: ConnectionStore.ConnectionStoreShape = {
      ...inner,
      takeRateBudget: (key, limit, windowMs, cost) =>
        inner.takeRateBudget!(key, limit, windowMs, cost).pipe(
          Effect.tap((wait) => Effect.sync(() => waits.push({ key, wait })))
        )
    }
    await insertConnection(store, "c1")
    // 950 ms of jitter allowed: no request is counted late after its slot, so each takes one.
    const config = { apiRateLimits: { api: { limit: 200, windowMs: 1_000, jitterMs: 950 } } }
    const instances = Array.from({ length: 4 }, () =>
      createLatchkey({ providers: [provider()], store, vault: vaultOptions, config })
    )
    try {
      seen.length = 0
      const responses = await Promise.all(
        instances.flatMap((lk) => Array.from({ length: 5 }, (_, i) => lk.fetch("c1", `/r${i}`)))
      )
      expect(responses.every((r) => r.status === 200)).toBe(true)
      expect(seen).toHaveLength(20)
      // 200 per second with 950 ms of jitter allowed: one slot every 1,950 / 200 = 9.75 ms, each
      // handed out once, across the four instances.
      expect(waits.map((w) => w.key)).toEqual(Array(20).fill("api:api"))
      expect(waits.map((w) => w.wait).sort((a, b) => a - b)).toEqual(
        Array.from({ length: 20 }, (_, i) => i * 9.75)
      )
      // The provider says the budget is spent for 2 s: the next slot, for any instance, is 2 s later.
      waits.length = 0
      await instances[0]!.fetch("c1", "/spent")
      const next = await Effect.runPromise(store.takeRateBudget!("api:api", 200, 1_000))
      expect(next).toBeGreaterThanOrEqual(2_000)
    } finally {
      await Promise.all(instances.map((lk) => lk.close()))
    }
  })

  it("a request that would leave more than jitterMs after its slot takes the next one", async () => {
    const reservations = async (jitterMs: number) => {
      const inner = ConnectionStore.makeMemory()
      let asked = 0
      const store: ConnectionStore.ConnectionStoreShape = {
        ...inner,
        takeRateBudget: () =>
          Effect.sync(() => {
            asked++
            if (asked > 1) return 0
            // Right after the first slot is given this process is busy for 300 ms (a stalled event
            // loop): the request, due 10 ms later, wakes about 290 ms after its slot. (The allowance
            // below is wide enough that a loaded machine's stall does not make the next slot late too.)
            setTimeout(() => {
              const end = performance.now() + 300
              while (performance.now() < end) {}
            }, 1)
            return 10
          })
      }
      await insertConnection(store, "c1")
      const config = { apiRateLimits: { api: { limit: 100, windowMs: 1_000, jitterMs } } }
      const lk = createLatchkey({ providers: [provider()], store, vault: vaultOptions, config })
      try {
        expect((await lk.fetch("c1", "/late")).status).toBe(200)
        return asked
      } finally {
        await lk.close()
      }
    }
    expect(await reservations(100)).toBe(2)
    expect(await reservations(1_000)).toBe(1)
  })

  it("reads the X-RateLimit headers: remaining 0 with a reset in seconds, an epoch, or HighLevel's interval", () => {
    const h = (entries: Record<string, string>) => new Headers(entries)
    expect(rateLimitResetMs(h({ "x-ratelimit-remaining": "0", "x-ratelimit-reset": "3" }), 0)).toBe(3_000)
    expect(
      rateLimitResetMs(
        h({ "x-ratelimit-remaining": "0", "x-ratelimit-reset": "1700000010" }),
        1_700_000_000_000
      )
    ).toBe(10_000)
    expect(
      rateLimitResetMs(h({ "x-ratelimit-remaining": "0", "x-ratelimit-interval-milliseconds": "10000" }), 0)
    ).toBe(10_000)
    expect(rateLimitResetMs(h({ "x-ratelimit-remaining": "5", "x-ratelimit-reset": "3" }), 0)).toBeUndefined()
    expect(rateLimitResetMs(h({}), 0)).toBeUndefined()
  })
})
