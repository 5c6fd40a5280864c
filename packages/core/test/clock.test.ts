/**
 * Everything about time runs on Effect's TestClock: the skew before expiry, and the background
 * Refresher refreshing ahead of expiry. The token server is real (oidc-provider); only our clock is
 * virtual.
 */
import { assert, describe, it } from "@effect/vitest"
import { consent, type OidcServer } from "@latchkey/testkit-oidc"
import { Effect, Fiber, Layer, Redacted } from "effect"
import { TestClock } from "effect/testing"
import { afterAll, beforeAll } from "vitest"
import { AuthorizationFlow } from "../src/AuthorizationFlow.ts"
import { ConnectionStore, makeMemory } from "../src/ConnectionStore.ts"
import { Events, type LatchkeyEvent } from "../src/Events.ts"
import { Latchkey } from "../src/index.ts"
import { Refresher } from "../src/Refresher.ts"
import { TokenManager } from "../src/TokenManager.ts"
import { exampleProvider, REDIRECT, startServer } from "./support.ts"

let server: OidcServer
beforeAll(async () => {
  server = await startServer()
})
afterAll(() => server.close())

const services = () =>
  Latchkey.layer({ providers: [exampleProvider(server)], config: { baseBackoffMs: 5, maxBackoffMs: 50 } })

const linkAt = Effect.gen(function* () {
  const flow = yield* AuthorizationFlow
  const { url } = yield* flow.start({ providerId: "example", ownerId: "user-1" })
  const callback = yield* Effect.promise(() => consent(url, { login: "alice", redirectUri: REDIRECT }))
  return (yield* flow.complete({ callback })).connection
})

/** Let real I/O (HTTP to the server) finish while virtual time stands still. */
const settle = (until: () => boolean) =>
  Effect.gen(function* () {
    for (let i = 0; i < 100 && !until(); i++) {
      yield* Effect.promise(() => new Promise((r) => setTimeout(r, 10)))
    }
  })

describe("skew before expiry (TestClock)", () => {
  it.effect("an access token is used until five minutes before it expires, then refreshed once", () =>
    Effect.gen(function* () {
      const c = yield* linkAt
      const tokens = yield* TokenManager
      assert.strictEqual(c.expiresAt, 3_600_000) // one hour from the virtual epoch
      const first = Redacted.value(yield* tokens.accessToken(c.id))
      const before = server.grants.refresh_token

      yield* TestClock.adjust("54 minutes")
      assert.strictEqual(Redacted.value(yield* tokens.accessToken(c.id)), first)
      assert.strictEqual(server.grants.refresh_token, before)

      yield* TestClock.adjust("2 minutes") // 4 minutes left: inside the skew
      const second = Redacted.value(yield* tokens.accessToken(c.id))
      assert.notStrictEqual(second, first)
      assert.strictEqual(server.grants.refresh_token - before, 1)
      const after = yield* tokens.get(c.id)
      assert.strictEqual(after.tokens.expiresAt, 56 * 60_000 + 3_600_000)
    }).pipe(Effect.provide(services()))
  )
})

describe("Refresher (TestClock)", () => {
  it.effect("refreshes ahead of expiry in the background without any caller, and emits events", () =>
    Effect.gen(function* () {
      const c = yield* linkAt
      const events = yield* Events
      const seen: Array<LatchkeyEvent> = []
      events.subscribe((e) => seen.push(e))
      const refresher = yield* Refresher
      yield* refresher.start
      assert.isTrue(yield* refresher.isRunning)
      const before = server.grants.refresh_token

      // Due ten minutes before expiry (at 50 min); the loop sweeps every 30 s.
      yield* TestClock.adjust("49 minutes")
      yield* settle(() => false)
      assert.strictEqual(server.grants.refresh_token, before)

      yield* TestClock.adjust("90 seconds")
      yield* settle(() => seen.some((e) => e.type === "refreshed"))
      assert.strictEqual(server.grants.refresh_token - before, 1)
      const refreshed = seen.find((e) => e.type === "refreshed")
      assert.strictEqual(refreshed?.type === "refreshed" && refreshed.connectionId, c.id)

      // The new token is due again ten minutes before its own expiry, not before.
      yield* TestClock.adjust("30 minutes")
      yield* settle(() => false)
      assert.strictEqual(server.grants.refresh_token - before, 1)

      yield* refresher.stop
      assert.isFalse(yield* refresher.isRunning)
    }).pipe(Effect.provide(services()))
  )

  it.effect("one sweep refreshes every due connection once, within the per-provider rate", () =>
    Effect.gen(function* () {
      const flow = yield* AuthorizationFlow
      const ids: Array<string> = []
      for (const login of ["u1", "u2", "u3"]) {
        const { url } = yield* flow.start({ providerId: "example", ownerId: "owner" })
        const callback = yield* Effect.promise(() => consent(url, { login, redirectUri: REDIRECT }))
        ids.push((yield* flow.complete({ callback })).connection.id)
      }
      yield* TestClock.adjust("51 minutes")
      const refresher = yield* Refresher
      const before = server.grants.refresh_token
      // Rate 2/s with the default 50 ms of jitter allowed: slots 525 ms apart, so the third refresh
      // waits for its slot (1,050 ms) in virtual time: not there after 1 s, there after 1.05 s.
      const fiber = yield* Effect.forkChild(refresher.sweep)
      yield* settle(() => server.grants.refresh_token - before >= 2)
      yield* TestClock.adjust("1 second")
      yield* settle(() => false)
      assert.strictEqual(server.grants.refresh_token - before, 2)
      yield* TestClock.adjust("50 millis")
      yield* settle(() => server.grants.refresh_token - before >= 3)
      const report = yield* Fiber.join(fiber)
      assert.deepStrictEqual(report, { due: 3, refreshed: 3, failed: 0 })
      assert.strictEqual(server.grants.refresh_token - before, 3)
    }).pipe(
      // The store's budgets on the virtual clock too: its slots are handed out on the store's clock.
      Effect.provide(
        Layer.unwrap(
          Effect.clockWith((clock) =>
            Effect.succeed(
              Latchkey.layer({
                providers: [exampleProvider(server)],
                store: makeMemory({ clock: () => clock.currentTimeMillisUnsafe() }),
                refresher: { ratePerSecond: 2 },
                config: { baseBackoffMs: 5, maxBackoffMs: 50 }
              })
            )
          )
        )
      )
    )
  )

  it.effect(
    "a request waits for its turn before its journal is written, and leaves when the turn comes",
    () =>
      Effect.gen(function* () {
        const c = yield* linkAt
        const store = yield* ConnectionStore
        const tokens = yield* TokenManager
        yield* TestClock.adjust("51 minutes")
        const before = server.grants.refresh_token
        const stored = yield* store.get(c.id)
        let reserved = 0
        // The turn comes in 2 s (the Refresher's rate slot, as `takeRateBudget` answers it).
        const fiber = yield* Effect.forkChild(
          tokens.refreshIfDue(c.id, undefined, {
            pace: {
              reserve: () =>
                Effect.sync(() => {
                  reserved++
                  return 2_000
                }),
              jitterMs: 50
            }
          })
        )
        const journal = () => Effect.map(store.get(c.id), (r) => r?.journal ?? null)
        // While virtual time stands still the turn is reserved and nothing is in doubt: no journal.
        yield* settle(() => reserved === 1)
        yield* settle(() => false)
        assert.strictEqual(reserved, 1)
        assert.isNull(yield* journal())
        // A quarter of a second before the turn, still no journal: a crash now leaves nothing in doubt.
        yield* TestClock.adjust("1750 millis")
        yield* settle(() => false)
        assert.isNull(yield* journal())
        // Just before the turn the journal is written, and the request waits for the turn itself.
        yield* TestClock.adjust("249 millis")
        let journaled = false
        for (let i = 0; i < 100 && !journaled; i++) {
          yield* Effect.promise(() => new Promise((r) => setTimeout(r, 10)))
          journaled = (yield* journal()) !== null
        }
        assert.isTrue(journaled)
        assert.strictEqual(server.grants.refresh_token, before)
        // The turn comes: the request leaves and its answer is stored.
        yield* TestClock.adjust("1 milli")
        yield* Fiber.join(fiber)
        assert.strictEqual(server.grants.refresh_token - before, 1)
        assert.strictEqual(reserved, 1)
        const after = yield* store.get(c.id)
        assert.isNull(after?.journal ?? null)
        assert.notStrictEqual(after?.refreshToken, stored?.refreshToken)
      }).pipe(Effect.provide(services()))
  )
})
