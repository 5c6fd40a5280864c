/**
 * The background loop: refreshes connections ahead of access-token expiry and rotates refresh tokens
 * before their own lifetime ends (HighLevel: one year), with bounded concurrency and a per-provider
 * rate limit. Each refresh goes through the TokenManager, so it shares the single flight and the
 * lease with on-demand callers: the Refresher never adds a second refresh.
 */
import { Clock, Context, Effect, FiberHandle, Layer } from "effect"
import { ConnectionStore } from "./ConnectionStore.ts"
import { refreshSpan } from "./internal/telemetry.ts"
import { TokenManager } from "./TokenManager.ts"

export interface RefresherOptions {
  /** Pause between sweeps when nothing is due (default 30 s). */
  readonly intervalMs?: number | undefined
  /** Connections fetched per sweep (default 500). */
  readonly batchSize?: number | undefined
  /** Refreshes running at once (default 8). */
  readonly concurrency?: number | undefined
  /** Refreshes per second per provider (default 10); `Infinity` for none. Per-provider overrides. */
  readonly ratePerSecond?: number | undefined
  readonly providerRates?: Readonly<Record<string, number>> | undefined
}

export interface SweepReport {
  readonly due: number
  readonly refreshed: number
  readonly failed: number
}

export interface RefresherShape {
  /** One sweep: refresh everything due now. */
  readonly sweep: Effect.Effect<SweepReport>
  /** Sweep forever (until interrupted). */
  readonly run: Effect.Effect<never>
  /** Start the loop in the background (idempotent). */
  readonly start: Effect.Effect<void>
  /** Stop the loop; a refresh under way completes first (it is never cut between answer and write). */
  readonly stop: Effect.Effect<void>
  readonly isRunning: Effect.Effect<boolean>
}

export class Refresher extends Context.Service<Refresher, RefresherShape>()("@latchkey/core/Refresher") {
  static readonly layer = (options: RefresherOptions = {}) =>
    Layer.effect(
      Refresher,
      Effect.gen(function* () {
        const store = yield* ConnectionStore
        const tokens = yield* TokenManager
        const intervalMs = options.intervalMs ?? 30_000
        const batchSize = options.batchSize ?? 500
        const concurrency = options.concurrency ?? 8
        const nextSlot = new Map<string, number>()

        /** Token-bucket-of-one per provider: each refresh takes the next slot 1/rate seconds apart. */
        const takeSlot = (providerId: string) =>
          Effect.gen(function* () {
            const rate = options.providerRates?.[providerId] ?? options.ratePerSecond ?? 10
            if (!Number.isFinite(rate)) return
            const now = yield* Clock.currentTimeMillis
            const slot = Math.max(now, nextSlot.get(providerId) ?? 0)
            nextSlot.set(providerId, slot + 1000 / rate)
            if (slot > now) yield* Effect.sleep(slot - now)
          })

        const sweep: Effect.Effect<SweepReport> = Effect.gen(function* () {
          const now = yield* Clock.currentTimeMillis
          const due = yield* store.listDue(now, batchSize).pipe(Effect.orElseSucceed(() => []))
          let refreshed = 0
          let failed = 0
          yield* Effect.forEach(
            due,
            (record) =>
              takeSlot(record.providerId).pipe(
                Effect.andThen(
                  refreshSpan("refresher", record.id, record.providerId, tokens.refreshIfDue(record.id))
                ),
                Effect.tap(() =>
                  Effect.sync(() => {
                    refreshed++
                  })
                ),
                // Failures are already recorded on the connection and published as events.
                Effect.catch(() =>
                  Effect.sync(() => {
                    failed++
                  })
                )
              ),
            { concurrency, discard: true }
          )
          yield* Effect.annotateCurrentSpan({
            "latchkey.sweep.due": due.length,
            "latchkey.sweep.refreshed": refreshed,
            "latchkey.sweep.failed": failed
          })
          return { due: due.length, refreshed, failed }
        }).pipe(Effect.withSpan("Refresher.sweep"))

        const run: Effect.Effect<never> = Effect.gen(function* () {
          for (;;) {
            const report = yield* sweep
            // A full batch means more may be due right away; otherwise wait for the next interval.
            if (report.due < batchSize || report.refreshed + report.failed === 0)
              yield* Effect.sleep(intervalMs)
          }
        })

        const handle = yield* FiberHandle.make<never, never>()
        const start = FiberHandle.run(handle, run, { onlyIfMissing: true }).pipe(Effect.asVoid)
        const stop = FiberHandle.clear(handle)
        const isRunning = Effect.sync(() => handle.state._tag === "Open" && handle.state.fiber !== undefined)
        return Refresher.of({ sweep, run, start, stop, isRunning })
      })
    )
}
