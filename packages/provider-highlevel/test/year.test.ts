/**
 * 400 days on Effect's TestClock: the background Refresher alone keeps two HighLevel locations linked
 * past the first refresh token's one-year life. The sandbox reads the same virtual clock, so its
 * one-day access tokens and one-year single-use refresh tokens age exactly as Latchkey sees them.
 */
import { assert, describe, it } from "@effect/vitest"
import { ApiClient, AuthorizationFlow, Events, Latchkey, Refresher, TokenManager } from "@latchkey/core"
import { Clock, Effect } from "effect"
import { TestClock } from "effect/testing"
import { startSandbox } from "../src/sandbox.ts"
import { providerFor } from "./support.ts"

const DAY = 86_400_000
const STEP = 30 * 60_000

describe("a year and more (TestClock)", () => {
  it.effect(
    "the Refresher keeps two locations alive for 400 days: one refresh per token, no reauth, the first refresh token long dead",
    () =>
      Effect.gen(function* () {
        const now = yield* Clock.clockWith((clock) => Effect.succeed(() => clock.currentTimeMillisUnsafe()))
        const sandbox = yield* Effect.acquireRelease(
          Effect.promise(() => startSandbox({ now })),
          (s) => Effect.promise(() => s.close())
        )
        // Count requests in flight, so that virtual time only moves while nothing is on the wire.
        let started = 0
        let finished = 0
        const counting: typeof fetch = async (input, init) => {
          started++
          try {
            return await fetch(input, init)
          } finally {
            finished++
          }
        }
        const services = Latchkey.layer({
          providers: [providerFor(sandbox)],
          config: { baseBackoffMs: 10, maxBackoffMs: 200, fetch: counting, refreshAheadMs: 60 * 60_000 },
          refresher: { intervalMs: STEP }
        })
        yield* Effect.gen(function* () {
          const flow = yield* AuthorizationFlow.AuthorizationFlow
          const tokens = yield* TokenManager.TokenManager
          const api = yield* ApiClient.ApiClient
          const events = yield* Events.Events
          const seen: Array<Events.LatchkeyEvent> = []
          events.subscribe((e) => seen.push(e))

          const linkLocation = Effect.fn(function* (locationId: string) {
            const { url } = yield* flow.start({ providerId: "highlevel", ownerId: "user-1" })
            const callback = yield* Effect.promise(() => sandbox.approve(url, locationId))
            return (yield* flow.complete({ callback })).connection
          })
          const acme = yield* linkLocation("sbxLocation001")
          const bright = yield* linkLocation("sbxLocation002")
          const firstRefreshToken = sandbox.oauth.registry.grants({ accountId: "sbxLocation001" }).at(-1)!
            .refreshToken!
          assert.strictEqual(acme.refreshExpiresAt, 365 * DAY)

          const refreshes = () => seen.filter((e) => e.type === "refreshed").length
          const answered = () =>
            sandbox.countCalls({ endpoint: "token", grantType: "refresh_token", status: 200 })
          /** Let real I/O (the sandbox's answers) and the fibers waiting on it finish. */
          const settle = Effect.gen(function* () {
            for (let i = 0; i < 500 && (started !== finished || answered() !== refreshes()); i++) {
              yield* Effect.promise(() => new Promise((r) => setTimeout(r, 2)))
            }
            assert.strictEqual(started, finished)
            assert.strictEqual(answered(), refreshes())
          })

          const refresher = yield* Refresher.Refresher
          yield* refresher.start
          for (let t = 0; t < 400 * DAY; t += STEP) {
            yield* TestClock.adjust(STEP)
            if (started !== finished || answered() !== refreshes()) yield* settle
          }
          yield* settle

          const day400 = yield* Clock.currentTimeMillis
          assert.strictEqual(day400, 400 * DAY)
          // Exactly one refresh per access token, in the last 90 minutes of its day (an hour ahead, at
          // the next half-hourly sweep), never after it expired: about 400 × 24/23 of them.
          for (const c of [acme, bright]) {
            const mine = seen.flatMap((e) => (e.type === "refreshed" && e.connectionId === c.id ? [e] : []))
            let expiresAt = c.expiresAt!
            for (const e of mine) {
              assert.isAtLeast(e.at, expiresAt - 60 * 60_000 - STEP)
              assert.isBelow(e.at, expiresAt)
              expiresAt = e.expiresAt!
            }
            assert.isAtLeast(mine.length, Math.floor((400 * DAY) / (46 * STEP)) - 1)
            assert.isAtMost(mine.length, Math.ceil((400 * DAY) / (46 * STEP)))
          }
          assert.strictEqual(
            answered(),
            sandbox.countCalls({ endpoint: "token", grantType: "refresh_token" })
          )
          assert.isFalse(seen.some((e) => e.type === "needs_reauth" || e.type === "refresh_failed"))

          for (const c of [acme, bright]) {
            const current = yield* tokens.get(c.id)
            assert.strictEqual(current.status, "active")
            assert.isAbove(current.tokens.expiresAt!, day400)
            assert.isAbove(current.tokens.refreshExpiresAt!, day400 + 364 * DAY)
          }
          const res = yield* api.fetch(acme.id, "/locations/sbxLocation001")
          assert.strictEqual(res.status, 200)
          const body = (yield* Effect.promise(() => res.json())) as { location: { name: string } }
          assert.strictEqual(body.location.name, "Acme Plumbing")

          // The refresh token of day 0 was spent on day 1 and would have expired on day 365 anyway.
          const old = yield* Effect.promise(() =>
            fetch(`${sandbox.url}/oauth/token`, {
              method: "POST",
              headers: { "content-type": "application/x-www-form-urlencoded" },
              body: new URLSearchParams({
                grant_type: "refresh_token",
                refresh_token: firstRefreshToken,
                user_type: "Location",
                client_id: sandbox.clientId,
                client_secret: sandbox.clientSecret
              })
            })
          )
          assert.strictEqual(old.status, 400)
          yield* refresher.stop
        }).pipe(Effect.provide(services))
      }),
    120_000
  )
})
