/**
 * Issue 12 items owned by the Redis store: its errors keep none of the driver's command arguments
 * (item 1), and it refuses a server whose eviction policy can evict its keys unless told otherwise
 * (item 11). The eviction policies are tried on a redis-server of this test's own (started on a free
 * port and stopped after), never on the shared one, which is only read.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { createServer } from "node:net"
import { inspect } from "node:util"
import { ConnectionStore, StoreError } from "@latchkey/core"
import { Hostile, sampleRecord } from "@latchkey/core/testing"
import { Effect, Exit, Layer } from "effect"
import { Redis } from "ioredis"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { RedisStore } from "../src/index.ts"

const URL_ = process.env.LATCHKEY_TEST_REDIS_URL ?? "redis://127.0.0.1:6379"
const run = <A, E>(effect: Effect.Effect<A, E>) => Effect.runPromise(effect)
const flip = <A, E>(effect: Effect.Effect<A, E>) => Effect.runPromise(Effect.flip(effect))

const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const s = createServer()
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address() as { port: number }
      s.close(() => resolve(port))
    })
    s.on("error", reject)
  })

let own: ChildProcess | undefined
let ownUrl = ""
let ownAdmin: Redis
beforeAll(async () => {
  const port = await freePort()
  own = spawn(
    "redis-server",
    [
      "--port",
      String(port),
      "--bind",
      "127.0.0.1",
      "--save",
      "",
      "--appendonly",
      "no",
      "--maxmemory-policy",
      "allkeys-lru"
    ],
    { stdio: "ignore" }
  )
  ownUrl = `redis://127.0.0.1:${port}`
  ownAdmin = new Redis(ownUrl, { maxRetriesPerRequest: 5, retryStrategy: (n) => Math.min(20 * n, 200) })
  ownAdmin.on("error", () => {})
  await ownAdmin.ping()
}, 20_000)
afterAll(async () => {
  await ownAdmin?.quit().catch(() => {})
  own?.kill("SIGTERM")
  console.info(Hostile.report("store-redis/test/security.test.ts"))
})

describe("item 1: Redis store errors keep no command arguments", () => {
  it("a failing script carrying tokens in its arguments fails with an error that does not hold them", async () => {
    const admin = new Redis(URL_, { maxRetriesPerRequest: 2 })
    const keyPrefix = RedisStore.randomPrefix("lk-sec")
    const store = RedisStore.make({ url: URL_, keyPrefix })
    try {
      const table = [
        "plain.access-SECRET-1a2b3c",
        "plain.refresh-SECRET-4d5e6f",
        'plain.{"apiKey":"SECRET-789"}'
      ]
      for (const [i, secret] of table.entries()) {
        const owner = `owner-${i}`
        await admin.set(`${keyPrefix}o:${owner}`, "not a sorted set")
        const error = await flip(store.insert(sampleRecord(`c${i}`, { ownerId: owner, accessToken: secret })))
        expect(error).toBeInstanceOf(StoreError)
        expect(error.message).toContain("WRONGTYPE")
        const texts = [
          String(error),
          JSON.stringify(error),
          inspect(error, { depth: 20, showHidden: true }),
          error.stack
        ]
        for (const text of texts) expect(text).not.toContain(secret.slice(6))
        Hostile.record("driver error carrying tokens", "neutralised")
      }
    } finally {
      await run(store.close())
      let cursor = "0"
      do {
        const [next, keys] = await admin.scan(cursor, "MATCH", `${keyPrefix}*`, "COUNT", 500)
        if (keys.length > 0) await admin.del(...keys)
        cursor = next
      } while (cursor !== "0")
      await admin.quit()
    }
  })
})

describe("item 11: the store refuses a server that can evict its keys", () => {
  it("reads the policy the server reports (the shared server, read only)", async () => {
    const admin = new Redis(URL_, { maxRetriesPerRequest: 2 })
    try {
      const [, configured] = (await admin.config("GET", "maxmemory-policy")) as [string, string]
      expect(await RedisStore.readEvictionPolicy(admin)).toBe(configured)
    } finally {
      await admin.quit()
    }
  })

  it("refuses every evicting policy, at connect and on every operation, unless allowEviction", async () => {
    const policies = [
      "allkeys-lru",
      "allkeys-lfu",
      "allkeys-random",
      "volatile-lru",
      "volatile-lfu",
      "volatile-random",
      "volatile-ttl"
    ]
    for (const policy of policies) {
      await ownAdmin.config("SET", "maxmemory-policy", policy)
      const store = RedisStore.make({ url: ownUrl, keyPrefix: RedisStore.randomPrefix("lk-evict") })
      const refused = await flip(store.ready)
      expect(refused).toBeInstanceOf(StoreError)
      expect(refused.message).toContain(policy)
      expect(refused.message).toContain("noeviction")
      expect((await flip(store.insert(sampleRecord("x")))).message).toContain(policy)
      expect(await ownAdmin.dbsize()).toBe(0) // nothing was written
      // The layer is not built on such a server.
      const exit = await Effect.runPromiseExit(
        Effect.void.pipe(Effect.provide(Layer.fresh(RedisStore.layer({ url: ownUrl }))))
      )
      expect(Exit.isFailure(exit)).toBe(true)
      // An explicit override accepts it.
      const allowed = RedisStore.make({
        url: ownUrl,
        keyPrefix: RedisStore.randomPrefix("lk-evict"),
        allowEviction: true
      })
      await run(allowed.ready)
      await run(allowed.insert(sampleRecord("y")))
      expect(await run(allowed.get("y"))).toBeDefined()
      await ownAdmin.flushdb() // our own server
      await run(allowed.close())
      // Fixed on the server: the same store works without a restart.
      await ownAdmin.config("SET", "maxmemory-policy", "noeviction")
      await run(store.ready)
      await run(store.insert(sampleRecord("z")))
      await run(store.close())
      await ownAdmin.flushdb()
      Hostile.record("evicting Redis policy", "refused")
    }
    void ConnectionStore
  }, 30_000)
})
