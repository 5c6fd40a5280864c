/**
 * Reading the durable event log: `latchkey.events.subscribe` (at least once, in order, a failing
 * handler gets the same event again, stop, the cursor), the Effect Stream, and retention with a
 * TestClock. The events are written through the store API (with the state changes they go with).
 */
import { Effect, Fiber, Layer, Stream } from "effect"
import { TestClock } from "effect/testing"
import { describe, expect, it } from "vitest"
import { ConnectionStore, createLatchkey, EventLog, LifecycleEvents } from "../src/index.ts"
import { eventWorkerProvider } from "../src/testing/eventLogWorker.ts"
import { sampleRecord } from "../src/testing/index.ts"

const run = <A, E>(effect: Effect.Effect<A, E>) => Effect.runPromise(effect)

const until = async (f: () => boolean, what: string) => {
  for (let i = 0; i < 500; i++) {
    if (f()) return
    await new Promise((r) => setTimeout(r, 10))
  }
  throw new Error(`timed out waiting for ${what}`)
}

describe("latchkey.events (the durable log)", () => {
  it("delivers every event at least once, in order; a failing handler gets the same event again", async () => {
    const store = ConnectionStore.makeMemory()
    const latchkey = createLatchkey({ providers: [eventWorkerProvider()], store, vault: { plaintext: true } })
    try {
      const r = sampleRecord("c1")
      await run(store.insert(r, [LifecycleEvents.make("linked", r, { kind: "oauth", scopes: ["read"] }, 1)]))
      const seen: Array<string> = []
      const errors: Array<string> = []
      let failOnce = true
      const sub = latchkey.events.subscribe({
        pollIntervalMs: 5,
        retryMs: 5,
        onEvent: async (event) => {
          seen.push(`${event.seq}:${event.type}`)
          if (event.type === "refresh_failed" && failOnce) {
            failOnce = false
            throw new Error("the app's handler failed")
          }
        },
        onError: (error) => errors.push(String((error as Error).message))
      })
      await run(
        store.update(sampleRecord("c1", { version: 2 }), 1, [
          LifecycleEvents.make("refresh_failed", r, { reason: "network", code: null, retryable: true }, 2),
          LifecycleEvents.make("degraded", r, { failures: 1, reason: "network", nextAttemptAt: 9 }, 2)
        ])
      )
      await run(store.remove("c1", [LifecycleEvents.make("unlinked", r, { revokedAtProvider: false }, 3)]))
      await until(() => seen.includes("4:unlinked"), "the unlinked event")
      expect(seen).toEqual(["1:linked", "2:refresh_failed", "2:refresh_failed", "3:degraded", "4:unlinked"])
      expect(errors).toEqual(["the app's handler failed"])
      expect(sub.cursor()).toBe(4)
      await sub.stop()
      await run(store.appendEvents!([LifecycleEvents.make("revoked", r, { reason: "revoked_by_user" }, 4)]))
      // Stopped: nothing more arrives. A new subscriber resumes from the cursor.
      const resumed: Array<number> = []
      const again = latchkey.events.subscribe({
        after: sub.cursor(),
        pollIntervalMs: 5,
        onEvent: (e) => {
          resumed.push(e.seq)
        }
      })
      await until(() => resumed.length === 1, "the resumed event")
      expect(resumed).toEqual([5])
      expect(seen).toHaveLength(5)
      await again.stop()
      expect((await latchkey.events.read(3, 10)).events.map((e) => e.type)).toEqual(["unlinked", "revoked"])
    } finally {
      await latchkey.close()
    }
  })

  it("close() stops the subscriptions", async () => {
    const store = ConnectionStore.makeMemory()
    const latchkey = createLatchkey({ providers: [eventWorkerProvider()], store, vault: { plaintext: true } })
    let calls = 0
    latchkey.events.subscribe({ pollIntervalMs: 5, onEvent: () => void calls++ })
    await latchkey.close()
    await run(
      store.appendEvents!([
        LifecycleEvents.make("revoked", sampleRecord("x"), { reason: "revoked_by_user" }, 1)
      ])
    )
    await new Promise((r) => setTimeout(r, 50))
    expect(calls).toBe(0)
  })

  it("is an Effect Stream, filtered by type, from a cursor", async () => {
    const store = ConnectionStore.makeMemory()
    const r = sampleRecord("s")
    const events = [
      LifecycleEvents.make("linked", r, { kind: "oauth", scopes: [] }, 1),
      LifecycleEvents.make("refreshed", r, { expiresAt: 10, recovered: false }, 2),
      LifecycleEvents.make("needs_reauth", r, { reason: "invalid_grant", code: "invalid_grant" }, 3),
      LifecycleEvents.make("refreshed", r, { expiresAt: 20, recovered: true }, 4)
    ]
    await run(store.appendEvents!(events.slice(0, 2)))
    const program = Effect.gen(function* () {
      const log = yield* EventLog.EventLog
      const fiber = yield* log
        .stream({ after: 1, pollIntervalMs: 1_000, types: ["refreshed", "needs_reauth"] })
        .pipe(Stream.take(3), Stream.runCollect, Effect.forkChild)
      // The stream waits (polling on the clock) until more events are written.
      yield* Effect.yieldNow
      yield* store.appendEvents!(events.slice(2))
      yield* TestClock.adjust(1_000)
      return yield* Fiber.join(fiber)
    })
    const got = await run(
      program.pipe(
        Effect.provide(
          EventLog.EventLog.layer().pipe(
            Layer.provide(Layer.succeed(ConnectionStore.ConnectionStore, store)),
            Layer.provideMerge(TestClock.layer())
          )
        )
      )
    )
    expect([...got].map((e) => [e.seq, e.type])).toEqual([
      [2, "refreshed"],
      [3, "needs_reauth"],
      [4, "refreshed"]
    ])
  })

  it("prunes events older than retentionMs in the background (TestClock)", async () => {
    const store = ConnectionStore.makeMemory()
    const r = sampleRecord("old")
    const at = (t: number) => LifecycleEvents.make("revoked", r, { reason: "revoked_by_user" }, t)
    await run(store.appendEvents!([at(0), at(5_000), at(60_000)]))
    const program = Effect.gen(function* () {
      const log = yield* EventLog.EventLog
      // A pass at 60 s (or 70 s) removes what is older than 30 s (or 40 s).
      yield* TestClock.adjust(70_000)
      const first = (yield* log.read(0, 10)).events.map((e) => e.at)
      yield* store.appendEvents!([at(100_000)])
      yield* TestClock.adjust(60_000)
      const second = (yield* log.read(0, 10)).events.map((e) => e.at)
      return { first, second }
    })
    const result = await run(
      program.pipe(
        Effect.provide(
          EventLog.EventLog.layer({ retentionMs: 30_000, pruneIntervalMs: 60_000 }).pipe(
            Layer.provide(Layer.succeed(ConnectionStore.ConnectionStore, store)),
            Layer.provideMerge(TestClock.layer())
          )
        ),
        Effect.scoped
      )
    )
    expect(result.first).toEqual([60_000])
    expect(result.second).toEqual([100_000])
  })

  it("fromEvent: the durable event of each in-process event, without messages", () => {
    const base = { at: 5, connectionId: "c", ownerId: "o", providerId: "p" }
    const summary = {
      kind: "oauth",
      scopes: ["read"]
    } as unknown as import("../src/Connection.ts").ConnectionSummary
    const secret = "Example said: token tok-zyx-secret"
    const cases = [
      [
        { ...base, type: "linked", connection: summary, relinked: false },
        "linked",
        { kind: "oauth", scopes: ["read"] }
      ],
      [
        { ...base, type: "reconnected", previous: { state: "needs_reauth", reason: "invalid_grant" } },
        "reconnected",
        { previousState: "needs_reauth", previousReason: "invalid_grant" }
      ],
      [
        { ...base, type: "refreshed", expiresAt: 9, refreshExpiresAt: undefined, recovered: true },
        "refreshed",
        { expiresAt: 9, recovered: true }
      ],
      [
        { ...base, type: "refresh_failed", reason: "transient", message: secret, retryable: true },
        "refresh_failed",
        { reason: "transient", code: "temporarily_unavailable", retryable: true }
      ],
      [
        {
          ...base,
          type: "degraded",
          reason: "transient",
          message: secret,
          failures: 1,
          nextAttemptAt: 30_005
        },
        "degraded",
        { failures: 1, reason: "transient", nextAttemptAt: 30_005 }
      ],
      [
        { ...base, type: "recovered", failures: 2, degradedMs: 60_000 },
        "recovered",
        { failures: 2, degradedMs: 60_000 }
      ],
      [
        { ...base, type: "needs_reauth", reason: "invalid_grant", message: secret },
        "needs_reauth",
        { reason: "invalid_grant", code: "temporarily_unavailable" }
      ],
      [
        {
          ...base,
          type: "needs_reauth",
          reason: "refresh_interrupted",
          message: secret,
          interrupted: { holder: "h-1", startedAt: 4 }
        },
        "refresh_interrupted",
        { holder: "h-1", startedAt: 4 }
      ],
      [{ ...base, type: "revoked", reason: "revoked_by_user" }, "revoked", { reason: "revoked_by_user" }],
      [{ ...base, type: "revoked" }, "revoked", { reason: "revoked_at_provider" }],
      [{ ...base, type: "unlinked", revokedAtProvider: true }, "unlinked", { revokedAtProvider: true }]
    ] as const
    for (const [event, type, data] of cases) {
      const durable = LifecycleEvents.fromEvent(event as never, { code: "temporarily_unavailable" })
      expect(durable).toMatchObject({ ...base, type, data })
      expect(durable!.id).toMatch(/^[0-9a-f-]{36}$/)
      expect(JSON.stringify(durable)).not.toContain("tok-zyx-secret")
    }
    // A relink's `linked` has no durable form of its own: its `reconnected` is the one in the log.
    expect(
      LifecycleEvents.fromEvent({ ...base, type: "linked", connection: summary, relinked: true } as never)
    ).toBeUndefined()
    // Every durable type is produced by some in-process event.
    expect(new Set(cases.map(([, type]) => type))).toEqual(new Set(LifecycleEvents.lifecycleEventTypes))
  })

  it("a store without an event log: a StoreError that says so", async () => {
    const { readEvents: _r, appendEvents: _a, pruneEvents: _p, ...bare } = ConnectionStore.makeMemory()
    const error = await run(Effect.flip(EventLog.make(bare).read(0, 10)))
    expect(error).toMatchObject({ _tag: "StoreError", reason: "unavailable" })
    expect(error.message).toContain("no lifecycle event log")
  })
})
