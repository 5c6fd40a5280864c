/**
 * The demo's refresh fleet: several worker processes (`worker.ts`), each its own Latchkey instance
 * on the same SQLite file, doing the background refresh work side by side as a real deployment's
 * instances would. The web process forks them, relays what their engines report (`refreshed`,
 * `needs_reauth`…, tagged with the worker), and restarts one that exits, as a process manager would.
 *
 * `crash()` sends SIGKILL to a worker while it has a refresh in flight (found in the refresh journal
 * of the store: `holder` is the worker's holder id); `restart()` sends SIGTERM, and the worker drains
 * (`latchkey.close()`) before it exits. What follows is whatever the engines do about it: nothing here
 * touches a connection.
 */
import { type ChildProcess, fork } from "node:child_process"
import type { Connection, ConnectionStore, Events } from "@latchkey/core"
import { Effect } from "effect"
import type { WorkerInit, WorkerMessage, WorkerRequest } from "./worker.ts"

type Record_ = Connection.ConnectionRecord

export type WorkerState = "starting" | "running" | "draining" | "stopped"

export interface WorkerView {
  /** `worker-1`… (the slot keeps its name across restarts). */
  readonly name: string
  readonly pid: number | undefined
  /** The holder id its engine writes into refresh journals: `worker-1#<pid>`. */
  readonly holderId: string | undefined
  readonly state: WorkerState
  /** Refreshes this slot's processes completed since the demo started. */
  readonly refreshes: number
  /** Processes this slot has had (1 + restarts). */
  readonly generation: number
  /** How the previous process of this slot ended. */
  readonly lastExit: string | undefined
}

/** A refresh in flight (or in doubt): an unfinished journal in a connection row. */
export interface InFlight {
  readonly connectionId: string
  readonly ownerId: string
  readonly providerId: string
  readonly label: string
  readonly holder: string
  readonly startedAt: number
  readonly suspectedAt: number | undefined
  readonly resent: boolean
}

export type FleetEvent =
  | { readonly type: "event"; readonly worker: string; readonly event: Events.LatchkeyEvent }
  | { readonly type: "workers"; readonly text: string; readonly kind: "info" | "error" | "success" }

export interface CrashReport {
  readonly worker: string
  readonly pid: number
  /** The refreshes it had in flight when it was killed (from the journal). */
  readonly inFlight: ReadonlyArray<InFlight>
}

export interface RestartReport {
  readonly worker: string
  readonly pid: number
  readonly inFlight: ReadonlyArray<InFlight>
  /** How long its `latchkey.close()` took. */
  readonly drainMs: number | undefined
  readonly exitCode: number | null
}

export interface FleetOptions {
  readonly size: number
  readonly init: Omit<WorkerInit, "type" | "name">
  /** Every connection row (to read refresh journals). */
  readonly rows: () => Promise<ReadonlyArray<Record_>>
  readonly log?: ((line: string) => void) | undefined
}

export interface Fleet {
  readonly size: number
  workers(): ReadonlyArray<WorkerView>
  /** The refreshes in flight now, by any process, from the journals in the store. */
  inFlight(): Promise<ReadonlyArray<InFlight>>
  /** The worker a holder id belongs to (`worker-2`), or undefined for another process. */
  workerOf(holderId: string): string | undefined
  on(listener: (event: FleetEvent) => void): () => void
  /** Each running worker's metrics in the Prometheus text format (`worker-2#1234`), asked over IPC. */
  metrics(timeoutMs?: number): Promise<ReadonlyArray<{ readonly process: string; readonly text: string }>>
  /** Wait until every worker runs. */
  ready(): Promise<void>
  /** SIGKILL a worker `settleMs` (default 400) into one of its refreshes (waiting up to `waitForFlightMs` for one). */
  crash(options?: { readonly waitForFlightMs?: number; readonly settleMs?: number }): Promise<CrashReport>
  /** SIGTERM a worker while it refreshes (waiting up to `waitForFlightMs` for one); it drains, then exits. */
  restart(options?: { readonly waitForFlightMs?: number; readonly settleMs?: number }): Promise<RestartReport>
  close(): Promise<void>
}

interface Slot {
  readonly name: string
  child: ChildProcess | undefined
  pid: number | undefined
  holderId: string | undefined
  state: WorkerState
  refreshes: number
  generation: number
  lastExit: string | undefined
  ready: Promise<void>
  drained: number | undefined
  /** The slot is being stopped on purpose (restart, close): do not report it as a crash. */
  expected: "restart" | "crash" | "close" | undefined
}

const WORKER = new URL("./worker.ts", import.meta.url)
const RESPAWN_MS = 400

export const startFleet = (options: FleetOptions): Fleet => {
  const log = options.log ?? (() => {})
  const listeners = new Set<(event: FleetEvent) => void>()
  const emit = (event: FleetEvent) => {
    for (const l of listeners) {
      try {
        l(event)
      } catch {
        // a listener's failure is its own
      }
    }
  }
  let closing = false
  const holders = new Map<string, string>()
  let nextRequest = 1
  const answers = new Map<number, (text: string) => void>()

  const spawn = (slot: Slot) => {
    slot.generation++
    slot.state = "starting"
    slot.drained = undefined
    slot.expected = undefined
    const child = fork(WORKER, [], {
      stdio: ["ignore", "inherit", "inherit", "ipc"],
      serialization: "advanced"
    })
    slot.child = child
    slot.pid = child.pid
    slot.holderId = undefined
    let resolveReady: () => void = () => {}
    slot.ready = new Promise<void>((resolve) => {
      resolveReady = resolve
    })
    child.on("message", (message: WorkerMessage) => {
      if (message.type === "ready") {
        slot.holderId = message.holderId
        holders.set(message.holderId, slot.name)
        slot.state = "running"
        resolveReady()
        emit({ type: "workers", kind: "info", text: `${slot.name} (pid ${child.pid}) is refreshing` })
      } else if (message.type === "event") {
        const event = message.event as Events.LatchkeyEvent
        if (event.type === "refreshed") slot.refreshes++
        emit({ type: "event", worker: slot.name, event })
      } else if (message.type === "drained") {
        slot.drained = message.ms
      } else if (message.type === "metrics") {
        answers.get(message.id)?.(message.text)
      }
    })
    child.on("exit", (code, signal) => {
      if (slot.child !== child) return
      slot.child = undefined
      slot.state = "stopped"
      resolveReady()
      const how = signal ? `killed by ${signal}` : `exited with code ${code}`
      slot.lastExit = `pid ${child.pid} ${how}${slot.drained !== undefined ? ` after draining for ${slot.drained} ms` : ""}`
      if (slot.expected === undefined && !closing) {
        log(`${slot.name} (pid ${child.pid}) ${how} unexpectedly`)
        emit({
          type: "workers",
          kind: "error",
          text: `${slot.name} (pid ${child.pid}) ${how}; restarting it`
        })
      }
      if (!closing) setTimeout(() => !closing && slot.child === undefined && spawn(slot), RESPAWN_MS)
    })
    child.send({ type: "init", name: slot.name, ...options.init } satisfies WorkerInit)
  }

  const slots: Array<Slot> = Array.from({ length: options.size }, (_, i) => ({
    name: `worker-${i + 1}`,
    child: undefined,
    pid: undefined,
    holderId: undefined,
    state: "stopped" as WorkerState,
    refreshes: 0,
    generation: 0,
    lastExit: undefined,
    ready: Promise.resolve(),
    drained: undefined,
    expected: undefined
  }))
  for (const slot of slots) spawn(slot)

  const inFlight = async (): Promise<ReadonlyArray<InFlight>> =>
    (await options.rows())
      .filter((r) => r.journal !== null && r.journal !== undefined && r.status === "active")
      .map((r) => ({
        connectionId: r.id,
        ownerId: r.ownerId,
        providerId: r.providerId,
        label: r.label,
        holder: r.journal!.holder,
        startedAt: r.journal!.startedAt,
        suspectedAt: r.journal!.suspectedAt,
        resent: r.journal!.resend !== undefined
      }))

  /**
   * A running worker with a refresh in flight (waiting for one up to `waitMs`), else any running one.
   * A refresh is taken once its journal has been there `settleMs` (the refresh token is on its way to
   * the provider, not just about to leave), and is still there.
   */
  const pick = async (
    waitMs: number,
    settleMs: number
  ): Promise<{ slot: Slot; flights: ReadonlyArray<InFlight> }> => {
    const deadline = Date.now() + waitMs
    const seen = new Map<string, number>()
    for (;;) {
      const running = slots.filter((s) => s.state === "running" && s.child !== undefined)
      const flights = await inFlight()
      const now = Date.now()
      for (const f of flights) {
        const key = `${f.connectionId}/${f.holder}/${f.startedAt}`
        if (!seen.has(key)) seen.set(key, now)
      }
      for (const slot of running) {
        const mine = flights.filter(
          (f) =>
            f.holder === slot.holderId &&
            f.suspectedAt === undefined &&
            now - seen.get(`${f.connectionId}/${f.holder}/${f.startedAt}`)! >= settleMs
        )
        if (mine.length > 0) return { slot, flights: mine }
      }
      if (Date.now() >= deadline && running.length > 0) return { slot: running[0]!, flights: [] }
      if (Date.now() >= deadline + 10_000) throw new Error("no worker is running")
      await new Promise((r) => setTimeout(r, 20))
    }
  }

  const exited = (child: ChildProcess) =>
    new Promise<number | null>((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve(child.exitCode)
      child.once("exit", (code) => resolve(code))
    })

  return {
    size: options.size,
    workers: () =>
      slots.map((s) => ({
        name: s.name,
        pid: s.pid,
        holderId: s.holderId,
        state: s.state,
        refreshes: s.refreshes,
        generation: s.generation,
        lastExit: s.lastExit
      })),
    inFlight,
    workerOf: (holderId) => holders.get(holderId),
    metrics: async (timeoutMs = 1_000) => {
      const asked = slots.flatMap((slot) => {
        const child = slot.child
        if (slot.state !== "running" || child === undefined || !child.connected) return []
        const id = nextRequest++
        const answer = new Promise<string | undefined>((resolve) => {
          const timer = setTimeout(() => {
            answers.delete(id)
            resolve(undefined)
          }, timeoutMs)
          answers.set(id, (text) => {
            clearTimeout(timer)
            answers.delete(id)
            resolve(text)
          })
        })
        try {
          child.send({ type: "metrics", id } satisfies WorkerRequest)
        } catch {
          answers.get(id)?.("")
        }
        return [answer.then((text) => (text ? [{ process: `${slot.name}#${child.pid}`, text }] : []))]
      })
      return (await Promise.all(asked)).flat()
    },
    on: (listener) => {
      listeners.add(listener)
      return () => listeners.delete(listener)
    },
    ready: async () => {
      await Promise.all(slots.map((s) => s.ready))
    },
    crash: async (o = {}) => {
      const picked = await pick(o.waitForFlightMs ?? 8_000, o.settleMs ?? 400)
      const slot = picked.slot
      const child = slot.child!
      const holderId = slot.holderId
      slot.expected = "crash"
      child.kill("SIGKILL")
      const pid = child.pid!
      await exited(child)
      // What it had in flight when it died: its unfinished journals, read once it is gone (a refresh
      // it started just before the signal counts; one that finished its write just before does not).
      const flights = (await inFlight().catch(() => picked.flights)).filter((f) => f.holder === holderId)
      emit({
        type: "workers",
        kind: "error",
        text:
          `${slot.name} (pid ${pid}) killed with SIGKILL` +
          (flights.length > 0
            ? ` while refreshing ${flights.map((f) => f.label).join(", ")}`
            : " (no refresh was in flight)")
      })
      log(`${slot.name} (pid ${pid}) killed with SIGKILL, ${flights.length} refresh(es) in flight`)
      return { worker: slot.name, pid, inFlight: flights }
    },
    restart: async (o = {}) => {
      const { slot, flights } = await pick(o.waitForFlightMs ?? 8_000, o.settleMs ?? 200)
      const child = slot.child!
      slot.expected = "restart"
      slot.state = "draining"
      const pid = child.pid!
      emit({
        type: "workers",
        kind: "info",
        text:
          `${slot.name} (pid ${pid}) got SIGTERM and drains` +
          (flights.length > 0 ? ` (refreshing ${flights.map((f) => f.label).join(", ")})` : "")
      })
      child.kill("SIGTERM")
      const exitCode = await exited(child)
      emit({
        type: "workers",
        kind: exitCode === 0 ? "success" : "error",
        text: `${slot.name} (pid ${pid}) ${exitCode === 0 ? `drained in ${slot.drained ?? "?"} ms and exited` : `exited with code ${exitCode}`}`
      })
      return { worker: slot.name, pid, inFlight: flights, drainMs: slot.drained, exitCode }
    },
    close: async () => {
      closing = true
      await Promise.all(
        slots.map(async (slot) => {
          const child = slot.child
          if (child === undefined) return
          slot.expected = "close"
          child.kill("SIGTERM")
          const timer = setTimeout(() => child.kill("SIGKILL"), 25_000)
          await exited(child)
          clearTimeout(timer)
        })
      )
    }
  }
}

/** Every connection row of a store (for the journals). */
export const allRows = (
  store: ConnectionStore.ConnectionStoreShape,
  owners: ReadonlyArray<string>
): Promise<ReadonlyArray<Record_>> =>
  Effect.runPromise(
    Effect.forEach(owners, (owner) => store.listByOwner(owner), { concurrency: 1 }).pipe(
      Effect.map((lists) => lists.flat())
    )
  )
