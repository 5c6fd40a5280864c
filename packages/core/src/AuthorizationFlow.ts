/**
 * Linking an account: `start` builds the authorize URL and keeps a single-use pending record
 * server-side (state, PKCE verifier, provider, redirect URI, owner, expiry); `complete` checks the
 * callback (state, `error`, RFC 9207 `iss`, expiry: the named checks of `Protocol`), exchanges the
 * code, identifies the account and stores the connection. Nothing is stored when any step fails.
 */
import { randomBytes, randomUUID } from "node:crypto"
import { Clock, Context, Effect, Layer, Redacted } from "effect"
import * as oidc from "openid-client"
import { LatchkeyConfig, type LatchkeyConfigShape } from "./Config.ts"
import * as Connection from "./Connection.ts"
import type { PendingAuthorization } from "./ConnectionStore.ts"
import { ConnectionStore } from "./ConnectionStore.ts"
import { AuthorizationError, type StoreError, type VaultError } from "./Errors.ts"
import { Events } from "./Events.ts"
import { allowsCredentials, proofsFor, sendScoped } from "./internal/credentialScope.ts"
import * as Dpop from "./internal/dpop.ts"
import { refreshDueAt } from "./internal/due.ts"
import * as OAuth from "./OAuth.ts"
import * as Protocol from "./Protocol.ts"
import type { AccountIdentity, Credential, Provider } from "./Provider.ts"
import { Providers } from "./Providers.ts"
import * as TokenSet from "./TokenSet.ts"
import { Vault } from "./Vault.ts"

export interface StartInput {
  readonly providerId: string
  /** The app's user who is linking an account. */
  readonly ownerId: string
  /** Scopes to request; default: the provider's. */
  readonly scopes?: ReadonlyArray<string> | undefined
  /** Extra authorize-URL parameters for this request (e.g. `login_hint`). */
  readonly params?: Readonly<Record<string, string>> | undefined
  /** JSON the app wants back at `complete` (e.g. where to return to). */
  readonly metadata?: Record<string, unknown> | undefined
}

export interface StartResult {
  readonly url: string
  readonly state: string
  readonly expiresAt: number
}

export interface CompleteInput {
  /** The callback URL as received, or just its query parameters. */
  readonly callback: string | URL | URLSearchParams
  /** When given, the state must have been issued for this provider. */
  readonly providerId?: string | undefined
  /** When given, the state must have been issued for this owner (the signed-in user). */
  readonly ownerId?: string | undefined
}

export interface CompleteResult {
  readonly connection: Connection.ConnectionSummary
  /** True when the same account was linked before and its tokens were replaced. */
  readonly relinked: boolean
  readonly metadata: Record<string, unknown> | undefined
}

export interface ProviderInitiatedInput {
  readonly providerId: string
  readonly ownerId: string
  readonly callback: string | URL | URLSearchParams
}

export interface ApiKeyInput {
  readonly providerId: string
  readonly ownerId: string
  readonly apiKey: string | Redacted.Redacted<string>
}

type FlowError = AuthorizationError | StoreError | VaultError

export interface AuthorizationFlowShape {
  readonly start: (input: StartInput) => Effect.Effect<StartResult, AuthorizationError | StoreError>
  readonly complete: (input: CompleteInput) => Effect.Effect<CompleteResult, FlowError>
  /**
   * A provider-initiated install (HighLevel public marketplace app): a code with no state of ours.
   * Only for providers that declare `providerInitiated: true`; `complete` never accepts such a callback.
   */
  readonly completeProviderInitiated: (
    input: ProviderInitiatedInput
  ) => Effect.Effect<CompleteResult, FlowError>
  /** Link with an API key instead of OAuth (providers with `apiKeys: true`). */
  readonly linkApiKey: (input: ApiKeyInput) => Effect.Effect<CompleteResult, FlowError>
}

/**
 * Authorize-URL parameters Latchkey sets itself and that `params` may not override: the state and
 * PKCE binding, where the code goes, and what is asked for (RFC 9700 §2.1, §4.1, §4.5).
 */
export const RESERVED_PARAMS: ReadonlySet<string> = new Set([
  "state",
  "response_type",
  "response_mode",
  "redirect_uri",
  "client_id",
  "code_challenge",
  "code_challenge_method",
  "scope",
  "request",
  "request_uri"
])

/** Characters that break (or smuggle into) an HTTP header value: controls and anything beyond ASCII. */
const HEADER_UNSAFE = /[^\x20-\x7e]/

/** An owner id is a non-empty string without NUL (which no SQL store can keep). */
const checkOwner = (providerId: string, ownerId: unknown) =>
  typeof ownerId === "string" && ownerId.length > 0 && !ownerId.includes("\u0000")
    ? Effect.void
    : Effect.fail(
        new AuthorizationError({
          reason: "invalid_request",
          providerId,
          message: "ownerId must be a non-empty string without NUL characters"
        })
      )

const authError = (
  reason: AuthorizationError["reason"],
  providerId: string | undefined,
  message: string,
  extra: { providerError?: string | undefined; providerErrorDescription?: string | undefined } = {}
) =>
  new AuthorizationError({
    reason,
    providerId,
    message,
    ...(extra.providerError !== undefined ? { providerError: extra.providerError } : {}),
    ...(extra.providerErrorDescription !== undefined
      ? { providerErrorDescription: extra.providerErrorDescription }
      : {})
  })

/** Messages name the provider by its display name; its id is the error's `providerId`. */
const fromProtocol = (provider: Provider, failure: OAuth.ProtocolFailure): AuthorizationError => {
  const reason: AuthorizationError["reason"] =
    failure.kind === "invalid_grant"
      ? "invalid_grant"
      : failure.kind === "invalid_client"
        ? "invalid_client"
        : failure.isRetryable
          ? "transient"
          : "exchange_failed"
  return authError(reason, provider.id, `${provider.name}: ${failure.message}`, {
    providerError: failure.details.error,
    providerErrorDescription: failure.details.description
  })
}

/** A fetch that carries the provider's auth headers, resolving relative URLs against its API base. */
export const authorizedFetch =
  (provider: Provider, credential: Credential, config: LatchkeyConfigShape) =>
  async (input: string | URL, init?: RequestInit): Promise<Response> => {
    const url = new URL(input, provider.apiBaseUrl)
    if (!allowsCredentials(provider, url)) {
      throw new TypeError(
        `${url.protocol}//${url.host} is not one of ${provider.name}'s API origins; its credentials are not sent there`
      )
    }
    return sendScoped(
      provider,
      provider.apiFetch ? provider.apiFetch(config.fetch) : config.fetch,
      url,
      { ...init, signal: init?.signal ?? AbortSignal.timeout(config.requestTimeoutMs) },
      provider.authorizeRequest(credential),
      proofsFor(credential)
    )
  }

export class AuthorizationFlow extends Context.Service<AuthorizationFlow, AuthorizationFlowShape>()(
  "@latchkey/core/AuthorizationFlow"
) {
  static readonly layer = Layer.effect(
    AuthorizationFlow,
    Effect.gen(function* () {
      const providers = yield* Providers
      const store = yield* ConnectionStore
      const vault = yield* Vault
      const events = yield* Events
      const config = yield* LatchkeyConfig
      const protocol: OAuth.ProtocolOptions = { timeoutMs: config.requestTimeoutMs, fetch: config.fetch }

      const start = Effect.fn("AuthorizationFlow.start")(function* (input: StartInput) {
        const provider = yield* providers.get(input.providerId)
        yield* checkOwner(provider.id, input.ownerId)
        const overriding = Object.keys(input.params ?? {}).filter((k) => RESERVED_PARAMS.has(k.toLowerCase()))
        if (overriding.length > 0) {
          return yield* authError(
            "invalid_request",
            provider.id,
            `startAuthorization: params may not set ${overriding.join(", ")}; Latchkey sets them itself`
          )
        }
        const now = yield* Clock.currentTimeMillis
        const state = randomBytes(32).toString("base64url")
        const verifier = provider.pkce === "S256" ? oidc.randomPKCECodeVerifier() : undefined
        const challenge =
          verifier === undefined
            ? undefined
            : yield* Effect.promise(() => oidc.calculatePKCECodeChallenge(verifier))
        const scopes = input.scopes ?? provider.scopes
        const url = yield* OAuth.authorizationUrl(provider, protocol, {
          state,
          redirectUri: provider.redirectUri,
          scopes,
          codeChallenge: challenge,
          extraParams: input.params
        }).pipe(Effect.mapError((f) => fromProtocol(provider, f)))
        if (provider.requiresUserinfo === true) {
          // Checked before the user is sent away, not after they consented.
          const userinfo = yield* OAuth.userinfoEndpoint(provider, protocol).pipe(
            Effect.mapError((f) => fromProtocol(provider, f))
          )
          if (userinfo === undefined) {
            return yield* authError(
              "identity_failed",
              provider.id,
              `${provider.name}: no user-info endpoint to identify the account with (none configured, none in the discovery document); give one or an identify function`
            )
          }
        }
        const dpopKey = provider.dpop === true ? yield* Effect.promise(() => Dpop.generateKey()) : undefined
        const pending: PendingAuthorization = {
          state,
          providerId: provider.id,
          ownerId: input.ownerId,
          redirectUri: provider.redirectUri,
          codeVerifier:
            verifier === undefined
              ? null
              : vault.seal(verifier, { connectionId: `pending:${state}`, field: "pkce" }),
          ...(dpopKey !== undefined
            ? { dpopKey: vault.seal(dpopKey, { connectionId: `pending:${state}`, field: "dpop" }) }
            : {}),
          scopes: [...scopes],
          createdAt: now,
          expiresAt: now + config.pendingTtlMs,
          metadata: input.metadata ?? null
        }
        yield* store.putPending(pending)
        return { url: url.href, state, expiresAt: pending.expiresAt }
      })

      const identify = (provider: Provider, tokens: TokenSet.TokenSet, credential: Credential) =>
        OAuth.userinfoEndpoint(provider, protocol).pipe(
          Effect.orElseSucceed(() => undefined),
          Effect.flatMap((userinfoEndpoint) =>
            Effect.tryPromise({
              try: () =>
                provider.identify({
                  tokens,
                  fetch: authorizedFetch(provider, credential, config),
                  userinfoEndpoint
                }),
              catch: (cause) =>
                authError(
                  "identity_failed",
                  provider.id,
                  `${provider.name}: could not identify the linked account (${cause instanceof Error ? cause.message : "unknown error"})`
                )
            }).pipe(
              Effect.flatMap((identity: AccountIdentity) =>
                typeof identity?.accountId === "string" && identity.accountId.length > 0
                  ? Effect.succeed(identity)
                  : Effect.fail(
                      authError(
                        "identity_failed",
                        provider.id,
                        `${provider.name}: identify returned no accountId`
                      )
                    )
              )
            )
          )
        )

      /** Insert, or replace the tokens of the same account linked before by the same owner. */
      const save = Effect.fnUntraced(function* (
        provider: Provider,
        ownerId: string,
        kind: Connection.ConnectionKind,
        tokens: TokenSet.TokenSet,
        identity: AccountIdentity,
        metadata: Record<string, unknown> | undefined
      ): Effect.fn.Return<CompleteResult, StoreError | VaultError> {
        for (let attempt = 0; ; attempt++) {
          const now = yield* Clock.currentTimeMillis
          const existing = yield* store.findByAccount(ownerId, provider.id, identity.accountId)
          const base: Connection.Connection = {
            id: existing?.id ?? `conn_${randomUUID()}`,
            ownerId,
            providerId: provider.id,
            accountId: identity.accountId,
            label: identity.label,
            kind,
            tokens,
            status: "active",
            version: existing ? existing.version + 1 : 1,
            createdAt: existing?.createdAt ?? now,
            updatedAt: now,
            lastRefreshAt: undefined,
            lastError: undefined,
            profile: identity.profile
          }
          const record = Connection.toRecord(vault, base, refreshDueAt(tokens, "active", config))
          const written = yield* (
            existing ? store.update(record, existing.version) : store.insert(record)
          ).pipe(
            Effect.as(true),
            Effect.catchTag("StoreError", (e) =>
              e.reason === "conflict" && attempt < 3 ? Effect.succeed(false) : Effect.fail(e)
            )
          )
          if (!written) continue
          const connection = Connection.summary(base)
          yield* events.publish({
            type: "linked",
            at: now,
            connectionId: connection.id,
            ownerId: connection.ownerId,
            providerId: connection.providerId,
            connection,
            relinked: existing !== undefined,
            ...(tokens.widenedScopes !== undefined ? { widenedScopes: tokens.widenedScopes } : {})
          })
          return { connection, relinked: existing !== undefined, metadata }
        }
      })

      const exchangeAndSave = Effect.fnUntraced(function* (
        provider: Provider,
        params: URLSearchParams,
        ownerId: string,
        redirectUri: string,
        expectedState: string | undefined,
        codeVerifier: string | undefined,
        scopes: ReadonlyArray<string>,
        metadata: Record<string, unknown> | undefined,
        pendingDpopKey: string | undefined
      ) {
        const expected = yield* OAuth.issuerCheck(provider, protocol).pipe(
          Effect.mapError((f) => fromProtocol(provider, f))
        )
        yield* Effect.fromResult(Protocol.authorizationResponse(params, provider, expected))
        const dpopKey =
          provider.dpop === true
            ? (pendingDpopKey ?? (yield* Effect.promise(() => Dpop.generateKey())))
            : undefined
        const response = yield* OAuth.exchangeCode(provider, protocol, {
          callbackParams: params,
          redirectUri,
          expectedState,
          codeVerifier,
          dpopKey
        }).pipe(Effect.mapError((f) => fromProtocol(provider, f)))
        const problem = TokenSet.unsafeResponse(response)
        if (problem !== undefined) {
          return yield* authError("exchange_failed", provider.id, `${provider.name}: ${problem}`)
        }
        const now = yield* Clock.currentTimeMillis
        const tokens = yield* Effect.try({
          try: (): TokenSet.TokenSet => {
            const made = TokenSet.fromResponse(provider, response, now, undefined, scopes)
            if (dpopKey === undefined) return made
            Dpop.bind(dpopKey, [response.access_token, response.refresh_token])
            return { ...made, dpopKey }
          },
          catch: () =>
            authError(
              "exchange_failed",
              provider.id,
              `${provider.name}: the token response has invalid extra fields`
            )
        })
        const identity = yield* identify(provider, tokens, {
          kind: "oauth",
          accessToken: Redacted.value(tokens.accessToken),
          tokenType: tokens.tokenType
        })
        return yield* save(provider, ownerId, "oauth", tokens, identity, metadata)
      })

      const complete = Effect.fn("AuthorizationFlow.complete")(function* (input: CompleteInput) {
        const params = Protocol.callbackParams(input.callback)
        const state = yield* Effect.fromResult(Protocol.callbackState(params, input))
        const now = yield* Clock.currentTimeMillis
        // The owner is checked by the store before the state is consumed: another user's callback
        // leaves the state usable by its owner.
        const taken = yield* store.takePending(state, now, input.ownerId)
        const pending = yield* Effect.fromResult(Protocol.pendingAuthorization(taken, now, input))
        const provider = yield* providers.get(pending.providerId)
        const verifier =
          pending.codeVerifier === null
            ? undefined
            : yield* vault.open(pending.codeVerifier, { connectionId: `pending:${state}`, field: "pkce" })
        const dpopKey =
          pending.dpopKey === undefined || pending.dpopKey === null
            ? undefined
            : yield* vault.open(pending.dpopKey, { connectionId: `pending:${state}`, field: "dpop" })
        return yield* exchangeAndSave(
          provider,
          params,
          pending.ownerId,
          pending.redirectUri,
          state,
          verifier,
          pending.scopes,
          pending.metadata ?? undefined,
          dpopKey
        )
      })

      const completeProviderInitiated = Effect.fn("AuthorizationFlow.completeProviderInitiated")(function* (
        input: ProviderInitiatedInput
      ) {
        const provider = yield* providers.get(input.providerId)
        yield* checkOwner(provider.id, input.ownerId)
        const params = yield* Effect.fromResult(
          Protocol.providerInitiatedCallback(Protocol.callbackParams(input.callback), provider)
        )
        return yield* exchangeAndSave(
          provider,
          params,
          input.ownerId,
          provider.redirectUri,
          undefined,
          undefined,
          provider.scopes,
          undefined,
          undefined
        )
      })

      const linkApiKey = Effect.fn("AuthorizationFlow.linkApiKey")(function* (input: ApiKeyInput) {
        const provider = yield* providers.get(input.providerId)
        if (provider.apiKeys !== true) {
          return yield* authError("provider_error", provider.id, `${provider.name} does not support API keys`)
        }
        yield* checkOwner(provider.id, input.ownerId)
        const key = Redacted.isRedacted(input.apiKey) ? input.apiKey : Redacted.make(input.apiKey)
        if (typeof Redacted.value(key) !== "string" || HEADER_UNSAFE.test(Redacted.value(key))) {
          return yield* authError(
            "invalid_request",
            provider.id,
            `${provider.name}: the API key has characters not allowed in an HTTP header (control characters or non-ASCII)`
          )
        }
        const now = yield* Clock.currentTimeMillis
        const tokens: TokenSet.TokenSet = {
          accessToken: key,
          refreshToken: undefined,
          tokenType: "api_key",
          obtainedAt: now,
          expiresAt: undefined,
          refreshExpiresAt: undefined,
          scopes: [],
          extras: {}
        }
        const identity = yield* identify(provider, tokens, { kind: "api_key", apiKey: Redacted.value(key) })
        return yield* save(provider, input.ownerId, "api_key", tokens, identity, undefined)
      })

      return AuthorizationFlow.of({ start, complete, completeProviderInitiated, linkApiKey })
    })
  )
}
