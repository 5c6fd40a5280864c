/**
 * The lifecycle event log of a store (part of `storeConformance`): events appended in the same
 * atomic write as the change they go with, nothing appended by a failed write, the log read in
 * order from a cursor, retention, and the consumers' state.
 */
import { spawn } from "node:child_process"
import { createInterface } from "node:readline"
import { fileURLToPath } from "node:url"
import { Effect } from "effect"
import { describe, expect, it } from "vitest"
import type { ConnectionRecord } from "../Connection.ts"
import type { ConnectionStoreShape } from "../ConnectionStore.ts"
import * as LifecycleEvents from "../LifecycleEvents.ts"
import type { EventWorkerSettings } from "./eventLogWorker.ts"
import type { OpenedStore, StoreConformanceOptions } from "./storeKit.ts"

const workerFile = fileURLToPath(
  new URL(`./eventLogWorker${import.meta.url.endsWith(".ts") ? ".ts" : ".js"}`, import.meta.url)
)

interface EventWorker {
  readonly lines: Array<Record<string, unknown>>
  readonly ready: Promise<void>
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  /** Resolves once a printed line satisfies `f`. */
  readonly waitFor: (f: (line: Record<string, unknown>) => boolean, what: string) => Promise<void>
  readonly kill: () => void
}

const startEventWorker = (settings: EventWorkerSettings): EventWorker => {
  const child = spawn(process.execPath, [workerFile], {
    env: { ...process.env, LK_EVENT_WORKER: JSON.stringify(settings) },
    stdio: ["ignore", "pipe", "pipe"]
  })
  let stderr = ""
  child.stderr.on("data", (d) => {
    stderr += d
  })
  const lines: Array<Record<string, unknown>> = []
  const waiters = new Set<() => void>()
  let readyResolve: () => void = () => {}
  let readyReject: (e: Error) => void = () => {}
  const ready = new Promise<void>((resolve, reject) => {
    readyResolve = resolve
    readyReject = reject
  })
  ready.catch(() => {})
  createInterface({ input: child.stdout }).on("line", (line) => {
    if (line === "ready") readyResolve()
    else if (line.startsWith("{")) {
      lines.push(JSON.parse(line) as Record<string, unknown>)
      for (const w of waiters) w()
    }
  })
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on("exit", (code, signal) => {
      readyReject(
        new Error(`event worker (${settings.role}) exited (${code ?? signal}): ${stderr.slice(-800)}`)
      )
      for (const w of waiters) w()
      resolve({ code, signal })
    })
  )
  const waitFor = (f: (line: Record<string, unknown>) => boolean, what: string) =>
    new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        waiters.delete(check)
        reject(
          new Error(`event worker (${settings.role}): no ${what} within 20 s; stderr: ${stderr.slice(-800)}`)
        )
      }, 20_000)
      const check = () => {
        if (lines.some(f)) {
          clearTimeout(timer)
          waiters.delete(check)
          resolve()
        }
      }
      waiters.add(check)
      check()
    })
  return { lines, ready, exited, waitFor, kill: () => child.kill("SIGKILL") }
}

const run = <A, E>(effect: Effect.Effect<A, E>) => Effect.runPromise(effect)

type EventLogStore = ConnectionStoreShape &
  Required<
    Pick<
      ConnectionStoreShape,
      "appendEvents" | "readEvents" | "pruneEvents" | "getConsumerState" | "setConsumerState"
    >
  >

const withEventStore = async (
  options: StoreConformanceOptions,
  f: (store: EventLogStore, opened: OpenedStore) => Promise<void>
) => {
  const opened = await options.open()
  try {
    const store = opened.store
    if (
      store.appendEvents === undefined ||
      store.readEvents === undefined ||
      store.pruneEvents === undefined ||
      store.getConsumerState === undefined ||
      store.setConsumerState === undefined
    ) {
      throw new Error(`${options.name} has no lifecycle event log (appendEvents, readEvents, pruneEvents, …)`)
    }
    await f(store as EventLogStore, opened)
  } finally {
    await opened.close()
  }
}

/** Every event of the log, read a page at a time. */
export const readAllEvents = async (store: EventLogStore, after = 0, pageSize = 7) => {
  const all: Array<LifecycleEvents.StoredLifecycleEvent> = []
  let cursor = after
  for (;;) {
    const page = await run(store.readEvents(cursor, pageSize))
    all.push(...page.events)
    if (page.events.length === 0) {
      expect(page.next).toBe(cursor)
      return all
    }
    expect(page.next).toBe(page.events.at(-1)!.seq)
    cursor = page.next
  }
}

const withoutSeq = (events: ReadonlyArray<LifecycleEvents.StoredLifecycleEvent>) =>
  events.map(({ seq: _, ...event }) => event)

export const storeEvents = (
  options: StoreConformanceOptions,
  record: (id: string, patch?: Partial<ConnectionRecord>) => ConnectionRecord
): void => {
  const ev = <K extends LifecycleEvents.LifecycleEventType>(
    type: K,
    r: ConnectionRecord,
    data: LifecycleEvents.LifecycleEventData[K],
    at: number
  ) => LifecycleEvents.make(type, r, data, at)

  describe("the lifecycle event log", () => {
    it("appends events in the same write as the change, and nothing when the write fails", async () => {
      await withEventStore(options, async (store) => {
        const a = record("a")
        const linked = ev("linked", a, { kind: "oauth", scopes: ["read"] }, 10)
        await run(store.insert(a, [linked]))
        // A duplicate insert (same id, or same account) appends nothing.
        const dupId = ev("linked", a, { kind: "oauth", scopes: [] }, 11)
        expect(
          await run(Effect.flip(store.insert(record("a", { accountId: "other" }), [dupId])))
        ).toMatchObject({ reason: "conflict" })
        expect(
          await run(Effect.flip(store.insert(record("b", { accountId: "acct-a" }), [dupId])))
        ).toMatchObject({ reason: "conflict" })
        // A compare-and-set that wins appends its events; one that loses (stale version, a skipped
        // version, a missing connection) appends nothing.
        const refreshed = ev("refreshed", a, { expiresAt: 500, recovered: false }, 20)
        const recovered = ev("recovered", a, { failures: 2, degradedMs: 60_000 }, 20)
        await run(store.update(record("a", { version: 2 }), 1, [refreshed, recovered]))
        const lost = ev("needs_reauth", a, { reason: "invalid_grant", code: "invalid_grant" }, 21)
        expect(await run(Effect.flip(store.update(record("a", { version: 2 }), 1, [lost])))).toMatchObject({
          reason: "conflict"
        })
        expect(await run(Effect.flip(store.update(record("a", { version: 4 }), 2, [lost])))).toMatchObject({
          reason: "conflict"
        })
        expect(await run(Effect.flip(store.update(record("zz", { version: 2 }), 1, [lost])))).toMatchObject({
          reason: "conflict"
        })
        // A remove appends only when it removed something.
        const unlinked = ev("unlinked", a, { revokedAtProvider: true }, 30)
        expect(await run(store.remove("a", [unlinked]))).toBe(true)
        expect(await run(store.remove("a", [ev("unlinked", a, { revokedAtProvider: false }, 31)]))).toBe(
          false
        )
        // Writes without events still work, and append nothing.
        await run(store.insert(record("c")))
        await run(store.update(record("c", { version: 2 }), 1))
        await run(store.update(record("c", { version: 3 }), 2, []))
        const all = await readAllEvents(store)
        expect(withoutSeq(all)).toEqual([linked, refreshed, recovered, unlinked])
        for (let i = 1; i < all.length; i++) expect(all[i]!.seq).toBeGreaterThan(all[i - 1]!.seq)
      })
    })

    it("reads the log in order from any cursor, every event exactly as written", async () => {
      await withEventStore(options, async (store) => {
        const r = record("order", { profile: null })
        await run(store.insert(r))
        const written: Array<LifecycleEvents.LifecycleEvent> = []
        const samples: Array<LifecycleEvents.LifecycleEvent> = [
          ev("refresh_failed", r, { reason: "server_error", code: null, retryable: true }, 1_700_000_000_001),
          ev("degraded", r, { failures: 3, reason: "server_error", nextAttemptAt: 1_700_000_060_000 }, 2),
          ev("needs_reauth", r, { reason: "invalid_grant", code: "invalid_grant" }, 3),
          ev("refresh_interrupted", r, { holder: "4242-h", startedAt: 1_700_000_000_500 }, 4),
          ev("revoked", r, { reason: "revoked_at_provider" }, 5),
          ev("reconnected", r, { previousState: "needs_reauth", previousReason: "invalid_grant" }, 6),
          ev("linked", { ...r, ownerId: 'Ada \u00e9 \u{1F511} "q" \\' }, { kind: "api_key", scopes: [] }, 7)
        ]
        let version = 1
        for (let i = 0; i < 21; i++) {
          const event = samples[i % samples.length]!
          const copy = { ...event, id: `${event.id.slice(0, 30)}-${i}`, at: event.at + i }
          written.push(copy)
          // Alternate the three ways to append.
          if (i % 3 === 0) await run(store.appendEvents([copy]))
          else if (i % 3 === 1) {
            await run(store.update(record("order", { version: version + 1 }), version, [copy]))
            version++
          } else await run(store.appendEvents([copy]))
        }
        const all = await readAllEvents(store)
        expect(withoutSeq(all)).toEqual(written)
        // From a cursor in the middle: exactly the events after it.
        const middle = all[9]!.seq
        expect(withoutSeq(await readAllEvents(store, middle, 5))).toEqual(written.slice(10))
        expect((await run(store.readEvents(all.at(-1)!.seq, 10))).events).toEqual([])
        expect((await run(store.readEvents(0, 3))).events.map((e) => e.id)).toEqual(
          written.slice(0, 3).map((e) => e.id)
        )
      })
    })

    it("under concurrent writers: one event per winning write, every append kept once", async () => {
      await withEventStore(options, async (store) => {
        const r = record("race")
        await run(store.insert(r))
        const writers = Array.from({ length: 12 }, (_, i) =>
          Effect.result(
            store.update(record("race", { version: 2, label: `w${i}` }), 1, [
              ev("refreshed", r, { expiresAt: i, recovered: false }, 100 + i)
            ])
          )
        )
        const appenders = Array.from({ length: 12 }, (_, i) =>
          store.appendEvents([
            ev("refresh_failed", r, { reason: "network", code: null, retryable: true }, 200 + i),
            ev("degraded", r, { failures: i, reason: "network", nextAttemptAt: null }, 200 + i)
          ])
        )
        const results = await run(
          Effect.all([...writers, ...appenders.map((a) => Effect.result(a))], { concurrency: "unbounded" })
        )
        const won = results.slice(0, 12).filter((x) => x._tag === "Success").length
        expect(won).toBe(1)
        const all = await readAllEvents(store, 0, 50)
        const winner = (await run(store.get("race")))!
        const refreshes = all.filter((e) => e.type === "refreshed")
        expect(refreshes).toHaveLength(1)
        expect(refreshes[0]!.data).toEqual({ expiresAt: Number(winner.label.slice(1)), recovered: false })
        expect(all.filter((e) => e.type === "refresh_failed")).toHaveLength(12)
        expect(new Set(all.map((e) => e.seq)).size).toBe(all.length)
        // An appendEvents call's events stay together and in order.
        for (const [i, e] of all.entries()) {
          if (e.type === "refresh_failed") {
            expect(all[i + 1]).toMatchObject({ type: "degraded", at: e.at })
          }
        }
      })
    })

    it("prunes events older than the retention, and never reuses a seq", async () => {
      await withEventStore(options, async (store) => {
        const r = record("old")
        for (let i = 0; i < 10; i++) {
          await run(
            store.appendEvents([
              ev("refresh_failed", r, { reason: "x", code: null, retryable: true }, 1_000 + i)
            ])
          )
        }
        const before = await readAllEvents(store)
        expect(await run(store.pruneEvents(1_006))).toBe(6)
        const after = await readAllEvents(store)
        expect(after.map((e) => e.at)).toEqual([1_006, 1_007, 1_008, 1_009])
        expect(after.map((e) => e.seq)).toEqual(before.slice(6).map((e) => e.seq))
        // A reader whose cursor points into the pruned part continues with what is left.
        expect((await run(store.readEvents(before[2]!.seq, 2))).events.map((e) => e.at)).toEqual([
          1_006, 1_007
        ])
        expect(await run(store.pruneEvents(2_000))).toBe(4)
        expect(await readAllEvents(store)).toEqual([])
        await run(store.appendEvents([ev("revoked", r, { reason: "revoked_by_user" }, 3_000)]))
        const [fresh] = await readAllEvents(store)
        expect(fresh!.seq).toBeGreaterThan(before.at(-1)!.seq)
        expect(await run(store.pruneEvents(0))).toBe(0)
      })
    })

    const cross = options.crossProcess
    if (cross !== undefined) {
      const crash = async (role: "store-writer" | "engine-writer") => {
        await withEventStore(options, async (store, opened) => {
          const base = { opener: cross.opener, storeSettings: opened.settings }
          const target = record("crash")
          await run(store.insert(target))
          const subscriber = startEventWorker({ role: "subscriber", ...base })
          try {
            await subscriber.ready
            const writer = startEventWorker({ role, ...base, connectionId: target.id })
            // The writer kills itself (SIGKILL) right after its write: nothing of it runs later.
            const ended = await writer.exited
            expect(ended.signal).toBe("SIGKILL")
            const wrote = writer.lines.find((l) => "wrote" in l)?.wrote
            expect(typeof wrote).toBe("string")
            const events = () =>
              subscriber.lines.map((l) => l.event as LifecycleEvents.StoredLifecycleEvent | undefined)
            if (role === "store-writer") {
              await subscriber.waitFor((l) => (l.event as { id?: unknown })?.id === wrote, "event")
              expect(events().find((e) => e?.id === wrote)).toMatchObject({
                type: "needs_reauth",
                connectionId: target.id,
                data: { reason: "invalid_grant" }
              })
            } else {
              await subscriber.waitFor(
                (l) => (l.event as { type?: unknown })?.type === "revoked",
                "revoked event"
              )
              const types = events()
                .filter((e) => e?.connectionId === wrote)
                .map((e) => e!.type)
              expect(types).toEqual(["linked", "revoked"])
            }
            // What the other process saw is the log itself.
            const log = await readAllEvents(store)
            expect(log.map((e) => e.id)).toEqual(events().map((e) => e!.id))
          } finally {
            subscriber.kill()
            await subscriber.exited
          }
        })
      }

      it("a process SIGKILLed right after a state change: another process still receives its event", async () => {
        await crash("store-writer")
      }, 60_000)

      it("through the Latchkey API: a process linked, revoked and was SIGKILLed; another receives linked and revoked", async () => {
        await crash("engine-writer")
      }, 60_000)
    }

    it("keeps each consumer's state", async () => {
      await withEventStore(options, async (store) => {
        expect(await run(store.getConsumerState("webhooks"))).toBeUndefined()
        await run(store.setConsumerState("webhooks", JSON.stringify({ cursor: 3 })))
        await run(store.setConsumerState("other", "{}"))
        await run(store.setConsumerState("webhooks", JSON.stringify({ cursor: 7, dead: ["é"] })))
        expect(JSON.parse((await run(store.getConsumerState("webhooks")))!)).toEqual({
          cursor: 7,
          dead: ["é"]
        })
        expect(await run(store.getConsumerState("other"))).toBe("{}")
      })
    })
  })
}
