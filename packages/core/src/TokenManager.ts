/**
 * `accessToken(connectionId)`: a valid access token, refreshed first when it is within the skew of
 * expiry. The invariants it keeps (DESIGN.md 1-4):
 *
 * 1. One refresh per connection at a time: callers in this process share one in-flight refresh
 *    (single flight); processes share the store's lease, and the winner re-reads the connection
 *    after winning, so a refresh token already used by another process is never sent again.
 * 2. New tokens are written to the store (compare-and-set on the version) before any caller gets them.
 * 3. `invalid_grant` re-reads the store first; only a real rejection marks the connection
 *    `needs_reauth`, keeping the provider's error.
 * 4. Transient failures (network, 5xx, 429, timeout) are retried with exponential backoff and full
 *    jitter, honouring `Retry-After`, within the lease; they never mark a connection `needs_reauth`.
 *
 * The refresh itself runs in a detached, uninterruptible fiber: a caller that gives up (timeout,
 * client disconnect) never interrupts a refresh between the provider's answer and the write.
 */
import { Clock, Context, Deferred, Effect, Layer, Random, Redacted, Result } from "effect"
import { LatchkeyConfig } from "./Config.ts"
import type { Connection, ConnectionRecord } from "./Connection.ts"
import * as ConnectionModule from "./Connection.ts"
import { ConnectionStore, type Lease } from "./ConnectionStore.ts"
import {
  type AuthorizationError,
  ConnectionNotFound,
  ReauthorizationRequired,
  RefreshError,
  type StoreError,
  type VaultError
} from "./Errors.ts"
import { Events } from "./Events.ts"
import { refreshDueAt } from "./internal/due.ts"
import * as OAuth from "./OAuth.ts"
import type { Credential, Provider } from "./Provider.ts"
import { Providers } from "./Providers.ts"
import * as TokenSet from "./TokenSet.ts"
import { Vault } from "./Vault.ts"

export type TokenError =
  | ConnectionNotFound
  | ReauthorizationRequired
  | RefreshError
  | StoreError
  | VaultError
  | AuthorizationError

/** A predicate deciding, on the freshest stored copy, whether a refresh is still needed. */
export type RefreshNeed = (connection: Connection, now: number) => boolean

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
  /** Refresh if the Refresher's schedule says it is due. */
  readonly refreshIfDue: (connectionId: string) => Effect.Effect<Connection, TokenError>
  /** The decoded connection. */
  readonly get: (
    connectionId: string
  ) => Effect.Effect<Connection, ConnectionNotFound | StoreError | VaultError>
  /** Write a connection change (compare-and-set on `connection.version - 1`). */
  readonly write: (connection: Connection) => Effect.Effect<void, StoreError>
}

const notFound = (id: string) => new ConnectionNotFound({ connectionId: id, message: `No connection ${id}` })

export class TokenManager extends Context.Service<TokenManager, TokenManagerShape>()(
  "@latchkey/core/TokenManager"
) {
  static readonly layer = Layer.effect(
    TokenManager,
    Effect.gen(function* () {
      const store = yield* ConnectionStore
      const vault = yield* Vault
      const providers = yield* Providers
      const events = yield* Events
      const config = yield* LatchkeyConfig
      const protocol: OAuth.ProtocolOptions = { timeoutMs: config.requestTimeoutMs, fetch: config.fetch }

      // Decoded connections by id, reused while the stored record is unchanged (hot path).
      const decoded = new Map<
        string,
        { readonly record: ConnectionRecord; readonly connection: Connection }
      >()
      const inflight = new Map<string, Deferred.Deferred<Connection, TokenError>>()

      const decode = (record: ConnectionRecord): Effect.Effect<Connection, VaultError> => {
        const hit = decoded.get(record.id)
        if (
          hit !== undefined &&
          hit.record.version === record.version &&
          hit.record.accessToken === record.accessToken
        ) {
          return Effect.succeed(hit.connection)
        }
        return ConnectionModule.fromRecord(vault, record).pipe(
          Effect.tap((connection) =>
            Effect.sync(() => {
              if (decoded.size > 10_000) decoded.clear()
              decoded.set(record.id, { record, connection })
            })
          )
        )
      }

      const load = (id: string): Effect.Effect<Connection, ConnectionNotFound | StoreError | VaultError> =>
        store
          .get(id)
          .pipe(
            Effect.flatMap(
              (r): Effect.Effect<Connection, ConnectionNotFound | VaultError> =>
                r === undefined ? Effect.fail(notFound(id)) : decode(r)
            )
          )

      const write = (connection: Connection): Effect.Effect<void, StoreError> =>
        store.update(
          ConnectionModule.toRecord(
            vault,
            connection,
            refreshDueAt(connection.tokens, connection.status, config)
          ),
          connection.version - 1
        )

      /** Write, retrying transient store failures (not conflicts) a few times with backoff. */
      const writeDurably = (connection: Connection): Effect.Effect<void, StoreError> =>
        Effect.gen(function* () {
          for (let attempt = 0; ; attempt++) {
            const result = yield* write(connection).pipe(Effect.result)
            if (result._tag === "Success") return
            const error = result.failure
            if (error.reason === "conflict" || !error.isRetryable || attempt >= 5) return yield* error
            yield* Effect.sleep(Math.min(2_000, 50 * 2 ** attempt))
          }
        })

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
          : Effect.fail(reauthError(c, c.status === "revoked" ? "revoked" : "needs_reauth"))

      /** Mark needs_reauth (compare-and-set); if someone else changed the row meanwhile, return theirs. */
      const markNeedsReauth = Effect.fnUntraced(function* (
        c: Connection,
        reason: ReauthorizationRequired["reason"],
        message: string,
        providerError?: string,
        providerErrorDescription?: string
      ): Effect.fn.Return<never, TokenError> {
        const now = yield* Clock.currentTimeMillis
        const next: Connection = {
          ...c,
          status: "needs_reauth",
          version: c.version + 1,
          updatedAt: now,
          lastError: {
            code: providerError ?? reason,
            description: providerErrorDescription ?? message,
            at: now
          }
        }
        const wrote = yield* write(next).pipe(
          Effect.as(true),
          Effect.catchTag("StoreError", (e) =>
            e.reason === "conflict" ? Effect.succeed(false) : Effect.fail(e)
          )
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
        yield* events.publish({
          type: "needs_reauth",
          at: now,
          connectionId: c.id,
          ownerId: c.ownerId,
          providerId: c.providerId,
          reason,
          message
        })
        return yield* new ReauthorizationRequired({
          reason,
          connectionId: c.id,
          providerId: c.providerId,
          message,
          ...(providerError ? { providerError } : {}),
          ...(providerErrorDescription ? { providerErrorDescription } : {})
        })
      })

      /** Backoff with full jitter, at least the server's Retry-After, capped. */
      const backoff = (attempt: number, retryAfterMs: number | undefined) =>
        Effect.gen(function* () {
          const exp = Math.min(config.maxBackoffMs, config.baseBackoffMs * 2 ** attempt)
          const jittered = Math.floor((yield* Random.next) * exp)
          return Math.min(config.maxBackoffMs, Math.max(jittered, retryAfterMs ?? 0))
        })

      /** Call the provider, retrying transient failures while the lease leaves room for another attempt. */
      const callProvider = Effect.fnUntraced(function* (
        provider: Provider,
        c: Connection,
        refreshToken: string,
        lease: Lease
      ): Effect.fn.Return<{ response: OAuth.ProtocolFailure | TokenSet.TokenResponse; ambiguous: boolean }> {
        let ambiguous = false
        // Never let the lease lapse while a request is in flight: another process could then take
        // over and send the same refresh token. Every attempt ends (aborted) a margin before the lease.
        const margin = Math.min(1_000, config.leaseTtlMs / 4)
        for (let attempt = 0; ; attempt++) {
          const startedAt = yield* Clock.currentTimeMillis
          const budget = Math.min(config.requestTimeoutMs, lease.expiresAt - margin - startedAt)
          const result =
            budget <= 0
              ? Result.fail(
                  new OAuth.ProtocolFailure("transient", "refresh: no time left on the refresh lease")
                )
              : yield* OAuth.refresh(provider, { ...protocol, timeoutMs: budget }, refreshToken).pipe(
                  Effect.result
                )
          if (result._tag === "Success") return { response: result.success, ambiguous }
          const failure = result.failure
          if (!failure.retryable || attempt + 1 >= config.maxAttempts) return { response: failure, ambiguous }
          if (failure.details.maybeProcessed) ambiguous = true
          const wait = yield* backoff(attempt, failure.details.retryAfterMs)
          const now = yield* Clock.currentTimeMillis
          // Retry only when a useful attempt still fits in the lease after the wait.
          if (now + wait + Math.min(config.requestTimeoutMs, 1_000) + margin >= lease.expiresAt)
            return { response: failure, ambiguous }
          yield* events.publish({
            type: "refresh_failed",
            at: now,
            connectionId: c.id,
            ownerId: c.ownerId,
            providerId: c.providerId,
            reason: failure.kind,
            message: `${failure.message}; retrying in ${wait} ms`,
            retryable: true
          })
          yield* Effect.sleep(wait)
        }
      })

      /** The refresh proper, run while holding the lease. */
      const refreshHoldingLease = Effect.fnUntraced(function* (
        id: string,
        need: RefreshNeed,
        lease: Lease
      ): Effect.fn.Return<Connection, TokenError> {
        // Re-read after winning: another process may have refreshed while we waited.
        const c = yield* load(id).pipe(Effect.flatMap(ensureActive))
        const now = yield* Clock.currentTimeMillis
        if (!need(c, now)) return c
        const provider = yield* providers.get(c.providerId)
        if (c.kind === "api_key") return c
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
        const { response, ambiguous } = yield* callProvider(
          provider,
          c,
          Redacted.value(c.tokens.refreshToken),
          lease
        )
        const after = yield* Clock.currentTimeMillis
        if (response instanceof OAuth.ProtocolFailure) {
          if (response.kind === "invalid_grant" || response.kind === "invalid_client") {
            // Invariant 3: re-read first. Another worker may have refreshed (e.g. its lease expired
            // into ours); then its tokens are good and nothing is wrong.
            const current = yield* load(id)
            if (current.version !== c.version) {
              yield* ensureActive(current)
              if (!need(current, after)) return current
            }
            if (response.kind === "invalid_client") {
              yield* events.publish({
                type: "refresh_failed",
                at: after,
                connectionId: c.id,
                ownerId: c.ownerId,
                providerId: c.providerId,
                reason: "invalid_client",
                message: `${provider.name}: ${response.message} (check the client id and secret)`,
                retryable: false
              })
              return yield* new RefreshError({
                reason: "invalid_response",
                connectionId: c.id,
                message: `${provider.name} rejected the client credentials: ${response.message}`,
                ...(response.details.status !== undefined ? { status: response.details.status } : {})
              })
            }
            return yield* markNeedsReauth(
              c,
              "invalid_grant",
              ambiguous
                ? `${provider.name} rejected the refresh token after an earlier attempt got no usable answer: the token was most likely rotated by that attempt and its answer lost in transit. Link the account again.`
                : `${provider.name} rejected the refresh token (${response.details.error ?? "invalid_grant"}${response.details.description ? `: ${response.details.description}` : ""}). Link the account again.`,
              response.details.error ?? "invalid_grant",
              response.details.description
            )
          }
          const reason: RefreshError["reason"] =
            response.kind === "rate_limited"
              ? "rate_limited"
              : response.kind === "invalid_response"
                ? "invalid_response"
                : "transient"
          const message = `${provider.name}: ${response.message}`
          yield* write({
            ...c,
            version: c.version + 1,
            updatedAt: after,
            lastError: { code: reason, description: message, at: after }
          }).pipe(Effect.ignore)
          yield* events.publish({
            type: "refresh_failed",
            at: after,
            connectionId: c.id,
            ownerId: c.ownerId,
            providerId: c.providerId,
            reason,
            message,
            retryable: true
          })
          return yield* new RefreshError({
            reason,
            connectionId: c.id,
            message,
            ...(response.details.status !== undefined ? { status: response.details.status } : {}),
            ...(response.details.retryAfterMs !== undefined
              ? { retryAfterMs: response.details.retryAfterMs }
              : {})
          })
        }
        const tokens = yield* Effect.try({
          try: () => TokenSet.fromResponse(provider, response, after, c.tokens),
          catch: () =>
            new RefreshError({
              reason: "invalid_response",
              connectionId: c.id,
              message: `${provider.name}: the refresh response has invalid extra fields`
            })
        })
        const next: Connection = {
          ...c,
          tokens,
          version: c.version + 1,
          updatedAt: after,
          lastRefreshAt: after,
          lastError: undefined
        }
        // Invariant 2: durable before anyone receives it. The provider may already have consumed the
        // old refresh token, so a store hiccup here is retried rather than dropping the new tokens.
        yield* writeDurably(next)
        yield* events.publish({
          type: "refreshed",
          at: after,
          connectionId: c.id,
          ownerId: c.ownerId,
          providerId: c.providerId,
          expiresAt: tokens.expiresAt,
          refreshExpiresAt: tokens.refreshExpiresAt
        })
        return next
      })

      /** Win the lease (or see someone else's refresh land), then refresh. */
      const refreshWithLease = Effect.fnUntraced(function* (
        id: string,
        need: RefreshNeed
      ): Effect.fn.Return<Connection, TokenError> {
        const startedAt = yield* Clock.currentTimeMillis
        let pollMs = 10
        for (;;) {
          const now = yield* Clock.currentTimeMillis
          const lease = yield* store.acquireLease(id, config.holderId, config.leaseTtlMs, now)
          if (lease !== undefined) {
            return yield* refreshHoldingLease(id, need, lease).pipe(
              Effect.ensuring(store.releaseLease(lease).pipe(Effect.ignore))
            )
          }
          // Another process holds the lease: wait for its result to land, or for the lease to lapse.
          const current = yield* load(id).pipe(Effect.flatMap(ensureActive))
          if (!need(current, now)) return current
          if (now - startedAt > 2 * config.leaseTtlMs) {
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

      const refreshIf = (id: string, need: RefreshNeed): Effect.Effect<Connection, TokenError> =>
        Effect.suspend(() => {
          const running = inflight.get(id)
          if (running !== undefined) {
            return Deferred.await(running).pipe(
              Effect.flatMap((c) =>
                Effect.flatMap(Clock.currentTimeMillis, (now) =>
                  need(c, now) ? refreshIf(id, need) : Effect.succeed(c)
                )
              )
            )
          }
          const deferred = Deferred.makeUnsafe<Connection, TokenError>()
          inflight.set(id, deferred)
          const leader = refreshWithLease(id, need).pipe(
            Effect.exit,
            Effect.flatMap((exit) =>
              Effect.sync(() => {
                inflight.delete(id)
              }).pipe(Effect.andThen(Deferred.done(deferred, exit)))
            ),
            Effect.uninterruptible
          )
          return Effect.forkDetach(leader).pipe(Effect.andThen(Deferred.await(deferred)))
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
        Effect.flatMap(store.get(id), (r): Effect.Effect<Redacted.Redacted<string>, TokenError> => {
          if (r === undefined) return Effect.fail(notFound(id))
          const hit = decoded.get(id)
          return hit !== undefined &&
            hit.record.version === r.version &&
            hit.record.accessToken === r.accessToken
            ? tokenOf(id, hit.connection)
            : Effect.flatMap(decode(r), (c) => tokenOf(id, c))
        })

      const refreshNow = (id: string) =>
        Effect.flatMap(Clock.currentTimeMillis, (calledAt) =>
          refreshIf(id, (c) => c.lastRefreshAt === undefined || c.lastRefreshAt < calledAt)
        )

      const refreshIfDue = (id: string) =>
        refreshIf(id, (c, now) => {
          const due = refreshDueAt(c.tokens, c.status, config)
          return due !== null && due <= now
        })

      return TokenManager.of({
        accessToken,
        credential,
        refreshIf,
        refreshNow,
        refreshIfDue,
        get: load,
        write
      })
    })
  )
}
