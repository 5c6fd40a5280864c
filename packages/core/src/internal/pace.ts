/**
 * Waiting for a slot of a rate budget (`ConnectionStore.takeRateBudget`, or a process's own) so that
 * every window holds at most the budget's limit of departures, not just on average.
 *
 * A budget hands out slots `windowMs / limit` apart and says how long to wait for each. A request
 * leaves when its wait ends, but it can leave late: the answer giving the slot comes back after the
 * store's round trip, and a busy event loop or a descheduled process wakes late. With slots exactly
 * `window / limit` apart, one request leaving late next to a later one leaving on time puts
 * `limit + 1` requests into some window. So budgets are asked for over `window + jitterMs`
 * (`paceWindowMs`), and a request that would leave more than `jitterMs` after its slot, counted from
 * before the slot was asked for (the store's part of the round trip counts as late), takes the next
 * slot instead, at most `retakes` times. Every request then leaves within `[slot, slot + jitterMs]`
 * on the budget's clock, and slots `limit` apart are `window + jitterMs` apart, so their departures
 * are at least `window` apart.
 */
import { Clock, Effect } from "effect"

/** The jitter allowed when none is configured (ms). */
export const DEFAULT_JITTER_MS = 50

/** A configured jitter allowance: a finite number ≥ 0, else the default. */
export const jitterOf = (configured: number | undefined): number =>
  configured !== undefined && Number.isFinite(configured) && configured >= 0 ? configured : DEFAULT_JITTER_MS

/** The window to ask a budget for: the limit's window and the jitter allowed. */
export const paceWindowMs = (windowMs: number, jitterMs: number): number => windowMs + jitterMs

/**
 * Reserve a slot (`reserve` succeeds with the wait before it, ms) and wait for it; take the next
 * one when this one would be left more than `jitterMs` late. Succeeds with the slots given up.
 */
export const awaitPacedSlot = <E, R>(
  reserve: Effect.Effect<number, E, R>,
  jitterMs: number,
  retakes = 2
): Effect.Effect<number, E, R> =>
  Effect.gen(function* () {
    for (let attempt = 0; ; attempt++) {
      // Elapsed time on the monotonic clock, as the sleep's: a step of the wall clock (NTP) cannot
      // make a request look early or late.
      const asked = yield* Clock.monotonicTimeNanos
      const wait = yield* reserve
      if (wait > 0) yield* Effect.sleep(wait)
      const late = Number((yield* Clock.monotonicTimeNanos) - asked) / 1e6 - wait
      if (late <= jitterMs || attempt >= retakes) return attempt
    }
  })
