/**
 * The background loop: refreshes connections ahead of access-token expiry and rotates refresh tokens
 * before their own lifetime ends (HighLevel: one year), with bounded concurrency and a per-provider
 * rate limit. Each refresh goes through the TokenManager, so it shares the single flight and the
 * lease with on-demand callers: the Refresher never adds a second refresh.
 *
 * With a store that offers `claimDue` (every built-in one), instances split the due work: each
 * claims small batches (on the store's clock, for `claimTtlMs`), so N instances never chase the same
 * batch; a claimer that dies leaves its claims to lapse. Other stores fall back to `listDue`. A
 * connection whose lease another instance holds is not waited for: the sweep moves on (`skipped`).
 * A store that fails is never hidden: the sweep reports it (`storeErrors`, `storeError`), logs a
 * warning, counts it in the `latchkey_refresher_store_errors` metric and calls `onStoreError`.
 */
import { Clock, Context, Effect, FiberHandle, Layer, Metric, Semaphore } from "effect"
import { LatchkeyConfig } from "./Config.ts"
import type { ConnectionRecord } from "./Connection.ts"
import { ConnectionStore } from "./ConnectionStore.ts"
import type { StoreError } from "./Errors.ts"
import { jitterOf, localBudget, paceWindowMs } from "./internal/pace.ts"
import { refreshSpan } from "./internal/telemetry.ts"
import { type RequestPace, TokenManager } from "./TokenManager.ts"

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
  /**
   * How late a request may leave after its rate slot with the rate still holding in every second
   * (default 50 ms). The slots are spaced `(1000 + rateJitterMs) / rate` ms apart: a request leaves
   * when its wait ends, and timers, a busy event loop, its journal write or the budget's own answer
   * can make it a few milliseconds late, which would otherwise put one request more than the rate
   * into some second (the one before it left late, this one on time). A request that would leave
   * more than `rateJitterMs` late takes the next slot (at most twice, and not when the budget's own
   * answer takes longer than that). 0 spaces the slots exactly `1000 / rate` apart; anything but a
   * finite number ≥ 0 counts as the default.
   */
  readonly rateJitterMs?: number | undefined
  /**
   * How long a claimed connection stays this instance's before another may claim it, on the store's
   * clock (default 15 s; stores with `claimDue`). Claims are taken a few at a time (twice the
   * concurrency), so this only needs to cover a few refreshes; a crashed instance's work is picked
   * up by the others after it.
   */
  readonly claimTtlMs?: number | undefined
  /** Called with every store failure the loop meets (besides the log line and the metric). */
  readonly onStoreError?: ((error: StoreError) => void) | undefined
}

export interface SweepReport {
  readonly due: number
  readonly refreshed: number
  readonly failed: number
  /**
   * Due connections left to the instance that held their refresh lease, not waited for (present only
   * when there were some): that instance refreshes them, and a later sweep finds any still due.
   */
  readonly skipped?: number | undefined
  /** Store failures met by this sweep (present only when there were some). */
  readonly storeErrors?: number | undefined
  /** The first of them. */
  readonly storeError?: StoreError | undefined
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

/** Store failures met by the background Refresher (claiming, listing, or inside a refresh). */
export const storeErrorsMetric = Metric.counter("latchkey_refresher_store_errors", {
  description: "Store failures met by the background Refresher",
  incremental: true
})

/** Rate slots given up because the request would have left too late after them (`rateJitterMs`). */
export const lateSlotsMetric = Metric.counter("latchkey_refresher_late_slots", {
  description:
    "Rate slots the Refresher took again because its request would have left more than rateJitterMs late",
  incremental: true
})

const isStoreError = (e: unknown): e is StoreError =>
  typeof e === "object" && e !== null && (e as { _tag?: unknown })._tag === "StoreError"

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
        const jitterMs = jitterOf(options.rateJitterMs)
        /** Per-process budgets: for stores without `takeRateBudget`, or while the store's fails. */
        const local = localBudget()
        const retaken = Metric.update(lateSlotsMetric, 1)

        /**
         * The per-provider rate as the pace of a refresh's requests: its slots are shared by every
         * instance on the store when it offers `takeRateBudget` (the budget `refresh:<provider>`),
         * else per process; a failing budget falls back to this process's own slots (and is
         * reported). `perSecond` slots per second and the jitter allowed (`rateJitterMs`): a request
         * that leaves up to `jitterMs` after its slot still keeps every second within the rate (see
         * `internal/pace.ts`). None for an unlimited rate.
         */
        const paceOf = (
          providerId: string,
          onStoreError: (e: StoreError) => Effect.Effect<void>
        ): RequestPace | undefined => {
          const perSecond = options.providerRates?.[providerId] ?? options.ratePerSecond ?? 10
          if (!Number.isFinite(perSecond)) return undefined
          const key = `refresh:${providerId}`
          const windowMs = paceWindowMs(1_000, jitterMs)
          const shared = store.takeRateBudget
          return {
            reserve: () =>
              shared === undefined
                ? local(key, perSecond, windowMs)
                : shared(key, perSecond, windowMs).pipe(
                    Effect.catch((e) => Effect.andThen(onStoreError(e), local(key, perSecond, windowMs)))
                  ),
            jitterMs,
            onRetaken: retaken
          }
        }

        const claimTtlMs = options.claimTtlMs ?? 15_000
        const holder = `${(yield* LatchkeyConfig).holderId}:refresher`

        const sweep: Effect.Effect<SweepReport> = Effect.gen(function* () {
          const now = yield* Clock.currentTimeMillis
          let due = 0
          let refreshed = 0
          let failed = 0
          let skipped = 0
          let storeErrors = 0
          let storeError: StoreError | undefined
          const reportStoreError = (what: string, error: StoreError) =>
            Effect.gen(function* () {
              storeErrors++
              storeError ??= error
              yield* Metric.update(storeErrorsMetric, 1)
              yield* Effect.logWarning(`Refresher: ${what}: ${error.message}`)
              if (options.onStoreError !== undefined) {
                try {
                  options.onStoreError(error)
                } catch {
                  // the app's hook never breaks the loop
                }
              }
            })

          const refreshOne = (record: ConnectionRecord) => {
            let held = false
            return refreshSpan(
              "refresher",
              record.id,
              record.providerId,
              // The claimed (or listed) record stands in for the re-read where it is safe. The
              // provider's rate slot is taken for each request the refresh sends: the first once the
              // lease is won (a refresh waiting for another holder's lease takes none meanwhile),
              // waited for up to its journal write, and left at; each retry of a refused request
              // takes its own.
              tokens.refreshIfDue(record.id, record, {
                pace: paceOf(record.providerId, (e) =>
                  reportStoreError("taking the provider's rate budget", e)
                ),
                // Another instance is refreshing it (it held the lease before this claim was
                // taken, or there are no claims): move on rather than wait out its refresh.
                onLeaseHeld: () => {
                  held = true
                }
              })
            ).pipe(
              Effect.tap(() =>
                Effect.sync(() => {
                  if (held) skipped++
                  else refreshed++
                })
              ),
              // Provider failures are already recorded on the connection and published as events;
              // a store failure is reported here.
              Effect.catch((e) =>
                Effect.andThen(
                  Effect.sync(() => {
                    failed++
                  }),
                  isStoreError(e) ? reportStoreError(`refreshing ${record.id}`, e) : Effect.void
                )
              )
            )
          }

          const claimDue = store.claimDue
          if (claimDue === undefined) {
            const listed = yield* store.listDue(now, batchSize).pipe(Effect.result)
            if (listed._tag === "Failure") yield* reportStoreError("listing due connections", listed.failure)
            const batch = listed._tag === "Success" ? listed.success : []
            due = batch.length
            yield* Effect.forEach(batch, refreshOne, { concurrency, discard: true })
          } else {
            // Claimed batches: workers take from a local queue, refilled a few at a time by claims.
            const queue: Array<ConnectionRecord> = []
            // A refresh that failed may leave its connection due (and its claim ended by the write):
            // it is not tried twice in one sweep.
            const seen = new Set<string>()
            let exhausted = false
            const chunk = Math.max(1, Math.min(batchSize, concurrency * 2))
            const lock = yield* Semaphore.make(1)
            const refill = lock.withPermits(1)(
              Effect.gen(function* () {
                if (queue.length > 0 || exhausted) return
                const want = Math.min(chunk, batchSize - due)
                if (want <= 0) {
                  exhausted = true
                  return
                }
                const claimed = yield* claimDue(now, want, holder, claimTtlMs).pipe(Effect.result)
                if (claimed._tag === "Failure") {
                  exhausted = true
                  return yield* reportStoreError("claiming due connections", claimed.failure)
                }
                due += claimed.success.length
                for (const record of claimed.success) {
                  if (seen.has(record.id)) continue
                  seen.add(record.id)
                  queue.push(record)
                }
                if (claimed.success.length < want) exhausted = true
              })
            )
            const worker = Effect.gen(function* () {
              for (;;) {
                const record = queue.shift()
                if (record !== undefined) {
                  yield* refreshOne(record)
                  continue
                }
                if (exhausted) return
                yield* refill
              }
            })
            yield* Effect.all(
              Array.from({ length: Math.max(1, concurrency) }, () => worker),
              {
                concurrency: "unbounded",
                discard: true
              }
            )
          }
          yield* Effect.annotateCurrentSpan({
            "latchkey.sweep.due": due,
            "latchkey.sweep.refreshed": refreshed,
            "latchkey.sweep.failed": failed,
            "latchkey.sweep.skipped": skipped,
            "latchkey.sweep.store_errors": storeErrors
          })
          const report: SweepReport = { due, refreshed, failed, ...(skipped > 0 ? { skipped } : {}) }
          return storeErrors === 0 ? report : { ...report, storeErrors, storeError }
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
