/**
 * The Redis store against the store conformance suite (contract, Vault rotation, tokens sealed at
 * rest, 4 OS processes x 50 callers on one expired connection at oidc-provider with single-use
 * refresh tokens, a SIGKILLed lease holder), plus what is Redis's own: the lease key's PX TTL and
 * compare-and-delete release, prefixes kept apart (also under a client's own keyPrefix), a key of
 * the wrong type, an unreachable server, option checks and the scoped layer. (Rows that are not
 * records are planted by the suite through `plantRecord`.)
 *
 * Every test uses its own key prefix and deletes its keys afterwards.
 */
import { type ConnectionStore, createLatchkey, StoreError } from "@latchkey/core"
import { sampleRecord, storeConformance, watchRecorder } from "@latchkey/core/testing"
import { conformanceTokenServer as oidcTokenServer } from "@latchkey/testkit-oidc"
import { Effect } from "effect"
import { Redis } from "ioredis"
import { afterAll, describe, expect, it } from "vitest"
import { RedisStore } from "../src/index.ts"

const URL_ = process.env.LATCHKEY_TEST_REDIS_URL ?? "redis://127.0.0.1:6379"
const admin = new Redis(URL_, { maxRetriesPerRequest: 2 })
admin.on("error", () => {})
afterAll(async () => {
  await admin.quit()
})

const run = <A, E>(effect: Effect.Effect<A, E>) => Effect.runPromise(effect)

const keysOf = async (prefix: string) => {
  const keys: Array<string> = []
  let cursor = "0"
  for (let i = 0; i < 10_000; i++) {
    const [next, batch] = await admin.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 500)
    keys.push(...batch)
    cursor = next
    if (cursor === "0") break
  }
  return keys.sort()
}

const dropPrefix = async (prefix: string) => {
  const keys = await keysOf(prefix)
  if (keys.length > 0) await admin.del(...keys)
}

/** Every key of the prefix with its value, as text: what a dump of the server would show. */
const dump = async (prefix: string) => {
  const parts: Array<string> = []
  for (const key of await keysOf(prefix)) {
    const type = await admin.type(key)
    const value =
      type === "string"
        ? await admin.get(key)
        : type === "hash"
          ? JSON.stringify(await admin.hgetall(key))
          : type === "zset"
            ? JSON.stringify(await admin.zrange(key, "0", "-1", "WITHSCORES"))
            : type
    parts.push(`${key} ${value}`)
  }
  return parts.join("\n")
}

storeConformance({
  name: "Redis",
  open: async () => {
    const settings = { url: URL_, keyPrefix: RedisStore.randomPrefix("lk-test") }
    const store = RedisStore.make(settings)
    await run(store.ready)
    return {
      store,
      settings,
      raw: () => dump(settings.keyPrefix),
      close: async () => {
        await run(store.close())
        await dropPrefix(settings.keyPrefix)
      }
    }
  },
  plantRecord: async (opened, connectionId, text) => {
    const { keyPrefix } = opened.settings as { keyPrefix: string }
    await admin.hset(`${keyPrefix}c:${connectionId}`, "r", text)
  },
  crossProcess: {
    quietWrites: true,
    opener: { module: new URL("../src/index.ts", import.meta.url).href, export: "RedisStore.make" },
    tokenServer: oidcTokenServer
  }
})

describe("Redis specifics", () => {
  const prefixes: Array<string> = []
  const prefix = () => {
    const p = RedisStore.randomPrefix("lk-test")
    prefixes.push(p)
    return p
  }
  afterAll(async () => {
    for (const p of prefixes) await dropPrefix(p)
    await dropPrefix("lk-test-app:")
  })

  it("watch: a dropped subscriber connection is reported (Lost), reconnected and announced (Live), and still delivers changes", async () => {
    const p = prefix()
    const store = RedisStore.make({ url: URL_, keyPrefix: p })
    const writer = RedisStore.make({ url: URL_, keyPrefix: p })
    const { seen, waitFor, stop } = watchRecorder(store)
    try {
      expect(await waitFor("Live")).toBe(true)
      await run(writer.insert(sampleRecord("w1")))
      expect(await waitFor("Changed:w1")).toBe(true)
      // The server drops the subscriber (a restart, a failover, CLIENT KILL).
      const mark = seen.length
      const name = `latchkey-watch:${p}changes`.replace(/[^A-Za-z0-9:_-]/g, "_")
      const list = String(await admin.call("CLIENT", "LIST", "TYPE", "pubsub"))
      const id = list
        .split("\n")
        .find((line) => line.includes(` name=${name} `))
        ?.match(/^id=(\d+)/)?.[1]
      expect(id).toBeDefined()
      await admin.call("CLIENT", "KILL", "ID", id!)
      expect(await waitFor("Lost", mark)).toBe(true)
      expect(await waitFor("Live", mark)).toBe(true)
      const after = seen.length
      await run(writer.update(sampleRecord("w1", { version: 2 }), 1))
      expect(await waitFor("Changed:w1", after)).toBe(true)
    } finally {
      stop()
      await run(store.close())
      await run(writer.close())
    }
  })

  it("with auto-pipelining turned on for its client, the store works and watch still delivers changes", async () => {
    const p = prefix()
    const store = RedisStore.make({ url: URL_, keyPrefix: p, redisOptions: { enableAutoPipelining: true } })
    const writer = RedisStore.make({ url: URL_, keyPrefix: p })
    const { waitFor, stop } = watchRecorder(store)
    try {
      expect(await waitFor("Live")).toBe(true)
      // Commands of one turn of the event loop, pipelined: each keeps its own reply.
      await Promise.all(["a1", "a2", "a3"].map((id) => run(store.insert(sampleRecord(id)))))
      const got = await Promise.all(["a1", "a2", "a3", "none"].map((id) => run(store.get(id))))
      expect(got.map((r) => r?.id)).toEqual(["a1", "a2", "a3", undefined])
      await run(writer.update(sampleRecord("a2", { version: 2 }), 1))
      expect(await waitFor("Changed:a2")).toBe(true)
    } finally {
      stop()
      await run(store.close())
      await run(writer.close())
    }
  })

  it("the lease is a key with a PX TTL, released only by compare-and-delete; the fence survives", async () => {
    const p = prefix()
    const store = RedisStore.make({ url: URL_, keyPrefix: p })
    try {
      const lease = (await run(store.acquireLease("c1", "holder-a", 5_000)))!
      expect(lease.fence).toBe(1)
      const ttl = await admin.pttl(`${p}l:c1`)
      expect(ttl).toBeGreaterThan(0)
      expect(ttl).toBeLessThanOrEqual(5_000)
      expect(await admin.hget(`${p}l:c1`, "h")).toBe("holder-a")
      // Another holder, or the same holder with another fence, cannot delete it.
      await run(store.releaseLease({ ...lease, holder: "holder-b" }))
      await run(store.releaseLease({ ...lease, fence: 2 }))
      expect(await admin.exists(`${p}l:c1`)).toBe(1)
      await run(store.releaseLease(lease))
      expect(await admin.exists(`${p}l:c1`)).toBe(0)
      expect(await admin.get(`${p}f:c1`)).toBe("1")
      expect((await run(store.acquireLease("c1", "holder-b", 5_000)))?.fence).toBe(2)
    } finally {
      await run(store.close())
    }
  })

  it("a lease is judged by the server's clock (TIME), never the caller's: a dead holder's lapses with its PX TTL", async () => {
    const p = prefix()
    const store = RedisStore.make({ url: URL_, keyPrefix: p })
    try {
      const before = Date.now()
      const crashed = (await run(store.acquireLease("c1", "crashed", 1_000)))!
      expect(crashed.fence).toBe(1)
      // The times are the server's: TIME, not this process's clock (same host here, so close to it).
      const [seconds, micros] = (await admin.time()) as [number | string, number | string]
      const serverNow = Number(seconds) * 1000 + Math.floor(Number(micros) / 1000)
      expect(Math.abs(crashed.grantedAt - serverNow)).toBeLessThan(1_000)
      expect(Math.abs(crashed.grantedAt - before)).toBeLessThan(1_000)
      expect(crashed.expiresAt - crashed.grantedAt).toBe(1_000)
      expect(await run(store.acquireLease("c1", "late", 1_000))).toBeUndefined()
      let taken: ConnectionStore.Lease | undefined
      for (let i = 0; i < 100 && taken === undefined; i++) {
        await new Promise((r) => setTimeout(r, 50))
        taken = await run(store.acquireLease("c1", "late", 1_000))
      }
      expect(taken?.fence).toBe(2)
      // The dead holder's lease cannot be renewed any more; a released one neither.
      expect(await run(store.renewLease(crashed, 5_000))).toBeUndefined()
      await run(store.releaseLease(taken!))
      expect(await run(store.renewLease(taken!, 5_000))).toBeUndefined()
    } finally {
      await run(store.close())
    }
  })

  it("keeps prefixes apart, and honours the client's own keyPrefix", async () => {
    const p1 = prefix()
    const p2 = prefix()
    const one = RedisStore.make({ url: URL_, keyPrefix: p1 })
    const two = RedisStore.make({ url: URL_, keyPrefix: p2 })
    const client = new Redis(URL_, { keyPrefix: "lk-test-app:" })
    const prefixed = RedisStore.make({ client, keyPrefix: "lk:" })
    try {
      await run(one.insert(sampleRecord("a")))
      expect(await run(two.get("a"))).toBeUndefined()
      expect(await run(two.listByOwner("owner"))).toEqual([])
      await run(two.insert(sampleRecord("a")))
      expect(await run(one.count!())).toBe(1)

      await run(prefixed.insert(sampleRecord("x", { refreshDueAt: 5 })))
      expect(await run(prefixed.get("x"))).toEqual(sampleRecord("x", { refreshDueAt: 5 }))
      expect((await run(prefixed.listByOwner("owner"))).map((r) => r.id)).toEqual(["x"])
      expect((await run(prefixed.listDue(10, 10))).map((r) => r.id)).toEqual(["x"])
      expect((await run(prefixed.findByAccount("owner", "p", "acct-x")))?.id).toBe("x")
      expect((await run(prefixed.acquireLease("x", "h", 5_000)))?.fence).toBe(1)
      // Every key, written by plain commands or by scripts, sits under both prefixes.
      const keys = await keysOf("lk-test-app:")
      expect(keys).toContain("lk-test-app:lk:c:x")
      expect(keys).toContain("lk-test-app:lk:l:x")
      expect(keys.every((k) => k.startsWith("lk-test-app:lk:"))).toBe(true)
      expect(await run(prefixed.remove("x"))).toBe(true)
      // Removing the only connection leaves nothing behind.
      expect(await keysOf("lk-test-app:")).toEqual([])
      // The store never quits a client it was given.
      await run(prefixed.close())
      expect(await client.ping()).toBe("PONG")
    } finally {
      await run(one.close())
      await run(two.close())
      await client.quit()
    }
  })

  it("a connection key of another type than the store writes (WRONGTYPE) is corrupt, not retryable", async () => {
    const p = prefix()
    const store = RedisStore.make({ url: URL_, keyPrefix: p })
    try {
      await run(store.insert(sampleRecord("a")))
      await admin.del(`${p}c:a`)
      await admin.set(`${p}c:a`, JSON.stringify(sampleRecord("a")))
      const error = await run(Effect.flip(store.get("a")))
      expect(error).toMatchObject({ _tag: "StoreError", reason: "corrupt", operation: "get" })
      expect(error.isRetryable).toBe(false)
    } finally {
      await run(store.close())
    }
  })

  it("an unreachable server is a typed, retryable error, not a crash", async () => {
    const store = RedisStore.make({ url: "redis://127.0.0.1:1", keyPrefix: prefix(), commandTimeoutMs: 500 })
    const error = await run(Effect.flip(store.get("a")))
    expect(error).toMatchObject({ _tag: "StoreError" })
    expect(["unavailable", "timeout"]).toContain(error.reason)
    expect(error.isRetryable).toBe(true)
    expect(await run(Effect.flip(store.ready))).toMatchObject({ _tag: "StoreError" })
    await run(store.close())
  })

  it("refuses invalid options at construction", () => {
    const bad = [
      [{ url: URL_, keyPrefix: "lk:*" }, "keyPrefix"],
      [{ url: URL_, keyPrefix: "" }, "keyPrefix"],
      [{}, "url"],
      [{ url: URL_, commandTimeoutMs: 0 }, "commandTimeoutMs"]
    ] as const
    for (const [options, field] of bad) {
      let error: unknown
      try {
        RedisStore.make(options)
      } catch (e) {
        error = e
      }
      expect(error).toBeInstanceOf(StoreError)
      expect(error).toMatchObject({ reason: "invalid_options", field, isRetryable: false })
    }
  })

  it("as a Layer: ready when built, closed when released; an unreachable server fails the build", async () => {
    const p = prefix()
    const lk = createLatchkey({ providers: [], store: RedisStore.layer({ url: URL_, keyPrefix: p }) })
    expect(await lk.connections("nobody")).toEqual([])
    await lk.close()
    const unreachable = createLatchkey({
      providers: [],
      store: RedisStore.layer({ url: "redis://127.0.0.1:1", keyPrefix: p, commandTimeoutMs: 500 })
    })
    await expect(unreachable.connections("nobody")).rejects.toMatchObject({ _tag: "StoreError" })
    await unreachable.close()
  })
})
