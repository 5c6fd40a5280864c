/**
 * Waiting for a turn of a rate budget (`ConnectionStore.takeRateBudget`, or a process's own
 * `localBudget`) so that a window holds at most the budget's limit of departures, not just on average.
 *
 * A budget hands out slots `windowMs / limit` apart and says how long to wait for each. A request
 * leaves when its wait ends, but it can leave late: the answer giving the slot comes back after the
 * store's round trip, and a busy event loop or a descheduled process wakes late. With slots exactly
 * `window / limit` apart, one request leaving late next to a later one leaving on time puts
 * `limit + 1` requests into some window. So budgets are asked for over `window + jitterMs`
 * (`paceWindowMs`), and a request that would leave more than `jitterMs` after its slot, counted on
 * the monotonic clock from before the slot was asked for (the store's part of the round trip counts
 * as late), takes the next slot instead (`retakes`). A request that leaves within `[slot, slot +
 * jitterMs]` on the budget's clock keeps every window within the limit: slots `limit` apart are
 * `window + jitterMs` apart, so their departures are at least `window` apart.
 *
 * What this cannot hold: a budget whose own answer takes longer than `jitterMs` (every turn would be
 * late again, so none is taken again: `shouldRetake`), a request still late after the last retake
 * (it leaves anyway), and a budget the store lost or could not keep (a PostgreSQL crash empties it;
 * a failing store falls back to per-process budgets).
 */
import { Clock, Effect, Option } from "effect"

/** The jitter allowed when none is configured (ms). */
export const DEFAULT_JITTER_MS = 50

/** Turns given up for being late, at most, before a request leaves anyway. */
export const RETAKES = 2

/** A configured jitter allowance: a finite number ≥ 0, else the default. */
export const jitterOf = (configured: number | undefined): number =>
  configured !== undefined && Number.isFinite(configured) && configured >= 0 ? configured : DEFAULT_JITTER_MS

/** The window to ask a budget for: the limit's window and the jitter allowed. */
export const paceWindowMs = (windowMs: number, jitterMs: number): number => windowMs + jitterMs

/**
 * A process's own budgets (for stores without `takeRateBudget`, or while the store's fails): key →
 * the next free slot, on this process's clock; `take` reserves `cost` slots and says the wait.
 */
export const localBudget = () => {
  const next = new Map<string, number>()
  return (key: string, limit: number, windowMs: number, cost = 1): Effect.Effect<number> =>
    Effect.clockWith((clock) =>
      Effect.sync(() => {
        const now = clock.currentTimeMillisUnsafe()
        const slot = Math.max(now, next.get(key) ?? 0)
        next.set(key, slot + (windowMs / Math.max(1e-9, limit)) * Math.max(1, cost))
        if (next.size > 10_000) for (const [k, at] of next) if (at < now) next.delete(k)
        return slot - now
      })
    )
}

/** A reserved turn: when it was asked for (monotonic ns), the wait the budget answered, its round trip. */
export interface Turn {
  readonly askedNs: bigint
  readonly waitMs: number
  readonly roundTripMs: number
}

const elapsedMs = (fromNs: bigint) =>
  Effect.map(Clock.monotonicTimeNanos, (now) => Number(now - fromNs) / 1e6)

/** Reserve a turn (`take` succeeds with the wait before it, ms). */
export const reserveTurn = <E, R>(take: () => Effect.Effect<number, E, R>): Effect.Effect<Turn, E, R> =>
  Effect.flatMap(Clock.monotonicTimeNanos, (askedNs) =>
    Effect.flatMap(take(), (wait) =>
      Effect.map(elapsedMs(askedNs), (roundTripMs) => ({ askedNs, waitMs: Math.max(0, wait), roundTripMs }))
    )
  )

/** Sleep until `leadMs` before the turn (at once when that is past). */
export const untilTurn = (turn: Turn, leadMs = 0): Effect.Effect<void> =>
  Effect.flatMap(elapsedMs(turn.askedNs), (elapsed) => {
    const left = turn.waitMs - leadMs - elapsed
    return left > 0 ? Effect.sleep(left) : Effect.void
  })

/** How late it is now after the turn, ms (negative: early). */
export const latenessOf = (turn: Turn): Effect.Effect<number> =>
  Effect.map(elapsedMs(turn.askedNs), (elapsed) => elapsed - turn.waitMs)

/**
 * Whether a request `lateMs` after its turn takes another: later than the jitter allowed, and the
 * budget answered within it (when its answer alone takes longer, the next turn would be late too).
 */
export const shouldRetake = (turn: Turn, lateMs: number, jitterMs: number): boolean =>
  lateMs > jitterMs && turn.roundTripMs <= jitterMs

/** How `awaitPacedTurn` waits (all optional). */
export interface PacedTurnOptions {
  /** A turn already reserved (and approached) to wait for first. */
  readonly first?: Turn | undefined
  /** Done when the wait must end at once (a shutdown): `awaitPacedTurn` then succeeds with false. */
  readonly stop?: Effect.Effect<void> | undefined
  /** Run for each turn given up for being late (for a metric). */
  readonly onRetaken?: Effect.Effect<void> | undefined
}

/**
 * Reserve a turn (or take `options.first`) and wait for it; take the next one when this one would be
 * left more than `jitterMs` late (`shouldRetake`), at most `RETAKES` times. Succeeds with true when
 * the request may leave, false when `options.stop` ended the wait.
 */
export const awaitPacedTurn = <E, R>(
  take: () => Effect.Effect<number, E, R>,
  jitterMs: number,
  options: PacedTurnOptions = {}
): Effect.Effect<boolean, E, R> => {
  const stop = options.stop
  /** `effect`, or none when `stop` comes first. */
  const unlessStopped = <A, E1, R1>(
    effect: Effect.Effect<A, E1, R1>
  ): Effect.Effect<Option.Option<A>, E1, R1> =>
    stop === undefined
      ? Effect.map(effect, Option.some)
      : Effect.raceFirst(Effect.map(effect, Option.some), Effect.as(stop, Option.none<A>()))
  return Effect.gen(function* () {
    let turn = options.first
    for (let retaken = 0; ; retaken++) {
      if (turn === undefined) {
        const reserved = yield* unlessStopped(reserveTurn(take))
        if (Option.isNone(reserved)) return false
        turn = reserved.value
      }
      if (Option.isNone(yield* unlessStopped(untilTurn(turn)))) return false
      if (retaken >= RETAKES || !shouldRetake(turn, yield* latenessOf(turn), jitterMs)) return true
      if (options.onRetaken !== undefined) yield* options.onRetaken
      turn = undefined
    }
  })
}
