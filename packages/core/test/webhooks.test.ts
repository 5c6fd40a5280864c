/**
 * The webhook worker against a real HTTP receiver on 127.0.0.1 that fails, hangs past the timeout
 * and recovers. The retry delays run on a TestClock (nothing sleeps for them); the requests, their
 * timeouts and the receiver are real. Events are written to the store's log through the store API.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http"
import type { AddressInfo } from "node:net"
import { Effect, Fiber, Redacted } from "effect"
import { TestClock } from "effect/testing"
import { afterEach, describe, expect, it } from "vitest"
import { ConnectionStore, createLatchkey, LifecycleEvents, Telemetry, Webhooks } from "../src/index.ts"
import { eventWorkerProvider } from "../src/testing/eventLogWorker.ts"
import { sampleRecord } from "../src/testing/index.ts"

const SECRET = "whsec-test-0123456789"

type Behaviour = "ok" | "fail" | "unavailable" | "hang"

interface Received {
  readonly eventId: string
  readonly idempotencyKey: string | undefined
  readonly attempt: number
  readonly verified: boolean
  readonly answered: Behaviour
  readonly body: Webhooks.WebhookPayload
}

interface Receiver {
  readonly url: string
  readonly received: Array<Received>
  /** Behaviours per event id, consumed one per request (then "ok"). */
  readonly plan: Map<string, Array<Behaviour>>
  readonly close: () => Promise<void>
}

const receivers: Array<Receiver> = []
afterEach(async () => {
  for (const r of receivers.splice(0)) await r.close()
})

const startReceiver = async (): Promise<Receiver> => {
  const received: Array<Received> = []
  const plan = new Map<string, Array<Behaviour>>()
  const server: Server = createServer((req: IncomingMessage, res: ServerResponse) => {
    let body = ""
    req.setEncoding("utf8")
    req.on("data", (chunk) => {
      body += chunk
    })
    req.on("end", () => {
      const payload = JSON.parse(body) as Webhooks.WebhookPayload
      const eventId = String(req.headers["latchkey-event-id"])
      const answered = plan.get(eventId)?.shift() ?? "ok"
      received.push({
        eventId,
        idempotencyKey: req.headers["idempotency-key"] as string | undefined,
        attempt: Number(req.headers["latchkey-delivery-attempt"]),
        verified: Webhooks.verifyWebhook({
          body,
          signature: req.headers["latchkey-signature"] as string | undefined,
          secret: SECRET,
          // The sender's test clock moves ahead of the host's by the retry delays.
          toleranceSeconds: 3_600
        }),
        answered,
        body: payload
      })
      if (answered === "hang") return // never answers: the sender's timeout fires
      res.statusCode = answered === "ok" ? 204 : answered === "fail" ? 500 : 503
      res.end()
    })
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const port = (server.address() as AddressInfo).port
  const receiver: Receiver = {
    url: `http://127.0.0.1:${port}/hooks`,
    received,
    plan,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      })
  }
  receivers.push(receiver)
  return receiver
}

/** One request through the global fetch to a throwaway server on 127.0.0.1. */
const warmFetch = async () => {
  const server = createServer((_req, res) => res.end())
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  try {
    await (await fetch(`http://127.0.0.1:${(server.address() as AddressInfo).port}/`)).text()
  } finally {
    server.closeAllConnections()
    await new Promise<void>((resolve) => server.close(() => resolve()))
  }
}

const realPause = (ms: number) => Effect.promise(() => new Promise((r) => setTimeout(r, ms)))

/** Let real I/O happen, move the test clock, until `done` (bounded). */
const drive = (done: () => boolean, stepMs: number) =>
  Effect.gen(function* () {
    for (let i = 0; i < 2_000 && !done(); i++) {
      yield* realPause(5)
      yield* TestClock.adjust(stepMs)
    }
    if (!done()) return yield* Effect.die(new Error("the deliveries did not finish"))
  })

/** On a TestClock that starts at the host's time (the receiver checks the signatures' timestamps). */
const runTest = <A, E>(effect: Effect.Effect<A, E>) =>
  Effect.runPromise(
    Effect.scoped(Effect.provide(Effect.andThen(TestClock.setTime(Date.now()), effect), TestClock.layer()))
  )

describe("webhooks", () => {
  it("delivers in order through failures, timeouts and recovery, with backoff and jitter; dead-letters after N attempts", async () => {
    // The first fetch of a process loads and compiles undici: on a loaded machine that took longer
    // than the request timeout below, and the first attempt read as a timeout instead of a 500.
    await warmFetch()
    const receiver = await startReceiver()
    const store = ConnectionStore.makeMemory()
    const r = sampleRecord("c1")
    const events = [
      LifecycleEvents.make("linked", r, { kind: "oauth", scopes: ["read"] }, 1),
      LifecycleEvents.make("refreshed", r, { expiresAt: 10, recovered: false }, 2),
      LifecycleEvents.make("needs_reauth", r, { reason: "invalid_grant", code: "invalid_grant" }, 3),
      LifecycleEvents.make("unlinked", r, { revokedAtProvider: true }, 4)
    ]
    const [linked, refreshed, reauth, unlinked] = events as [
      LifecycleEvents.LifecycleEvent,
      LifecycleEvents.LifecycleEvent,
      LifecycleEvents.LifecycleEvent,
      LifecycleEvents.LifecycleEvent
    ]
    receiver.plan.set(linked.id, ["fail", "hang", "ok"])
    receiver.plan.set(refreshed.id, ["fail", "unavailable", "fail", "fail", "fail"])
    receiver.plan.set(unlinked.id, ["unavailable", "ok"])
    await Effect.runPromise(store.appendEvents!(events))
    const attempts: Array<Webhooks.DeliveryAttempt> = []
    const state = await runTest(
      Effect.gen(function* () {
        const worker = yield* Effect.forkChild(
          Webhooks.run({
            url: receiver.url,
            secret: Redacted.make(SECRET),
            maxAttempts: 4,
            baseDelayMs: 1_000,
            maxDelayMs: 3_000,
            timeoutMs: 1_000,
            pollIntervalMs: 500,
            onAttempt: (a) => attempts.push(a)
          }).pipe(Effect.provideService(ConnectionStore.ConnectionStore, store))
        )
        yield* drive(() => attempts.some((a) => a.eventId === unlinked.id && a.outcome === "delivered"), 500)
        yield* Fiber.interrupt(worker)
        return yield* Webhooks.readState(store)
      })
    )
    // What the receiver got: every request signed, the event id as idempotency key on each attempt.
    expect(receiver.received.every((x) => x.verified)).toBe(true)
    expect(receiver.received.every((x) => x.idempotencyKey === x.eventId)).toBe(true)
    expect(receiver.received.map((x) => [x.eventId, x.attempt, x.answered])).toEqual([
      [linked.id, 1, "fail"],
      [linked.id, 2, "hang"],
      [linked.id, 3, "ok"],
      [refreshed.id, 1, "fail"],
      [refreshed.id, 2, "unavailable"],
      [refreshed.id, 3, "fail"],
      [refreshed.id, 4, "fail"],
      [reauth.id, 1, "ok"],
      [unlinked.id, 1, "unavailable"],
      [unlinked.id, 2, "ok"]
    ])
    expect(receiver.received[2]!.body).toEqual({ ...linked, seq: 1 })
    // The retry schedule: exponential from 1 s, jittered ×0.8–1.2, capped at 3 s.
    const delays = (id: string) =>
      attempts.filter((a) => a.eventId === id && a.outcome === "retry").map((a) => a.nextDelayMs!)
    const within = (d: number, nominal: number) =>
      d >= Math.min(nominal * 0.8, 3_000) && d <= Math.min(nominal * 1.2, 3_000)
    expect(delays(linked.id)).toHaveLength(2)
    expect(within(delays(linked.id)[0]!, 1_000) && within(delays(linked.id)[1]!, 2_000)).toBe(true)
    const dead = delays(refreshed.id)
    expect(dead).toHaveLength(3)
    expect(within(dead[0]!, 1_000) && within(dead[1]!, 2_000) && within(dead[2]!, 4_000)).toBe(true)
    expect(attempts.filter((a) => a.eventId === linked.id).map((a) => [a.outcome, a.status])).toEqual([
      ["retry", 500],
      ["retry", null],
      ["delivered", 204]
    ])
    expect(attempts.find((a) => a.eventId === refreshed.id && a.outcome === "dead_letter")).toMatchObject({
      attempt: 4,
      status: 500
    })
    // The delivery metric, by outcome and status.
    const text = await Effect.runPromise(Telemetry.prometheusText)
    expect(text).toMatch(/^latchkey_webhook_deliveries_total\{.*outcome="dead_letter".*status="500".*\} 1$/m)
    expect(text).toMatch(/^latchkey_webhook_deliveries_total\{.*outcome="retry".*status="error".*\} 1$/m)
    // The durable state: the cursor past the last event, the dead letter kept for operators.
    expect(state).toMatchObject({ cursor: 4, delivered: 3, failing: null })
    expect(state.deadLetters).toHaveLength(1)
    expect(state.deadLetters[0]).toMatchObject({
      eventId: refreshed.id,
      seq: 2,
      type: "refreshed",
      attempts: 4,
      lastError: "answered 500"
    })
  })

  it("one worker at a time across instances; the next one takes over from the durable cursor", async () => {
    const receiver = await startReceiver()
    const store = ConnectionStore.makeMemory()
    const r = sampleRecord("c2")
    const first = [1, 2, 3].map((i) =>
      LifecycleEvents.make("refreshed", r, { expiresAt: i, recovered: false }, i)
    )
    await Effect.runPromise(store.appendEvents!(first))
    const by = new Map<string, string>()
    const worker = (holder: string) =>
      Webhooks.run({
        url: receiver.url,
        secret: SECRET,
        holder,
        pollIntervalMs: 200,
        leaseTtlMs: 60_000,
        onAttempt: (a) => {
          if (a.outcome === "delivered") by.set(a.eventId, holder)
        }
      }).pipe(Effect.provideService(ConnectionStore.ConnectionStore, store))
    await runTest(
      Effect.gen(function* () {
        const a = yield* Effect.forkChild(worker("A"))
        const b = yield* Effect.forkChild(worker("B"))
        yield* drive(() => by.size === 3, 200)
        const holder = by.get(first[0]!.id)!
        expect(new Set(by.values())).toEqual(new Set([holder]))
        // The holder stops (its lease is released); the other one continues after the cursor.
        yield* Fiber.interrupt(holder === "A" ? a : b)
        const later = LifecycleEvents.make("revoked", r, { reason: "revoked_by_user" }, 9)
        yield* store.appendEvents!([later])
        yield* drive(() => by.has(later.id), 200)
        expect(by.get(later.id)).toBe(holder === "A" ? "B" : "A")
        yield* Fiber.interrupt(holder === "A" ? b : a)
      })
    )
    // Each event reached the receiver once: no two workers ever delivered at the same time.
    expect(receiver.received.map((x) => x.eventId).sort()).toEqual([...by.keys()].sort())
    expect(receiver.received).toHaveLength(4)
  })

  it("redelivers dead letters on request", async () => {
    const receiver = await startReceiver()
    const store = ConnectionStore.makeMemory()
    const e = LifecycleEvents.make("revoked", sampleRecord("c3"), { reason: "revoked_at_provider" }, 1)
    receiver.plan.set(e.id, ["fail", "fail"])
    await Effect.runPromise(store.appendEvents!([e]))
    const delivered: Array<string> = []
    const options: Webhooks.WebhookOptions = {
      url: receiver.url,
      secret: SECRET,
      maxAttempts: 2,
      baseDelayMs: 100,
      pollIntervalMs: 100,
      onAttempt: (a) => {
        if (a.outcome !== "retry") delivered.push(a.outcome)
      }
    }
    await runTest(
      Effect.gen(function* () {
        const w = yield* Effect.forkChild(
          Webhooks.run(options).pipe(Effect.provideService(ConnectionStore.ConnectionStore, store))
        )
        yield* drive(() => delivered.includes("dead_letter"), 100)
        expect((yield* Webhooks.readState(store)).deadLetters.map((d) => d.eventId)).toEqual([e.id])
        expect(yield* Webhooks.redeliverDeadLetters(store)).toBe(1)
        yield* drive(() => delivered.includes("delivered"), 100)
        yield* Fiber.interrupt(w)
        const state = yield* Webhooks.readState(store)
        expect(state.deadLetters).toEqual([])
        expect(state.delivered).toBe(1)
      })
    )
    expect(receiver.received.map((x) => x.answered)).toEqual(["fail", "fail", "ok"])
  })

  it("createLatchkey({ webhooks }) runs the worker with the instance, until close()", async () => {
    const receiver = await startReceiver()
    const store = ConnectionStore.makeMemory()
    const latchkey = createLatchkey({
      providers: [eventWorkerProvider()],
      store,
      vault: { plaintext: true },
      webhooks: { url: receiver.url, secret: SECRET, pollIntervalMs: 10 }
    })
    const e = LifecycleEvents.make("linked", sampleRecord("c4"), { kind: "api_key", scopes: [] }, 1)
    await Effect.runPromise(store.appendEvents!([e]))
    for (let i = 0; i < 300 && receiver.received.length === 0; i++)
      await new Promise((r) => setTimeout(r, 10))
    await latchkey.close()
    expect(receiver.received.map((x) => [x.eventId, x.verified])).toEqual([[e.id, true]])
    // Stopped with the instance: later events wait for the next worker.
    await Effect.runPromise(store.appendEvents!([{ ...e, id: "later" }]))
    await new Promise((r) => setTimeout(r, 50))
    expect(receiver.received).toHaveLength(1)
  })

  it("verifyWebhook: accepts the signature, refuses a changed body, another secret, an old timestamp, a bad header", () => {
    const body = JSON.stringify({ id: "e1", type: "linked" })
    const now = 1_800_000_000_000
    const t = Math.floor(now / 1000)
    const header = Webhooks.sign(body, SECRET, t)
    expect(header).toMatch(/^t=\d+,v1=[0-9a-f]{64}$/)
    expect(Webhooks.verifyWebhook({ body, signature: header, secret: SECRET, now })).toBe(true)
    // Rotating secrets: any one of them.
    expect(
      Webhooks.verifyWebhook({ body, signature: header, secret: ["old", Redacted.make(SECRET)], now })
    ).toBe(true)
    expect(Webhooks.verifyWebhook({ body: `${body} `, signature: header, secret: SECRET, now })).toBe(false)
    expect(Webhooks.verifyWebhook({ body, signature: header, secret: "another", now })).toBe(false)
    expect(Webhooks.verifyWebhook({ body, signature: header, secret: SECRET, now: now + 301_000 })).toBe(
      false
    )
    expect(
      Webhooks.verifyWebhook({
        body,
        signature: header,
        secret: SECRET,
        now: now + 301_000,
        toleranceSeconds: 600
      })
    ).toBe(true)
    for (const bad of [
      undefined,
      "",
      "t=1",
      `v1=${"a".repeat(64)}`,
      header.replace("v1=", "v0="),
      `${header}x`
    ]) {
      expect(Webhooks.verifyWebhook({ body, signature: bad, secret: SECRET, now })).toBe(false)
    }
  })
})
