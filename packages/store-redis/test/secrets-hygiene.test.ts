/**
 * The security conformance suite and the permanent secrets-hygiene suite
 * (`securityConformance` of `@latchkey/core/testing`) for the Redis store, against the real
 * oidc-provider. The owner's index key is turned into a string, so the write of refreshed tokens
 * fails inside its script with WRONGTYPE: ioredis keeps the command's arguments (the record, tokens
 * included) on such an error, and the store's error must not carry them. Each test has its own prefix.
 */
import { securityConformance } from "@latchkey/core/testing"
import { conformanceTokenServer } from "@latchkey/testkit-oidc"
import { Effect } from "effect"
import { Redis } from "ioredis"
import { afterAll } from "vitest"
import { RedisStore } from "../src/index.ts"

const URL_ = process.env.LATCHKEY_TEST_REDIS_URL ?? "redis://127.0.0.1:6379"
const admin = new Redis(URL_, { maxRetriesPerRequest: 2 })
admin.on("error", () => {})
afterAll(async () => {
  await admin.quit()
})

const dropPrefix = async (prefix: string) => {
  let cursor = "0"
  do {
    const [next, keys] = await admin.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 500)
    if (keys.length > 0) await admin.del(...keys)
    cursor = next
  } while (cursor !== "0")
}

securityConformance({
  name: "Redis",
  open: async () => {
    const settings = { url: URL_, keyPrefix: RedisStore.randomPrefix("lk-hygiene") }
    const store = RedisStore.make(settings)
    await Effect.runPromise(store.ready)
    return {
      store,
      settings,
      close: async () => {
        await Effect.runPromise(store.close())
        await dropPrefix(settings.keyPrefix)
      }
    }
  },
  tokenServer: conformanceTokenServer,
  sabotage: async (opened, ownerId) => {
    const { keyPrefix } = opened.settings as { keyPrefix: string }
    await admin.set(`${keyPrefix}o:${ownerId}`, "not a sorted set")
  }
})
