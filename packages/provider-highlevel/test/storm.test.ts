/**
 * A refresh storm on a single-use refresh token: many callers in several Latchkey instances (each its
 * own holder id, as separate processes would be) sharing one store. Every expiry costs exactly one
 * refresh at HighLevel, every caller gets the same new token, and the grant survives round after round.
 *
 * The instances share an in-memory store inside one process, which makes several rounds cheap; the
 * same storm across OS processes on a shared SQLite file is in storm-processes.test.ts.
 */
import { ConnectionStore, createLatchkey, type LatchkeyClient } from "@latchkey/core"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type HighLevelSandbox, startSandbox } from "../src/sandbox.ts"
import { expireAccess, link, plain, providerFor, refreshCalls, stored } from "./support.ts"

const INSTANCES = 6
const CALLERS_PER_INSTANCE = 25
const ROUNDS = 3

let sandbox: HighLevelSandbox
let instances: Array<LatchkeyClient>
const store = ConnectionStore.makeMemory()

beforeAll(async () => {
  sandbox = await startSandbox()
  instances = Array.from({ length: INSTANCES }, (_, i) =>
    createLatchkey({
      providers: [providerFor(sandbox)],
      store,
      config: { baseBackoffMs: 10, maxBackoffMs: 200, holderId: `worker-${i}` }
    })
  )
})
afterAll(async () => {
  await Promise.all(instances.map((lk) => lk.close()))
  await sandbox.close()
})

describe("refresh storm", () => {
  it(`${INSTANCES} instances × ${CALLERS_PER_INSTANCE} callers: one refresh per expiry, one new token for all, the grant survives`, async () => {
    const c = await link(instances[0]!, sandbox, "sbxLocation001")
    const grant = () => sandbox.oauth.registry.grants({ accountId: "sbxLocation001" }).at(-1)!
    let previous = await instances[0]!.accessToken(c.id)
    for (let round = 1; round <= ROUNDS; round++) {
      const refreshToken = plain((await stored(store, c.id)).refreshToken)
      await expireAccess(store, c.id)
      // A slow answer on the middle round widens the window in which the others must wait for it.
      if (round === 2)
        sandbox.inject({ endpoint: "token", grantType: "refresh_token", fault: "delay", ms: 300 })
      const before = refreshCalls(sandbox)
      const tokens = await Promise.all(
        instances.flatMap((lk) => Array.from({ length: CALLERS_PER_INSTANCE }, () => lk.accessToken(c.id)))
      )
      expect(refreshCalls(sandbox) - before).toBe(1)
      expect(new Set(tokens).size).toBe(1)
      expect(tokens[0]).not.toBe(previous)
      previous = tokens[0]!
      expect(grant().refreshes).toBe(round)
      expect(grant().revoked).toBe(false)
      // The refresh token was spent once and its successor is what the store holds.
      expect(plain((await stored(store, c.id)).refreshToken)).not.toBe(refreshToken)
      expect(plain((await stored(store, c.id)).refreshToken)).toBe(grant().refreshToken)
    }
    for (const lk of instances) {
      const res = await lk.fetch(c.id, "/locations/sbxLocation001")
      expect(res.status).toBe(200)
      await res.body?.cancel()
    }
    expect((await instances[INSTANCES - 1]!.connection(c.id)).status).toBe("active")
  })
})
