/**
 * `accessToken(connectionId)`: a valid access token, refreshed first when it is within the skew of
 * expiry. The invariants it keeps (docs/architecture.md, "The refresh engine"):
 *
 * 1. No second sender while the first lives. Callers in this process share one in-flight refresh
 *    (single flight); processes share the store's lease, judged by the STORE's clock. The holder
 *    renews it while its refresh is in flight (provider call and every write retry), measures the
 *    time left as time elapsed on its own clock since it asked (so a skewed clock cannot shorten
 *    it), and never sends a refresh token without enough lease left for the whole request.
 * 2. A refresh journal. Before a refresh token is sent, the connection records durably that a
 *    refresh is in flight (holder, fence, start on the store's clock, a fingerprint of the token).
 *    The new tokens and the end of that record are one compare-and-set write.
 * 3. A live process never drops rotated tokens: once the provider answered, the write is retried
 *    until durable (for as long as the process lives, or until `close()`'s drain times out); callers
 *    meanwhile get `RefreshError("pending_write")`. Nobody else sends the old token meanwhile: the
 *    journal tells them a refresh is in flight, and they treat it as in doubt only after
 *    `inDoubtAfterMs`. A stale holder's write lands only when nothing newer is stored.
 * 4. In doubt (a lost answer, or a holder that died after sending), the provider's declared facts
 *    decide: with reusable refresh tokens or inside the reuse grace period a resend is safe; otherwise
 *    one resend is the only remaining chance, made once (recorded in the journal before it is sent).
 *    A refused resend ends in `needs_reauth` with reason `refresh_interrupted` and a message that
 *    says what happened, never the provider's "already used" as if Latchkey had spent it twice.
 * 5. `invalid_grant` re-reads the store first; only a real rejection marks the connection
 *    `needs_reauth`, keeping the provider's error.
 * 6. Transient failures that the provider answered (5xx, 429, connection refused) are retried with
 *    exponential backoff and full jitter, honouring `Retry-After`, within the lease.
 * 7. Health: a refresh that fails while the grant is good is recorded on the connection by the lease
 *    holder, once per failed refresh (the streak, the last error, the next attempt: `degraded`); the
 *    next successful renewal clears it in its commit (`recovered`). The stored status stays `active`.
 *    Each refresh runs in the span `TokenManager.refresh` (provider, kind, outcome, attempts, lease
 *    wait, in doubt).
 *
 * The refresh itself runs in a detached, uninterruptible fiber: a caller that gives up (timeout,
 * client disconnect) never interrupts a refresh between the provider's answer and the write.
 *
 * Every credential source is renewed here, under the same single flight and lease, and written through
 * `Connections.modify` (the one write path): the refresh-token grant (with the journal above), the
 * client-credentials grant, and tokens minted from a parent connection (the parent's own refresh
 * goes through this engine first when needed). The last two spend nothing: a lost answer is simply
 * asked again, so they need no journal; the lease still makes one request per expiry across
 * processes. API keys are never renewed.
 */
import { hash } from "node:crypto"
import {
  Clock,
  Context,
  Deferred,
  Effect,
  Exit,
  type Fiber,
  Layer,
  Metric,
  Option,
  Random,
  Redacted,
  Schedule
} from "effect"
import { LatchkeyConfig } from "./Config.ts"
import type {
  Connection,
  ConnectionRecord,
  DegradedReason,
  RefreshFailures,
  RefreshJournal
} from "./Connection.ts"
import { ConnectionStore, type Lease } from "./ConnectionStore.ts"
import * as Connections from "./Connections.ts"
import {
  type AuthorizationError,
  ConnectionNotFound,
  ReauthorizationRequired,
  RefreshError,
  StoreError,
  type VaultError
} from "./Errors.ts"
import type { LatchkeyEvent } from "./Events.ts"
import { refreshDueAt } from "./internal/due.ts"
import * as Mint from "./internal/mint.ts"
import * as Pace from "./internal/pace.ts"
import { refreshSpanOf, tagged, metrics as telemetry, tracing } from "./internal/telemetry.ts"
import * as OAuth from "./OAuth.ts"
import type { Credential, MintContext, Provider } from "./Provider.ts"
import { Providers } from "./Providers.ts"
import * as TokenSet from "./TokenSet.ts"

export type TokenError =
  | ConnectionNotFound
  | ReauthorizationRequired
  | RefreshError
  | StoreError
  | VaultError
  | AuthorizationError

/** A predicate deciding, on the freshest stored copy, whether a refresh is still needed. */
export type RefreshNeed = (connection: Connection, now: number) => boolean

/** A budget the requests of a refresh take their turns from (`RefreshOptions.pace`). */
export interface RequestPace {
  /** Reserves the next turn and succeeds with the wait before it (ms); called once for each turn. */
  readonly reserve: () => Effect.Effect<number>
  /** How late a request may leave after its turn before it takes the next one (ms). */
  readonly jitterMs: number
  /** Run for each turn a request gives up for being late (for a metric). */
  readonly onRetaken?: Effect.Effect<void> | undefined
}

/** How one refresh is made (`refreshIfDue`). */
export interface RefreshOptions {
  /**
   * The budget each request of this refresh takes a turn of (the Refresher: its provider's rate).
   * The first request reserves its turn once the lease is won and the copy checked, waits until
   * shortly before it (the time its journal write is expected to take), writes its journal, and
   * leaves when the turn comes: a stop or a crash during the wait leaves nothing in doubt, and the
   * request leaves at its turn, not a store write after it. A request that would leave more than
   * `jitterMs` after its turn takes the next one (at most twice), unless the budget's own answer
   * took longer than that. A retry of a request the provider refused as transient takes a turn of
   * its own. Not used when the refresh is shared with one already in flight or needs no request,
   * nor for the one resend of a refresh in doubt. Shutting down ends a wait at once: the request is
   * not sent (`RefreshError("draining")`) and a journal already written is ended. A defect of
   * `reserve` before the journal fails the refresh; after it, the request leaves without its turn.
   */
  readonly pace?: RequestPace | undefined
  /**
   * Do not wait for another process's refresh of the same connection. When another process holds
   * the connection's refresh lease, the refresh reads the row once: if that process's result has
   * landed it is shared as usual; otherwise `onLeaseHeld` is called and the refresh ends at once with
   * the connection as stored, still due (sending nothing: the connection is that process's to
   * refresh, and a later sweep finds it again should the holder die). Callers in this process that
   * joined the refresh look again at what they need, and wait for the lease themselves if they must.
   * The Refresher uses it: a worker moves on to the next due connection instead of waiting out a
   * refresh another instance is making.
   */
  readonly onLeaseHeld?: (() => void) | undefined
}

export interface TokenManagerShape {
  /** A valid access token (or API key) for the connection. */
  readonly accessToken: (connectionId: string) => Effect.Effect<Redacted.Redacted<string>, TokenError>
  /** The credential to authorize API requests with, and the connection it came from. */
  readonly credential: (
    connectionId: string
  ) => Effect.Effect<
    { readonly credential: Credential; readonly connection: Connection; readonly provider: Provider },
    TokenError
  >
  /**
   * Refresh when `need` holds on the freshest copy (re-checked after the lease is won). Shares an
   * in-flight refresh of the same connection. Returns the connection as stored afterwards.
   */
  readonly refreshIf: (connectionId: string, need: RefreshNeed) => Effect.Effect<Connection, TokenError>
  /** Refresh now, unless another caller refreshed since this call started. */
  readonly refreshNow: (connectionId: string) => Effect.Effect<Connection, TokenError>
  /**
   * Refresh if the Refresher's schedule says it is due. `claimed`: the record as the caller read it
   * (the Refresher's claimed batch); after the lease is won it stands in for the re-read only when
   * the journal's compare-and-set fences it (see `refreshWithLease`).
   */
  readonly refreshIfDue: (
    connectionId: string,
    claimed?: ConnectionRecord | undefined,
    options?: RefreshOptions | undefined
  ) => Effect.Effect<Connection, TokenError>
  /** The decoded connection. */
  readonly get: (
    connectionId: string
  ) => Effect.Effect<Connection, ConnectionNotFound | StoreError | VaultError>
  /**
   * Mint a token for `accountId` from the parent connection's access token (the provider's `mint`),
   * renewing the parent first when needed and once more if the provider refuses its token. For
   * linking a minted connection (`AuthorizationFlow.linkMinted`); renewals run inside the engine.
   */
  readonly mintFrom: (
    parentId: string,
    accountId: string
  ) => Effect.Effect<
    {
      readonly response: TokenSet.TokenResponse
      readonly answeredAt: number
      readonly parent: Connection
      readonly provider: Provider
    },
    TokenError
  >
  /**
   * Stop starting refreshes, let the ones in flight finish their write (at most `drainTimeoutMs`),
   * and release their leases. Runs when the layer is released (`latchkey.close()`).
   */
  readonly drain: Effect.Effect<{ readonly finished: number; readonly abandoned: number }>
  /** Refreshes in flight in this process (started and not yet durable or failed). */
  readonly inFlight: Effect.Effect<number>
}

const notFound = (id: string) => new ConnectionNotFound({ connectionId: id, message: `No connection ${id}` })

/** Why a write was not made: the stored copy is no longer the one the change was decided on. */
const staleCopy = (id: string) =>
  new StoreError({ reason: "conflict", message: `Connection ${id} changed meanwhile` })

/** A fingerprint of a refresh token for the journal: enough to recognise it, useless to an attacker. */
export const fingerprint = (token: string): string => hash("sha256", token, "base64url").slice(0, 22)

const iso = (ms: number) => new Date(ms).toISOString()

const drainingError = (id: string) =>
  new RefreshError({
    reason: "draining",
    connectionId: id,
    message: `This Latchkey instance is shutting down; connection ${id} is refreshed by another instance or after the restart`
  })

/** The lease of one refresh, renewed in the background while the refresh is in flight. */
interface Keeper {
  lease: Lease
  /** On this instance's clock: the lease may have lapsed from here on (unless renewed). */
  deadline: number
  /** Another holder took the lease (ours lapsed unrenewed). */
  lost: boolean
  /** The final write released the lease with it (`UpdateOptions.releaseLease`): nothing left to release. */
  released: boolean
  /** On this instance's clock: when the lease keeper renews it next. */
  renewAt: number
  /** A renewal of it is under way. */
  renewing: boolean
}

/** What the `TokenManager.refresh` span says of one refresh (no token, code, secret or e-mail). */
interface Trace {
  providerId: string | undefined
  kind: Connection["kind"] | undefined
  /**
   * This refresh wrote new tokens (`refreshed`), found them written by another (`shared`), or left
   * the connection to the process holding its lease (`skipped`, `RefreshOptions.onLeaseHeld`).
   */
  outcome: "refreshed" | "shared" | "skipped" | undefined
  /** Requests made to the token endpoint (or mints), retries and a resend included. */
  attempts: number
  /** From the start of the refresh until the lease was won (or the wait ended). */
  leaseWaitMs: number | undefined
  /** It dealt with a refresh in doubt (a lost answer, or a holder that died after sending). */
  inDoubt: boolean
}

/** One refresh in flight in this process: its callers, and the leader's end. */
interface Flight {
  readonly waiters: Deferred.Deferred<Connection, TokenError>
  readonly done: Deferred.Deferred<void>
  readonly trace: Trace
  /** The budget each request takes a turn of (`RefreshOptions.pace`). */
  readonly pace: RequestPace | undefined
  /** Called instead of waiting for another process's lease (`RefreshOptions.onLeaseHeld`). */
  readonly onLeaseHeld: (() => void) | undefined
  /** The first request has taken its turn. */
  slotTaken: boolean
  /** The first request's turn, reserved before its journal was written, until it leaves. */
  turn: Pace.Turn | undefined
}

/** The attributes of a finished `TokenManager.refresh` span. */
const spanAttributes = (trace: Trace, exit: Exit.Exit<Connection, TokenError>): Record<string, unknown> => {
  const attributes: Record<string, unknown> = {
    "latchkey.attempt": trace.attempts,
    "latchkey.in_doubt": trace.inDoubt
  }
  if (trace.providerId !== undefined) attributes["latchkey.provider"] = trace.providerId
  if (trace.kind !== undefined) attributes["latchkey.credential_kind"] = trace.kind
  if (trace.leaseWaitMs !== undefined) attributes["latchkey.lease_wait_ms"] = trace.leaseWaitMs
  if (Exit.isSuccess(exit)) {
    attributes["latchkey.outcome"] = trace.outcome ?? "shared"
    return attributes
  }
  const error = exit.cause.reasons.find((r) => r._tag === "Fail")?.error
  if (error === undefined) {
    attributes["latchkey.outcome"] = "failed"
    attributes["latchkey.reason"] = "defect"
    return attributes
  }
  attributes["latchkey.outcome"] = error._tag === "ReauthorizationRequired" ? "needs_reauth" : "failed"
  attributes["latchkey.reason"] = error.reason
  attributes["latchkey.error"] = error._tag
  if (error._tag === "RefreshError" && error.reason === "in_doubt") attributes["latchkey.in_doubt"] = true
  return attributes
}

/** How a request to the token endpoint ended. */
type Outcome =
  | {
      readonly _tag: "Answer"
      readonly response: TokenSet.TokenResponse
      readonly answeredAt: number
      /** Monotonic nanoseconds when the answer arrived (for the in-doubt window). */
      readonly answeredNs: bigint
    }
  /** The provider answered with an error: it did not rotate the token. */
  | { readonly _tag: "Refused"; readonly failure: OAuth.ProtocolFailure }
  /** Not sent: the instance began to shut down while the request waited for its turn (`pace`). */
  | { readonly _tag: "Withdrawn" }
  /** Nothing reached the provider (or nothing in doubt did): the token is as it was. */
  | { readonly _tag: "NotSent"; readonly failure: OAuth.ProtocolFailure }
  /** The request was sent and no answer came back: the provider may have rotated the token. */
  | { readonly _tag: "Lost"; readonly failure: OAuth.ProtocolFailure }

/**
 * The request may have been processed and its answer is gone (a timeout or a drop after sending).
 * An answer the provider did send — an error status, or a body that is not a token response — is
 * taken as "not processed", as RFC 6749 §5.2 errors are: the token is retried as it is.
 */
const answerLost = (f: OAuth.ProtocolFailure): boolean =>
  f.details.status === undefined && f.details.maybeProcessed === true

export class TokenManager extends Context.Service<TokenManager, TokenManagerShape>()(
  "@latchkey/core/TokenManager"
) {
  static readonly layer = Layer.effect(
    TokenManager,
    Effect.gen(function* () {
      const store = yield* ConnectionStore
      const connections = yield* Connections.Connections
      const providers = yield* Providers
      const config = yield* LatchkeyConfig
      const protocol: OAuth.ProtocolOptions = { timeoutMs: config.requestTimeoutMs, fetch: config.fetch }
      const holder = config.holderId
      const ttl = config.leaseTtlMs
      /** Every request ends this long before the lease could lapse. */
      const margin = Math.min(1_000, ttl / 4)
      /** The least lease time worth sending a request with. */
      const minRequest = Math.min(config.requestTimeoutMs, 1_000, ttl / 2)

      const inflight = new Map<string, Flight>()
      /** `close()` was called: no new refresh starts. */
      let closing = false
      /** Done when `close()` is called: a request waiting for its turn (`pace`) stops waiting. */
      const closed = Deferred.makeUnsafe<void>()
      /** The drain timed out: write retries give up (the journal leaves the refresh in doubt). */
      let stopping = false
      /** When the drain stops waiting for the refreshes in flight (set by `close()`, this instance's clock). */
      let drainDeadline: number | undefined

      const load = connections.get

      const isConflict = (e: StoreError) => e.reason === "conflict"

      /**
       * Write `change(c)` over the copy `c` by compare-and-set, retrying transient store failures as
       * `Connections.defaultRetry` allows, never re-applying it to a newer copy: a conflict fails with
       * `StoreError("conflict")` (the journal's write fences a stale copy this way).
       */
      const writeOver = (
        c: Connection,
        change: (c: Connection) => Connection,
        events: Connections.AttachedEvents = []
      ): Effect.Effect<Connection, StoreError> =>
        connections
          .modify(
            c.id,
            (current) =>
              current.version === c.version
                ? Connections.write(change(current), events)
                : Effect.fail(staleCopy(c.id)),
            { current: c }
          )
          .pipe(
            Effect.map((m) => m.connection),
            // Gone or unreadable on the re-read: not the copy the change was decided on either.
            Effect.catchTags({
              ConnectionNotFound: () => Effect.fail(staleCopy(c.id)),
              VaultError: () => Effect.fail(staleCopy(c.id))
            })
          )

      const reauthError = (c: Connection, reason: ReauthorizationRequired["reason"], message?: string) =>
        new ReauthorizationRequired({
          reason,
          connectionId: c.id,
          providerId: c.providerId,
          message:
            message ??
            (c.status === "revoked"
              ? `Connection ${c.id} was revoked; link the account again`
              : `Connection ${c.id} needs to be linked again${c.lastError ? ` (${c.lastError.code}${c.lastError.description ? `: ${c.lastError.description}` : ""})` : ""}`),
          ...(c.lastError ? { providerError: c.lastError.code } : {}),
          ...(c.lastError?.description ? { providerErrorDescription: c.lastError.description } : {})
        })

      const ensureActive = (c: Connection): Effect.Effect<Connection, ReauthorizationRequired> =>
        c.status === "active"
          ? Effect.succeed(c)
          : Effect.fail(
              reauthError(
                c,
                c.status === "revoked"
                  ? "revoked"
                  : c.lastError?.code === "refresh_interrupted"
                    ? "refresh_interrupted"
                    : "needs_reauth"
              )
            )

      /**
       * Mark needs_reauth and end the journal (compare-and-set); if someone else changed the row
       * meanwhile, return theirs.
       */
      const markNeedsReauth = Effect.fnUntraced(function* (
        c: Connection,
        reason: ReauthorizationRequired["reason"],
        message: string,
        providerError?: string,
        providerErrorDescription?: string
      ): Effect.fn.Return<never, TokenError> {
        const now = yield* Clock.currentTimeMillis
        const wrote = yield* writeOver(
          c,
          (current) => ({
            ...current,
            status: "needs_reauth",
            journal: undefined,
            statusReason: { reason, at: now },
            lastError: {
              code: reason === "refresh_interrupted" ? reason : (providerError ?? reason),
              description: reason === "refresh_interrupted" ? message : (providerErrorDescription ?? message),
              at: now
            }
          }),
          [
            {
              type: "needs_reauth",
              at: now,
              connectionId: c.id,
              ownerId: c.ownerId,
              providerId: c.providerId,
              reason,
              message,
              ...(reason === "refresh_interrupted" && c.journal !== undefined
                ? { interrupted: { holder: c.journal.holder, startedAt: c.journal.startedAt } }
                : {})
            }
          ]
        ).pipe(
          Effect.as(true),
          Effect.catchTag("StoreError", (e) => (isConflict(e) ? Effect.succeed(false) : Effect.fail(e)))
        )
        if (!wrote) {
          const current = yield* load(c.id)
          yield* ensureActive(current)
          return yield* new RefreshError({
            reason: "conflict",
            connectionId: c.id,
            message: `Connection ${c.id} changed while its refresh failed; try again`
          })
        }
        return yield* new ReauthorizationRequired({
          reason,
          connectionId: c.id,
          providerId: c.providerId,
          message,
          ...(providerError ? { providerError } : {}),
          ...(providerErrorDescription && reason !== "refresh_interrupted"
            ? { providerErrorDescription }
            : {})
        })
      })

      /** Backoff with full jitter, at least the server's Retry-After, capped. */
      const backoff = (attempt: number, retryAfterMs: number | undefined) =>
        Effect.gen(function* () {
          const exp = Math.min(config.maxBackoffMs, config.baseBackoffMs * 2 ** attempt)
          const jittered = Math.floor((yield* Random.next) * exp)
          return Math.min(config.maxBackoffMs, Math.max(jittered, retryAfterMs ?? 0))
        })

      // ---- health: the failed-refresh streak ---------------------------------------------------

      /** The streak after one more failed refresh, with the Refresher's next attempt backed off. */
      const streak = (
        current: Connection,
        reason: DegradedReason,
        message: string,
        at: number,
        retryAfterMs: number | undefined
      ): RefreshFailures => {
        const previous = current.failures
        const count = (previous?.count ?? 0) + 1
        const backedOff = config.degradedRetryMs * 2 ** Math.min(count - 1, 20)
        const delay = Math.min(config.degradedRetryMaxMs, Math.max(backedOff, retryAfterMs ?? 0))
        return { count, since: previous?.since ?? at, reason, message, at, nextAttemptAt: at + delay }
      }

      /**
       * A refresh failed while the grant is still good: one write (by the lease holder, once per
       * failed refresh) records the streak and the last error — ending the journal when `endJournal`
       * — with `refresh_failed` and, for the first failure after success, `degraded` attached. When
       * the copy changed meanwhile nothing is written (its writer decided) and only `refresh_failed`
       * is published.
       */
      const recordFailure = (
        c: Connection,
        reason: DegradedReason,
        message: string,
        at: number,
        retryAfterMs: number | undefined,
        endJournal: boolean
      ): Effect.Effect<void> => {
        const failed: LatchkeyEvent = {
          type: "refresh_failed",
          at,
          connectionId: c.id,
          ownerId: c.ownerId,
          providerId: c.providerId,
          reason,
          message,
          retryable: reason !== "invalid_client"
        }
        return writeOver(
          c,
          (current) => ({
            ...current,
            ...(endJournal ? { journal: undefined } : {}),
            lastError: { code: reason, description: message, at },
            failures: streak(current, reason, message, at, retryAfterMs)
          }),
          (written) =>
            written.failures?.count === 1
              ? [
                  failed,
                  {
                    type: "degraded",
                    at,
                    connectionId: written.id,
                    ownerId: written.ownerId,
                    providerId: written.providerId,
                    reason,
                    message,
                    failures: 1,
                    nextAttemptAt: written.failures.nextAttemptAt
                  }
                ]
              : [failed]
        ).pipe(
          Effect.asVoid,
          Effect.catch(() => connections.note([failed]))
        )
      }

      // ---- the lease --------------------------------------------------------------------------

      /**
       * The lease keeper: ONE fiber renews every lease this instance holds, each a third of its
       * length after it was granted or last renewed (a failed renewal leaves the deadline and is
       * tried again a third later; a lease found taken by another holder is `lost`). It runs while
       * leases are held and stops with the last one, so no timer outlives the refreshes: a fiber of
       * its own per refresh (forked, sleeping, interrupted) cost every refresh, though almost none
       * lasts long enough to renew. Renewals run on fibers of their own: a slow one delays no other.
       */
      const period = Math.max(10, Math.floor(ttl / 3))
      const held = new Set<Keeper>()
      let keeping: Ticking | undefined

      const renewOne = (keeper: Keeper) =>
        Effect.gen(function* () {
          const before = yield* Clock.currentTimeMillis
          const renewed = yield* store.renewLease(keeper.lease, ttl).pipe(Effect.result)
          if (renewed._tag === "Failure") {
            keeper.renewAt = before + period
          } else if (renewed.success === undefined) {
            keeper.lost = true
            held.delete(keeper)
          } else {
            keeper.lease = renewed.success
            keeper.deadline = before + ttl
            keeper.renewAt = before + period
          }
        }).pipe(
          Effect.ensuring(
            Effect.suspend(() => {
              keeper.renewing = false
              return arm(keeper)
            })
          )
        )

      interface Ticking {
        fiber: Fiber.Fiber<void> | undefined
        wakeAt: number
      }

      /** Renew what is due, then sleep until the next renewal; ends when nothing is left to wait for. */
      const tick = (self: Ticking): Effect.Effect<void> =>
        Effect.gen(function* () {
          for (;;) {
            const now = yield* Clock.currentTimeMillis
            for (const keeper of held) {
              if (keeper.renewing || keeper.renewAt > now) continue
              keeper.renewing = true
              yield* Effect.forkDetach(renewOne(keeper), { startImmediately: true })
            }
            // After the renewals started (one may have ended at once, with its next time set).
            let next = Number.POSITIVE_INFINITY
            for (const keeper of held) if (!keeper.renewing && keeper.renewAt < next) next = keeper.renewAt
            if (keeping !== self) return
            if (next === Number.POSITIVE_INFINITY) {
              // Nothing to wait for: the renewals under way arm the keeper again when they end.
              keeping = undefined
              return
            }
            self.wakeAt = next
            yield* Effect.sleep(Math.max(0, next - now))
          }
        })

      /** Make sure the keeper wakes up in time for `keeper` (started, or woken earlier). */
      const arm = (keeper: Keeper): Effect.Effect<void> =>
        Effect.suspend(() => {
          if (!held.has(keeper) || keeper.renewing) return Effect.void
          if (keeping !== undefined && keeping.wakeAt <= keeper.renewAt) return Effect.void
          keeping?.fiber?.interruptUnsafe()
          const self: Ticking = { fiber: undefined, wakeAt: keeper.renewAt }
          keeping = self
          // Started on the scheduler's next turn, not in this one: the refresh that armed it goes on
          // to its journal and request first (the keeper sleeps until an absolute time, so starting
          // it a moment later changes nothing of when it renews).
          return Effect.map(Effect.forkDetach(Effect.interruptible(tick(self))), (fiber) => {
            self.fiber = fiber
          })
        })

      /** Keep `first` renewed until `stop`; a failed renewal leaves the deadline. */
      const keepLease = (first: Lease, askedAt: number) =>
        Effect.suspend(() => {
          const keeper: Keeper = {
            lease: first,
            deadline: askedAt + ttl,
            lost: false,
            released: false,
            renewAt: askedAt + period,
            renewing: false
          }
          held.add(keeper)
          const stop = Effect.sync(() => {
            held.delete(keeper)
            if (held.size === 0 && keeping !== undefined) {
              const { fiber } = keeping
              keeping = undefined
              fiber?.interruptUnsafe()
            }
          })
          return Effect.as(arm(keeper), { keeper, stop })
        })

      /** Time left on the lease for one more request, on this instance's clock. */
      const leaseLeft = (keeper: Keeper, now: number) => (keeper.lost ? 0 : keeper.deadline - margin - now)

      // ---- the journal ------------------------------------------------------------------------

      /** Set (or end) the journal with one compare-and-set write over `c`; a few retries on store hiccups. */
      const setJournal = (c: Connection, journal: RefreshJournal | undefined) =>
        writeOver(c, (current) => ({ ...current, journal }))

      /** A provider failure that will be retried after `wait` ms: recorded (no row change) before the wait. */
      const noteRetry = (
        c: Connection,
        failure: OAuth.ProtocolFailure,
        now: number,
        wait: number,
        message: string
      ) =>
        connections.note([
          {
            type: "refresh_failed",
            at: now,
            connectionId: c.id,
            ownerId: c.ownerId,
            providerId: c.providerId,
            reason: failure.kind,
            message: `${message}; retrying in ${wait} ms`,
            retryable: true
          }
        ])

      // ---- the provider call -------------------------------------------------------------------

      /** `effect`, ended at once when `close()` is called meanwhile (then none). */
      const untilClosed = <A>(effect: Effect.Effect<A>): Effect.Effect<Option.Option<A>> =>
        closing
          ? Effect.succeedNone
          : Effect.raceFirst(
              Effect.map(effect, Option.some),
              Effect.as(Deferred.await(closed), Option.none())
            )

      /**
       * The wait before a retry, `ms`: `true` once it is over. When `close()` is called meanwhile (or
       * was), the wait goes on only if the retried request can still be sent and answered before the
       * drain stops waiting (`drainTimeoutMs`); otherwise `false` at once, and the retry is not made:
       * a rolling restart is not held for a provider's `Retry-After`, and the refresh ends cleanly
       * instead of being abandoned mid-wait.
       */
      const waitToRetry = (ms: number): Effect.Effect<boolean> =>
        Effect.gen(function* () {
          const until = (yield* Clock.currentTimeMillis) + ms
          if (Option.isSome(yield* untilClosed(Effect.sleep(ms)))) return true
          if (drainDeadline === undefined || until + config.requestTimeoutMs > drainDeadline) return false
          yield* Effect.sleep(Math.max(0, until - (yield* Clock.currentTimeMillis)))
          return true
        })

      /**
       * How long a journal write takes here: a moving average and its mean deviation (ms), as TCP
       * estimates a round trip. A turn is approached with the average and four deviations to spare,
       * so that the journal is nearly always written before the turn comes.
       */
      let journalMs = 5
      let journalDevMs = 2.5
      const noteJournal = (ms: number) => {
        const error = Math.min(ms, 1_000) - journalMs
        journalMs += error / 8
        journalDevMs += (Math.abs(error) - journalDevMs) / 4
      }
      const journalLeadMs = () => Math.min(250, 1 + journalMs + 4 * journalDevMs)

      /**
       * The first request, before its journal is written: reserve its turn (`pace`) and wait until
       * the journal's expected time before it. Succeeds with true when the instance began to shut
       * down (nothing is in doubt yet: the refresh ends with `RefreshError("draining")`).
       */
      const approachTurn = (flight: Flight): Effect.Effect<boolean> => {
        const pace = flight.pace
        if (pace === undefined || flight.slotTaken) return Effect.succeed(false)
        flight.slotTaken = true
        return Effect.gen(function* () {
          const turn = yield* untilClosed(Pace.reserveTurn(pace.reserve))
          if (Option.isNone(turn) || closing) return true
          flight.turn = turn.value
          yield* untilClosed(Pace.untilTurn(turn.value, journalLeadMs()))
          return closing
        })
      }

      /**
       * Just before a request leaves: wait for its turn (the first request's, reserved before its
       * journal; a `retry`'s, or a first request that approached none, reserved now), and take the
       * next when it would leave late (`Pace.shouldRetake`). Succeeds with true when the instance
       * began to shut down (the request is then not made). A defect of the budget here lets the
       * request leave without its turn: whoever wrote a journal ends it by sending.
       */
      const awaitTurn = (flight: Flight, retry: boolean): Effect.Effect<boolean> => {
        const pace = flight.pace
        if (pace === undefined) return Effect.succeed(false)
        const approached = retry ? undefined : flight.turn
        flight.turn = undefined
        if (!retry && approached === undefined && flight.slotTaken) return Effect.succeed(false)
        flight.slotTaken = true
        if (closing) return Effect.succeed(true)
        return Pace.awaitPacedTurn(pace.reserve, pace.jitterMs, {
          first: approached,
          stop: Deferred.await(closed),
          onRetaken: pace.onRetaken
        }).pipe(
          Effect.map(() => closing),
          Effect.catchCause(() => Effect.sync(() => closing))
        )
      }

      /**
       * Send the refresh token, retrying what the provider answered as transient while the lease
       * leaves room for another request. Never sent without enough lease left.
       */
      const callProvider = Effect.fnUntraced(function* (
        flight: Flight,
        provider: Provider,
        c: Connection,
        refreshToken: string,
        keeper: Keeper,
        resend: boolean
      ): Effect.fn.Return<Outcome> {
        for (let attempt = 0; ; attempt++) {
          // Each request leaves at its turn (`pace`: the Refresher's rate slot): the first one's was
          // reserved and approached before its journal was written, a retry (the provider refused
          // the last request as transient: the token was not taken) takes a turn of its own. The
          // one resend of a refresh in doubt waits for nothing. Shutting down meanwhile, the request
          // is withdrawn (the journal is ended by the caller).
          if (!resend && (yield* awaitTurn(flight, attempt > 0))) return { _tag: "Withdrawn" }
          const startedAt = yield* Clock.currentTimeMillis
          const left = leaseLeft(keeper, startedAt)
          if (left < minRequest) {
            return {
              _tag: "NotSent",
              failure: new OAuth.ProtocolFailure(
                "transient",
                "refresh: not enough time left on the refresh lease to send the request (the store is slow or unreachable)"
              )
            }
          }
          // The request is not cut short when the lease might lapse: the journal, not the lease,
          // keeps everyone else from sending this token while it is in flight (they wait
          // `inDoubtAfterMs`, well above the request timeout), and cutting it would only turn a
          // slow answer into a lost one.
          flight.trace.attempts++
          const result = yield* OAuth.refresh(provider, protocol, refreshToken, c.tokens.dpopKey).pipe(
            Effect.result
          )
          if (result._tag === "Success") {
            return {
              _tag: "Answer",
              response: result.success,
              answeredAt: yield* Clock.currentTimeMillis,
              answeredNs: yield* Clock.monotonicTimeNanos
            }
          }
          const failure = result.failure
          const lost = answerLost(failure)
          // With reusable refresh tokens a lost answer costs nothing: the token is still good.
          if (lost && provider.refreshTokenPolicy === "rotating") return { _tag: "Lost", failure }
          const retryable = failure.retryable || lost
          if (!retryable || attempt + 1 >= config.maxAttempts) return { _tag: "Refused", failure }
          const wait = yield* backoff(attempt, failure.details.retryAfterMs)
          const now = yield* Clock.currentTimeMillis
          if (now + wait + minRequest >= keeper.deadline - margin) {
            return { _tag: "Refused", failure }
          }
          yield* noteRetry(c, failure, now, wait, failure.message)
          // The provider refused the token (it was not taken): a retry that a shutdown leaves no time
          // for is withdrawn (the journal is ended by the caller). A resend keeps its journal whatever
          // happens, so it waits the delay out.
          if (resend) yield* Effect.sleep(wait)
          else if (!(yield* waitToRetry(wait))) return { _tag: "Withdrawn" }
        }
      })

      // ---- the commit --------------------------------------------------------------------------

      /** The `refreshed` event of a written renewal (`commitMs` is stamped once it is durable). */
      const refreshedEvent = (written: Connection, recovered: boolean): LatchkeyEvent => ({
        type: "refreshed",
        at: written.updatedAt,
        connectionId: written.id,
        ownerId: written.ownerId,
        providerId: written.providerId,
        expiresAt: written.tokens.expiresAt,
        refreshExpiresAt: written.tokens.refreshExpiresAt,
        ...(written.tokens.widenedScopes !== undefined
          ? { widenedScopes: written.tokens.widenedScopes }
          : {}),
        ...(recovered ? { recovered: true } : {})
      })

      /**
       * Write the new tokens and end the journal in one compare-and-set (`Connections.modify`),
       * retrying until durable: the provider has consumed the old refresh token, so the new one must
       * not be dropped. Waiting callers get `pending_write` after the first failure; the write goes
       * on (until the drain gives up). On a conflict the row is re-read: the write is re-applied when
       * the row still holds what was renewed (`still`: the refresh token that was sent; nothing newer
       * is stored), and dropped when someone stored newer tokens.
       */
      const commit = Effect.fnUntraced(function* (
        flight: Flight,
        base: Connection,
        still: (fresh: Connection) => boolean,
        apply: (current: Connection) => Connection,
        events: Connections.AttachedEvents,
        answeredNs: bigint,
        keeper: Keeper
      ): Effect.fn.Return<Connection, TokenError> {
        let notified = false
        // The lease goes with the write where the store can release it there (one round trip fewer).
        const releasing = store.releasesLeaseOnUpdate === true
        // Unbounded while the process lives: exponential from 25 ms, capped at `writeMaxBackoffMs`.
        // Built only when the first write fails.
        const untilDurable = () =>
          Schedule.min([
            Schedule.exponential("25 millis"),
            Schedule.spaced(Math.max(5, config.writeMaxBackoffMs))
          ]).pipe(
            Schedule.jittered,
            Schedule.setInputType<StoreError>(),
            Schedule.while(({ input }) => isConflict(input) || (input.isRetryable && !stopping)),
            Schedule.tap(({ input }) =>
              isConflict(input) || notified
                ? Effect.void
                : Effect.suspend(() => {
                    notified = true
                    return Deferred.fail(
                      flight.waiters,
                      new RefreshError({
                        reason: "pending_write",
                        connectionId: base.id,
                        message: `Connection ${base.id} was refreshed; its new tokens are being written (${input.message}); try again shortly`
                      })
                    )
                  })
            )
          )
        // A successful renewal ends a failed-refresh streak: `recovered` rides on the same write.
        const renewed = (current: Connection) =>
          Connections.write({ ...apply(current), failures: undefined }, (written) => {
            const list = typeof events === "function" ? events(written) : events
            const streak = current.failures
            if (streak === undefined) return list
            return [
              ...list,
              {
                type: "recovered",
                at: written.updatedAt,
                connectionId: written.id,
                ownerId: written.ownerId,
                providerId: written.providerId,
                failures: streak.count,
                degradedMs: Math.max(0, written.updatedAt - streak.since)
              }
            ]
          })
        const written = yield* connections
          .modify(
            base.id,
            (current) => {
              if (current === base) return renewed(current)
              if (current.status === "revoked")
                return Effect.flatMap(ensureActive(current), () => Effect.succeed(Connections.keep))
              // Someone stored newer tokens: theirs win, ours are dropped.
              if (!still(current)) return Connections.keep
              return renewed(current)
            },
            {
              current: base,
              retry: untilDurable,
              answeredNs,
              ...(releasing ? { releaseLease: keeper.lease } : {})
            }
          )
          .pipe(
            Effect.tapError((error) =>
              error._tag === "StoreError"
                ? Deferred.fail(
                    flight.waiters,
                    new RefreshError({
                      reason: "pending_write",
                      connectionId: base.id,
                      message: `The new tokens of connection ${base.id} could not be written (${error.message}); the refresh stays in doubt and will be recovered`
                    })
                  )
                : Effect.void
            )
          )
        flight.trace.outcome = written.written ? "refreshed" : "shared"
        if (written.written && releasing) keeper.released = true
        return written.written ? written.connection : yield* ensureActive(written.connection)
      })

      // ---- one refresh, holding the lease -------------------------------------------------------

      /** Send (or resend) the journaled refresh token and store what comes back. */
      const sendAndCommit = Effect.fnUntraced(function* (
        flight: Flight,
        provider: Provider,
        c: Connection,
        refreshToken: string,
        keeper: Keeper,
        resend: boolean
      ): Effect.fn.Return<Connection, TokenError> {
        const journal = c.journal!
        const outcome = yield* callProvider(flight, provider, c, refreshToken, keeper, resend)
        switch (outcome._tag) {
          case "Withdrawn": {
            // Nothing was sent: end the journal (if that write fails, the journal is recovered later).
            yield* setJournal(c, undefined).pipe(Effect.ignore)
            return yield* drainingError(c.id)
          }
          case "Answer": {
            const tokens = yield* Effect.try({
              try: () => TokenSet.fromResponse(provider, outcome.response, outcome.answeredAt, c.tokens),
              catch: () =>
                new RefreshError({
                  reason: "invalid_response",
                  connectionId: c.id,
                  message: `${provider.name}: the refresh response has invalid extra fields`
                })
            }).pipe(
              // The provider answered and rotated; a response we cannot read is as good as lost.
              Effect.catch((e) =>
                resend
                  ? interrupted(c, provider, journal, "the resend's answer could not be read")
                  : Effect.fail(e)
              )
            )
            const sent = journal.fingerprint
            return yield* commit(
              flight,
              c,
              (fresh) =>
                fresh.tokens.refreshToken !== undefined &&
                fingerprint(Redacted.value(fresh.tokens.refreshToken)) === sent,
              (current) => ({
                ...current,
                tokens,
                status: "active",
                journal: undefined,
                lastRefreshAt: outcome.answeredAt,
                lastError: undefined
              }),
              (written) => [refreshedEvent(written, resend)],
              outcome.answeredNs,
              keeper
            )
          }
          case "Lost": {
            if (resend) {
              return yield* interrupted(
                c,
                provider,
                journal,
                `the resend got no answer either (${outcome.failure.message})`
              )
            }
            // A live process lost the answer. With a grace period the resend is safe; without one it
            // is the only chance left (the new tokens exist only in the lost answer). Once, recorded first.
            flight.trace.inDoubt = true
            yield* connections.note([
              {
                type: "refresh_failed",
                at: yield* Clock.currentTimeMillis,
                connectionId: c.id,
                ownerId: c.ownerId,
                providerId: c.providerId,
                reason: "answer_lost",
                message: `${provider.name}: ${outcome.failure.message}; the refresh token may have been rotated, resending it once`,
                retryable: true
              }
            ])
            const at = keeper.lease.grantedAt
            const marked = yield* setJournal(c, {
              ...journal,
              resend: { holder, fence: keeper.lease.fence, at }
            }).pipe(Effect.result)
            if (marked._tag === "Failure") {
              return yield* new RefreshError({
                reason: "in_doubt",
                connectionId: c.id,
                message: `${provider.name} gave no answer to the refresh of connection ${c.id} (${outcome.failure.message}) and the store could not record a resend; it will be recovered`
              })
            }
            return yield* sendAndCommit(flight, provider, marked.success, refreshToken, keeper, true)
          }
          case "NotSent":
          case "Refused": {
            const failure = outcome.failure
            const after = yield* Clock.currentTimeMillis
            if (failure.kind === "invalid_grant" || failure.kind === "invalid_client") {
              // Re-read first: another worker may have refreshed meanwhile; then its tokens are good.
              const current = yield* load(c.id)
              if (current.version !== c.version) {
                yield* ensureActive(current)
                const still =
                  current.tokens.refreshToken !== undefined &&
                  fingerprint(Redacted.value(current.tokens.refreshToken)) === journal.fingerprint
                if (!still) return current
              }
              if (failure.kind === "invalid_client") {
                yield* recordFailure(
                  current,
                  "invalid_client",
                  `${provider.name}: ${failure.message} (check the client id and secret)`,
                  after,
                  undefined,
                  true
                )
                return yield* new RefreshError({
                  reason: "invalid_client",
                  connectionId: c.id,
                  message: `${provider.name} rejected the client credentials: ${failure.message}`,
                  ...(failure.details.status !== undefined ? { status: failure.details.status } : {})
                })
              }
              if (resend) {
                return yield* interrupted(
                  current,
                  provider,
                  journal,
                  `the one resend was refused (${failure.details.error ?? "invalid_grant"})`,
                  failure.details.error ?? "invalid_grant"
                )
              }
              return yield* markNeedsReauth(
                current,
                "invalid_grant",
                `${provider.name} rejected the refresh token (${failure.details.error ?? "invalid_grant"}${failure.details.description ? `: ${failure.details.description}` : ""}). Link the account again.`,
                failure.details.error ?? "invalid_grant",
                failure.details.description
              )
            }
            const reason: RefreshError["reason"] =
              failure.kind === "rate_limited"
                ? "rate_limited"
                : failure.kind === "invalid_response"
                  ? "invalid_response"
                  : "transient"
            const message = `${provider.name}: ${failure.message}`
            // The provider did not take the token: end the journal (a resend that was answered
            // with an error used nothing up either), and record the failure (the connection is
            // degraded until a refresh succeeds) in the same write.
            yield* recordFailure(c, reason, message, after, failure.details.retryAfterMs, true)
            return yield* new RefreshError({
              reason,
              connectionId: c.id,
              message,
              ...(failure.details.status !== undefined ? { status: failure.details.status } : {}),
              ...(failure.details.retryAfterMs !== undefined
                ? { retryAfterMs: failure.details.retryAfterMs }
                : {})
            })
          }
        }
      })

      /** The refresh was interrupted and cannot be recovered: say exactly what happened. */
      const interrupted = (
        c: Connection,
        provider: Provider,
        journal: RefreshJournal,
        what: string,
        providerError?: string
      ) =>
        markNeedsReauth(
          c,
          "refresh_interrupted",
          `A refresh of this ${provider.name} connection was interrupted: ${journal.holder === holder ? "this process" : `process ${journal.holder}`} sent its refresh token at ${iso(journal.startedAt)} (store clock) and the answer was lost (the process stopped or the network dropped it); ${what}. ${provider.name} had most likely rotated the token already, and the new one existed only in that lost answer. Latchkey resends a refresh token at most once, and only to recover from such a loss. Link the account again.`,
          providerError
        )

      /**
       * An unfinished journal entry of another lease was found while holding the lease: its refresh
       * is in doubt. Decide by the provider's declared facts.
       */
      const recoverInDoubt = Effect.fnUntraced(function* (
        flight: Flight,
        provider: Provider,
        c: Connection,
        keeper: Keeper,
        need: RefreshNeed
      ): Effect.fn.Return<Connection, TokenError> {
        const journal = c.journal!
        const refreshToken =
          c.tokens.refreshToken === undefined ? undefined : Redacted.value(c.tokens.refreshToken)
        if (refreshToken !== undefined && fingerprint(refreshToken) === journal.fingerprint) {
          flight.trace.inDoubt = true
        }
        if (refreshToken === undefined || fingerprint(refreshToken) !== journal.fingerprint) {
          // The entry does not describe the stored token (written over by a re-link): nothing in doubt.
          const cleared = yield* setJournal(c, undefined)
          return yield* refreshHolding(flight, cleared, provider, keeper, need)
        }
        if (journal.resend !== undefined) {
          return yield* interrupted(c, provider, journal, "the one resend allowed got no answer either")
        }
        const lease = keeper.lease
        const elapsed = lease.grantedAt - journal.startedAt
        const grace = provider.refreshTokenReuse.graceSeconds * 1_000
        const safe =
          provider.refreshTokenPolicy === "reusable" || elapsed + config.requestTimeoutMs + margin < grace
        // This process's own entry, and no refresh of it in flight here: its answer was lost.
        const own = journal.holder === holder
        if (!safe && !own) {
          const suspectedAt = journal.suspectedAt ?? lease.grantedAt
          const waited = lease.grantedAt - suspectedAt
          if (journal.suspectedAt === undefined)
            yield* setJournal(c, { ...journal, suspectedAt }).pipe(Effect.ignore)
          if (waited < config.inDoubtAfterMs) {
            const retryAfterMs = config.inDoubtAfterMs - waited
            return yield* new RefreshError({
              reason: "in_doubt",
              connectionId: c.id,
              retryAfterMs,
              message: `Process ${journal.holder} sent this connection's refresh token at ${iso(journal.startedAt)} (store clock) and has not finished; it is treated as in doubt after ${config.inDoubtAfterMs} ms of silence (${retryAfterMs} ms from now)`
            })
          }
        }
        // The entry keeps naming the original sender; the resend is recorded beside it, once.
        const marked = yield* setJournal(c, {
          ...journal,
          resend: { holder, fence: lease.fence, at: lease.grantedAt }
        })
        return yield* sendAndCommit(flight, provider, marked, refreshToken, keeper, true)
      })

      // ---- credentials whose renewal spends nothing: client credentials, minted ----------------

      /** A token answer of a source that spends nothing, or why there is none. */
      type Obtained =
        | {
            readonly _tag: "Answer"
            readonly response: TokenSet.TokenResponse
            readonly answeredAt: number
            readonly answeredNs: bigint
          }
        | { readonly _tag: "Failed"; readonly failure: OAuth.ProtocolFailure }

      const answered = (response: TokenSet.TokenResponse) =>
        Effect.gen(function* () {
          return {
            _tag: "Answer",
            response,
            answeredAt: yield* Clock.currentTimeMillis,
            answeredNs: yield* Clock.monotonicTimeNanos
          } as Obtained
        })

      /** The parent's failure, said of the minted connection: its own status is left as it is. */
      const parentFailure =
        (c: Connection, parentId: string) =>
        (e: TokenError): Effect.Effect<never, TokenError> =>
          e._tag === "ReauthorizationRequired" || e._tag === "ConnectionNotFound"
            ? Effect.fail(
                new ReauthorizationRequired({
                  reason: "needs_reauth",
                  connectionId: c.id,
                  providerId: c.providerId,
                  message: `Connection ${c.id} is minted from connection ${parentId}, which ${e._tag === "ConnectionNotFound" ? "was unlinked" : "must be linked again"}; its token is minted again once the parent is linked`
                })
              )
            : Effect.fail(e)

      const mintFrom = Effect.fnUntraced(function* (parentId: string, accountId: string) {
        let parent = yield* credential(parentId)
        const { provider } = parent
        for (let renewed = false; ; renewed = true) {
          const context: MintContext = {
            parent: {
              accountId: parent.connection.accountId,
              extras: parent.connection.tokens.extras,
              profile: parent.connection.profile
            },
            accountId
          }
          const now = yield* Clock.currentTimeMillis
          const minted = yield* Mint.mint(provider, parent.credential, context, config, now).pipe(
            Effect.result
          )
          if (minted._tag === "Success") {
            const extras = provider.mint?.extras?.(context) ?? {}
            const obtained = yield* answered({ ...minted.success, ...extras })
            return { obtained, parent: parent.connection, provider }
          }
          const failure = minted.failure
          if (failure._tag === "Failed")
            return { obtained: failure as Obtained, parent: parent.connection, provider }
          if (renewed) {
            const refused = new OAuth.ProtocolFailure(
              "invalid_grant",
              `${provider.name} refused connection ${parentId}'s fresh token for minting`,
              { maybeProcessed: true }
            )
            return {
              obtained: { _tag: "Failed", failure: refused } as Obtained,
              parent: parent.connection,
              provider
            }
          }
          // The parent's token was refused: refresh the parent once (through this engine), mint again.
          const used = parent.credential.kind === "oauth" ? parent.credential.accessToken : undefined
          yield* refreshIf(parentId, (p) => Redacted.value(p.tokens.accessToken) === used)
          parent = yield* credential(parentId)
        }
      })

      const obtain = (c: Connection, provider: Provider): Effect.Effect<Obtained, TokenError> => {
        if (c.kind === "client_credentials") {
          return OAuth.clientCredentials(provider, protocol).pipe(
            Effect.matchEffect({
              onSuccess: answered,
              onFailure: (failure) => Effect.succeed<Obtained>({ _tag: "Failed", failure })
            })
          )
        }
        const parentId = c.parentId
        if (parentId === undefined) {
          return Effect.succeed<Obtained>({
            _tag: "Failed",
            failure: new OAuth.ProtocolFailure(
              "unsupported",
              `connection ${c.id} names no parent to mint from`
            )
          })
        }
        return mintFrom(parentId, c.accountId).pipe(
          Effect.map((m) => m.obtained),
          Effect.catch(parentFailure(c, parentId))
        )
      }

      /**
       * Renew a credential whose request spends nothing (the client-credentials grant, minting from
       * a parent): no journal — a lost answer is simply asked again — and transient failures are
       * retried while the lease leaves room. The lease and the single flight still make it one
       * request per expiry across every process.
       */
      const renewIdempotent = Effect.fnUntraced(function* (
        flight: Flight,
        c: Connection,
        provider: Provider,
        keeper: Keeper
      ): Effect.fn.Return<Connection, TokenError> {
        const previous = fingerprint(Redacted.value(c.tokens.accessToken))
        for (let attempt = 0; ; attempt++) {
          // Shutting down meanwhile: nothing is spent by this request; it is simply not made.
          if (yield* awaitTurn(flight, attempt > 0)) return yield* drainingError(c.id)
          const startedAt = yield* Clock.currentTimeMillis
          if (leaseLeft(keeper, startedAt) < minRequest) {
            return yield* new RefreshError({
              reason: "transient",
              connectionId: c.id,
              message: `${provider.name}: not enough time left on the refresh lease to renew connection ${c.id} (the store is slow or unreachable)`
            })
          }
          flight.trace.attempts++
          const outcome = yield* obtain(c, provider)
          if (outcome._tag === "Answer") {
            const tokens = yield* Effect.try({
              try: () =>
                TokenSet.fromResponse(provider, outcome.response, outcome.answeredAt, {
                  ...c.tokens,
                  refreshToken: undefined,
                  refreshExpiresAt: undefined
                }),
              catch: () =>
                new RefreshError({
                  reason: "invalid_response",
                  connectionId: c.id,
                  message: `${provider.name}: the token response has invalid extra fields`
                })
            })
            return yield* commit(
              flight,
              c,
              // Nothing newer is stored: the row still holds the token this renewal replaces.
              (fresh) => fingerprint(Redacted.value(fresh.tokens.accessToken)) === previous,
              (current) => ({
                ...current,
                tokens: { ...tokens, refreshToken: undefined, refreshExpiresAt: undefined },
                status: "active",
                journal: undefined,
                lastRefreshAt: outcome.answeredAt,
                lastError: undefined
              }),
              (written) => [refreshedEvent(written, false)],
              outcome.answeredNs,
              keeper
            )
          }
          const failure = outcome.failure
          const now = yield* Clock.currentTimeMillis
          // Nothing was spent: whatever did not come back can be asked again.
          const retryable = failure.retryable || failure.kind === "transient"
          if (retryable && attempt + 1 < config.maxAttempts) {
            const wait = yield* backoff(attempt, failure.details.retryAfterMs)
            if (now + wait + minRequest < keeper.deadline - margin) {
              yield* noteRetry(c, failure, now, wait, `${provider.name}: ${failure.message}`)
              // Nothing is in doubt here: a retry that a shutdown leaves no time for ends the renewal.
              if (!(yield* waitToRetry(wait))) return yield* drainingError(c.id)
              continue
            }
          }
          if (failure.kind === "invalid_grant" || failure.kind === "unsupported") {
            // The provider will not mint for this account any more (or cannot): link it again.
            return yield* markNeedsReauth(
              c,
              "needs_reauth",
              `${provider.name}: ${failure.message}. Link the account again.`,
              failure.details.error
            )
          }
          const reason: RefreshError["reason"] = retryable
            ? failure.kind === "rate_limited"
              ? "rate_limited"
              : failure.kind === "invalid_response"
                ? "invalid_response"
                : "transient"
            : "invalid_client"
          const message =
            reason === "invalid_client"
              ? `${provider.name} refused the client's own credentials: ${failure.message} (check the client id, secret and allowed grants)`
              : `${provider.name}: ${failure.message}`
          yield* recordFailure(c, reason, message, now, failure.details.retryAfterMs, false)
          return yield* new RefreshError({
            reason,
            connectionId: c.id,
            message,
            ...(failure.details.status !== undefined ? { status: failure.details.status } : {}),
            ...(failure.details.retryAfterMs !== undefined
              ? { retryAfterMs: failure.details.retryAfterMs }
              : {})
          })
        }
      })

      /** The refresh proper, run while holding the lease. */
      const refreshHolding = Effect.fnUntraced(function* (
        flight: Flight,
        c: Connection,
        provider: Provider,
        keeper: Keeper,
        need: RefreshNeed,
        attempt = 0
      ): Effect.fn.Return<Connection, TokenError> {
        const journal = c.journal
        if (journal !== undefined && !(journal.holder === holder && journal.fence === keeper.lease.fence)) {
          return yield* recoverInDoubt(flight, provider, c, keeper, need)
        }
        const now = yield* Clock.currentTimeMillis
        if (!need(c, now)) {
          flight.trace.outcome = "shared"
          return c
        }
        if (c.kind === "api_key") return c
        if (c.kind === "client_credentials" || c.kind === "minted") {
          return yield* renewIdempotent(flight, c, provider, keeper)
        }
        if (c.tokens.refreshToken === undefined) {
          return yield* markNeedsReauth(
            c,
            "no_refresh_token",
            `${provider.name} gave no refresh token and the access token expired; link the account again`
          )
        }
        if (TokenSet.refreshTokenExpired(c.tokens, now)) {
          return yield* markNeedsReauth(
            c,
            "refresh_token_expired",
            `The ${provider.name} refresh token expired; link the account again`
          )
        }
        const refreshToken = Redacted.value(c.tokens.refreshToken)
        // The request's turn (`pace`: the Refresher's rate slot), reserved and approached before the
        // journal is written: a stop or a crash during the wait leaves nothing in doubt.
        if (yield* approachTurn(flight)) return yield* drainingError(c.id)
        // The journal, durable before the token leaves this process. Its compare-and-set also fences
        // a stale read: a copy that is no longer the stored one never gets its token sent.
        const journalFrom = yield* Clock.monotonicTimeNanos
        const journaled = yield* setJournal(c, {
          holder,
          fence: keeper.lease.fence,
          startedAt: keeper.lease.grantedAt,
          fingerprint: fingerprint(refreshToken)
        }).pipe(Effect.result)
        noteJournal(Number((yield* Clock.monotonicTimeNanos) - journalFrom) / 1e6)
        if (journaled._tag === "Failure") {
          const error = journaled.failure
          if (!isConflict(error)) return yield* error
          if (attempt >= 3) {
            return yield* new RefreshError({
              reason: "conflict",
              connectionId: c.id,
              message: `Connection ${c.id} kept changing as its refresh started; try again`
            })
          }
          const fresh = yield* load(c.id).pipe(Effect.flatMap(ensureActive))
          return yield* refreshHolding(flight, fresh, provider, keeper, need, attempt + 1)
        }
        return yield* sendAndCommit(flight, provider, journaled.success, refreshToken, keeper, false)
      })

      /**
       * The copy to refresh from, once the lease is won: the store's, read again (another process may
       * have refreshed while we waited) — or a record read before the lease, when all it can lead to
       * is the journal's compare-and-set over its version: an active refresh-token connection, due,
       * with no journal, a refresh token that has not expired. That record is the one the Refresher
       * claimed (`claimed`), or else the one this process last read or wrote (`Connections.known`: an
       * on-demand caller has just read it, a waiter for another's lease has just read it again). If
       * the row changed since it was read, that write fails and `refreshHolding` reads it again and
       * decides on the fresh copy; if it did not, the record IS the stored one, and the read is
       * saved (a store round trip per on-demand refresh on PostgreSQL and Redis). Either way no token
       * of a stale copy is ever sent. Anything else (another kind, a journal, a status to check) is
       * decided on a fresh read.
       */
      const afterLease = (id: string, need: RefreshNeed, claimed: ConnectionRecord | undefined) => {
        const read = claimed !== undefined && claimed.id === id ? claimed : connections.known(id)
        if (read === undefined) return load(id)
        return connections.decode(read).pipe(
          Effect.flatMap((c) =>
            Effect.clockWith((clock) => {
              const now = clock.currentTimeMillisUnsafe()
              return c.kind === "oauth" &&
                c.status === "active" &&
                c.journal === undefined &&
                c.tokens.refreshToken !== undefined &&
                !TokenSet.refreshTokenExpired(c.tokens, now) &&
                need(c, now)
                ? Effect.succeed(c)
                : load(id)
            })
          ),
          Effect.catchTag("VaultError", () => load(id))
        )
      }

      /** Win the lease (or see someone else's refresh land), then refresh. */
      const refreshWithLease = Effect.fnUntraced(function* (
        flight: Flight,
        id: string,
        need: RefreshNeed,
        claimed: ConnectionRecord | undefined
      ): Effect.fn.Return<Connection, TokenError> {
        const startedAt = yield* Clock.currentTimeMillis
        const startedNs = yield* Clock.monotonicTimeNanos
        const waited = Effect.map(Clock.monotonicTimeNanos, (ns) => Number((ns - startedNs) / 1_000n) / 1_000)
        let pollMs = 10
        for (;;) {
          const askedAt = yield* Clock.currentTimeMillis
          const lease = yield* store.acquireLease(id, holder, ttl)
          if (lease !== undefined) {
            flight.trace.leaseWaitMs = yield* waited
            const { keeper, stop } = yield* keepLease(lease, askedAt)
            return yield* Effect.gen(function* () {
              // Re-read after winning (or the claimed copy, fenced by the journal's compare-and-set).
              const loaded = yield* afterLease(id, need, claimed)
              flight.trace.providerId = loaded.providerId
              flight.trace.kind = loaded.kind
              const c = yield* ensureActive(loaded)
              const provider = yield* providers.get(c.providerId)
              const refreshed = yield* refreshHolding(flight, c, provider, keeper, need)
              // The outcome is durable: the callers sharing this flight get it now, before the lease
              // is let go and the span and metrics are closed (none of which they wait for).
              yield* Deferred.succeed(flight.waiters, refreshed)
              return refreshed
            }).pipe(
              Effect.ensuring(
                stop.pipe(
                  Effect.andThen(
                    Effect.suspend(() => (keeper.released ? Effect.void : store.releaseLease(keeper.lease)))
                  ),
                  Effect.ignore
                )
              )
            )
          }
          // Another process holds the lease: wait for its result to land, or for the lease to lapse.
          const now = yield* Clock.currentTimeMillis
          flight.trace.leaseWaitMs = yield* waited
          const loaded = yield* load(id)
          flight.trace.providerId = loaded.providerId
          flight.trace.kind = loaded.kind
          const current = yield* ensureActive(loaded)
          if (!need(current, now)) {
            flight.trace.outcome = "shared"
            return current
          }
          if (flight.onLeaseHeld !== undefined) {
            // The holder's to refresh: not waited for (see `RefreshOptions.onLeaseHeld`).
            flight.trace.outcome = "skipped"
            flight.onLeaseHeld()
            return current
          }
          if (now - startedAt > 2 * ttl) {
            return yield* new RefreshError({
              reason: "lease_timeout",
              connectionId: id,
              message: `Connection ${id} has been refreshing elsewhere for too long; try again`
            })
          }
          const jitter = yield* Random.next
          yield* Effect.sleep(Math.ceil(pollMs * (0.5 + jitter)))
          pollMs = Math.min(250, pollMs * 2)
        }
      })

      const refreshIf = (
        id: string,
        need: RefreshNeed,
        claimed?: ConnectionRecord | undefined,
        options?: RefreshOptions | undefined
      ): Effect.Effect<Connection, TokenError> =>
        Effect.suspend(() => {
          const running = inflight.get(id)
          if (running !== undefined) {
            return Deferred.await(running.waiters).pipe(
              Effect.flatMap((c) =>
                Effect.flatMap(Clock.currentTimeMillis, (now) =>
                  need(c, now) ? refreshIf(id, need, undefined, options) : Effect.succeed(c)
                )
              )
            )
          }
          if (closing) return Effect.fail(drainingError(id))
          const flight: Flight = {
            waiters: Deferred.makeUnsafe(),
            done: Deferred.makeUnsafe(),
            pace: options?.pace,
            onLeaseHeld: options?.onLeaseHeld,
            slotTaken: false,
            turn: undefined,
            trace: {
              providerId: undefined,
              kind: undefined,
              outcome: undefined,
              attempts: 0,
              leaseWaitMs: undefined,
              inDoubt: false
            }
          }
          inflight.set(id, flight)
          // One look at the tracer: the span and its attributes only where a tracing backend is installed.
          const leader = Effect.flatMap(tracing, (traced) => {
            const refresh = refreshWithLease(flight, id, need, claimed).pipe(
              Effect.onExit((exit) =>
                Effect.andThen(
                  traced ? Effect.annotateCurrentSpan(spanAttributes(flight.trace, exit)) : Effect.void,
                  flight.trace.leaseWaitMs === undefined
                    ? Effect.void
                    : Metric.update(
                        tagged(telemetry.leaseWait, {
                          provider: flight.trace.providerId ?? "unknown",
                          outcome: Exit.isSuccess(exit) ? (flight.trace.outcome ?? "shared") : "failed"
                        }),
                        flight.trace.leaseWaitMs
                      )
                )
              )
            )
            return traced
              ? refresh.pipe(refreshSpanOf("TokenManager.refresh", { "latchkey.connection_id": id }))
              : refresh
          }).pipe(
            Effect.exit,
            Effect.flatMap((exit) =>
              Effect.sync(() => {
                inflight.delete(id)
              }).pipe(
                Effect.andThen(Deferred.done(flight.waiters, exit)),
                Effect.andThen(Deferred.succeed(flight.done, undefined))
              )
            ),
            Effect.uninterruptible
          )
          // Started at once, in this tick (not on the scheduler's next turn): the leader runs up to its
          // first wait (the store or the provider) before the caller waits for it.
          return Effect.forkDetach(leader, { startImmediately: true }).pipe(
            Effect.andThen(Deferred.await(flight.waiters))
          )
        })

      const expired: RefreshNeed = (c, now) => !TokenSet.isFresh(c.tokens, now, config.skewMs)

      const credential = Effect.fnUntraced(function* (id: string) {
        let c = yield* load(id).pipe(Effect.flatMap(ensureActive))
        const provider = yield* providers.get(c.providerId)
        if (c.kind === "api_key") {
          return {
            credential: { kind: "api_key", apiKey: Redacted.value(c.tokens.accessToken) } as Credential,
            connection: c,
            provider
          }
        }
        const now = yield* Clock.currentTimeMillis
        if (expired(c, now)) c = yield* refreshIf(id, expired)
        return {
          credential: {
            kind: "oauth",
            accessToken: Redacted.value(c.tokens.accessToken),
            tokenType: c.tokens.tokenType
          } as Credential,
          connection: c,
          provider
        }
      })

      const tokenOf = (id: string, c: Connection) =>
        c.status !== "active"
          ? Effect.flatMap(ensureActive(c), (active) => Effect.succeed(active.tokens.accessToken))
          : Effect.clockWith((clock) =>
              c.kind === "api_key" || !expired(c, clock.currentTimeMillisUnsafe())
                ? Effect.succeed(c.tokens.accessToken)
                : Effect.map(refreshIf(id, expired), (fresh) => fresh.tokens.accessToken)
            )

      // The hot path: one store read; the decoded connection is reused while the record is unchanged.
      const accessToken = (id: string): Effect.Effect<Redacted.Redacted<string>, TokenError> =>
        Effect.flatMap(
          store.get(id),
          (r): Effect.Effect<Redacted.Redacted<string>, TokenError> =>
            r === undefined
              ? Effect.fail(notFound(id))
              : Effect.flatMap(connections.decode(r), (c) => tokenOf(id, c))
        )

      const refreshNow = (id: string) =>
        Effect.flatMap(Clock.currentTimeMillis, (calledAt) =>
          refreshIf(id, (c) => c.lastRefreshAt === undefined || c.lastRefreshAt < calledAt)
        )

      const isDue: RefreshNeed = (c, now) => {
        const due = refreshDueAt(c.tokens, c.status, config, c.kind, c.failures?.nextAttemptAt)
        return due !== null && due <= now
      }

      const refreshIfDue = (
        id: string,
        claimed?: ConnectionRecord | undefined,
        options?: RefreshOptions | undefined
      ) => refreshIf(id, isDue, claimed, options)

      const drain = Effect.gen(function* () {
        closing = true
        drainDeadline = (yield* Clock.currentTimeMillis) + config.drainTimeoutMs
        Deferred.doneUnsafe(closed, Effect.void)
        const flights = [...inflight.values()]
        const all = Effect.forEach(flights, (f) => Deferred.await(f.done), { discard: true })
        const finished = yield* all.pipe(Effect.timeoutOption(config.drainTimeoutMs))
        if (finished._tag === "Some") return { finished: flights.length, abandoned: 0 }
        // Out of time: write retries give up; the journal leaves those refreshes to be recovered.
        stopping = true
        yield* all.pipe(Effect.timeoutOption(Math.max(1_000, config.writeMaxBackoffMs * 2)))
        const abandoned = flights.filter((f) => !Deferred.isDoneUnsafe(f.done)).length
        return { finished: flights.length - abandoned, abandoned }
      })

      yield* Effect.addFinalizer(() => drain)

      return TokenManager.of({
        accessToken,
        credential,
        refreshIf,
        refreshNow,
        refreshIfDue,
        get: load,
        mintFrom: (parentId: string, accountId: string) =>
          mintFrom(parentId, accountId).pipe(
            Effect.flatMap(({ obtained, parent, provider }) =>
              obtained._tag === "Answer"
                ? Effect.succeed({
                    response: obtained.response,
                    answeredAt: obtained.answeredAt,
                    parent,
                    provider
                  })
                : Effect.fail(
                    new RefreshError({
                      reason:
                        obtained.failure.kind === "rate_limited"
                          ? "rate_limited"
                          : obtained.failure.retryable || obtained.failure.kind === "transient"
                            ? "transient"
                            : "invalid_response",
                      connectionId: parentId,
                      message: `${provider.name}: ${obtained.failure.message}`
                    })
                  )
            )
          ),
        drain,
        inFlight: Effect.sync(() => inflight.size)
      })
    })
  )
}
