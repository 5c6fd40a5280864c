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
import { Connections } from "./Connections.ts"
import { AuthorizationError, type ConnectionNotFound, type StoreError, type VaultError } from "./Errors.ts"
import type { LatchkeyEvent } from "./Events.ts"
import { allowsCredentials, proofsFor, sendScoped } from "./internal/credentialScope.ts"
import * as Dpop from "./internal/dpop.ts"
import * as OAuth from "./OAuth.ts"
import * as Protocol from "./Protocol.ts"
import type { AccountIdentity, Credential, Provider } from "./Provider.ts"
import { Providers } from "./Providers.ts"
import { type TokenError, TokenManager } from "./TokenManager.ts"
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

export interface ClientCredentialsInput {
  readonly providerId: string
  readonly ownerId: string
  /** The account id to keep the connection under (default: the client id). */
  readonly accountId?: string | undefined
  /** Default: `<provider name> (client credentials)`. */
  readonly label?: string | undefined
}

export interface MintedInput {
  /** The parent connection whose access token mints (e.g. a HighLevel agency connection). */
  readonly parentId: string
  /** The account to mint a token for (e.g. a HighLevel location id). */
  readonly accountId: string
}

export interface MintedResult extends CompleteResult {
  /**
   * The account was already linked with its own grant (and refresh token): it is kept as it is and
   * nothing minted is stored.
   */
  readonly kept: boolean
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
  /**
   * Link the client's own token (client-credentials grant, no user) for providers with
   * `clientCredentials`. The engine renews it with the same grant when it nears expiry.
   */
  readonly linkClientCredentials: (input: ClientCredentialsInput) => Effect.Effect<CompleteResult, FlowError>
  /**
   * Link an account with a token minted from a parent connection (providers with `mint`), owned by
   * the parent's owner. The engine mints it again when it nears expiry; linking again replaces it.
   */
  readonly linkMinted: (input: MintedInput) => Effect.Effect<MintedResult, FlowError | TokenError>
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
      const connections = yield* Connections
      const manager = yield* TokenManager
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
          ),
          Effect.withSpan("AuthorizationFlow.identify", {
            attributes: { "latchkey.provider": provider.id, "latchkey.credential_kind": credential.kind }
          })
        )

      /**
       * Insert, or replace the tokens of the same account linked before by the same owner (through
       * `Connections`, the one write path). `keepIf` keeps an existing connection as it is instead
       * (a location linked with its own grant, which minting must not replace).
       */
      const save = Effect.fnUntraced(function* (
        provider: Provider,
        ownerId: string,
        kind: Connection.ConnectionKind,
        tokens: TokenSet.TokenSet,
        identity: AccountIdentity,
        metadata: Record<string, unknown> | undefined,
        options: {
          readonly parentId?: string | undefined
          readonly keepIf?: ((stored: Connection.ConnectionRecord) => boolean) | undefined
        } = {}
      ): Effect.fn.Return<CompleteResult & { readonly kept?: boolean }, StoreError | VaultError> {
        const linked =
          (relinked: boolean) =>
          (written: Connection.Connection): ReadonlyArray<LatchkeyEvent> => [
            {
              type: "linked",
              at: written.updatedAt,
              connectionId: written.id,
              ownerId: written.ownerId,
              providerId: written.providerId,
              connection: Connection.summary(written),
              relinked,
              ...(tokens.widenedScopes !== undefined ? { widenedScopes: tokens.widenedScopes } : {})
            }
          ]
        // A relink keeps the connection (its id, `createdAt`): `linked` (relinked) and then
        // `reconnected`, saying what state it came back from, ride on the same write.
        const relinked = (
          written: Connection.Connection,
          replaced: Connection.ConnectionRecord
        ): ReadonlyArray<LatchkeyEvent> => {
          const previous = Connection.summaryOfRecord(replaced).health
          return [
            ...linked(true)(written),
            {
              type: "reconnected",
              at: written.updatedAt,
              connectionId: written.id,
              ownerId: written.ownerId,
              providerId: written.providerId,
              previous:
                previous.state === "active"
                  ? { state: "active" }
                  : { state: previous.state, reason: previous.reason }
            }
          ]
        }
        const fields = {
          ownerId,
          providerId: provider.id,
          accountId: identity.accountId,
          label: identity.label,
          kind,
          tokens,
          status: "active" as const,
          lastRefreshAt: undefined,
          lastError: undefined,
          profile: identity.profile,
          journal: undefined,
          ...(options.parentId !== undefined ? { parentId: options.parentId } : {})
        }
        for (let attempt = 0; ; attempt++) {
          const existing = yield* store.findByAccount(ownerId, provider.id, identity.accountId)
          type Saved =
            | { readonly _tag: "Written"; readonly connection: Connection.Connection }
            | { readonly _tag: "Kept"; readonly connection: Connection.Connection }
            | { readonly _tag: "Again" }
          const saved: Saved = yield* (
            existing === undefined
              ? Effect.map(
                  connections.insert({ id: `conn_${randomUUID()}`, ...fields }, { events: linked(false) }),
                  (connection): Saved => ({ _tag: "Written", connection })
                )
              : connections
                  .replace(
                    existing.id,
                    { id: existing.id, ...fields },
                    { events: relinked, keepIf: options.keepIf }
                  )
                  .pipe(
                    Effect.flatMap(
                      (next): Effect.Effect<Saved, StoreError | VaultError | ConnectionNotFound> =>
                        next === undefined
                          ? Effect.map(connections.get(existing.id), (connection) => ({
                              _tag: "Kept",
                              connection
                            }))
                          : Effect.succeed({ _tag: "Written", connection: next })
                    )
                  )
          ).pipe(
            Effect.catchTags({
              // Removed, or inserted by another link of the same account, meanwhile: look again.
              ConnectionNotFound: (e) =>
                attempt < 3 ? Effect.succeed<Saved>({ _tag: "Again" }) : Effect.die(e),
              StoreError: (e) =>
                e.reason === "conflict" && attempt < 3
                  ? Effect.succeed<Saved>({ _tag: "Again" })
                  : Effect.fail(e)
            })
          )
          if (saved._tag === "Again") continue
          yield* Effect.annotateCurrentSpan({
            "latchkey.provider": provider.id,
            "latchkey.credential_kind": kind,
            "latchkey.relinked": saved._tag === "Written" && existing !== undefined
          })
          if (saved._tag === "Kept") {
            return { connection: Connection.summary(saved.connection), relinked: false, metadata, kept: true }
          }
          return {
            connection: Connection.summary(saved.connection),
            relinked: existing !== undefined,
            metadata
          }
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
        }).pipe(
          Effect.mapError((f) => fromProtocol(provider, f)),
          Effect.withSpan("AuthorizationFlow.exchangeCode", {
            attributes: { "latchkey.provider": provider.id }
          })
        )
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

      const linkClientCredentials = Effect.fn("AuthorizationFlow.linkClientCredentials")(function* (
        input: ClientCredentialsInput
      ) {
        const provider = yield* providers.get(input.providerId)
        if (provider.clientCredentials === undefined) {
          return yield* authError(
            "provider_error",
            provider.id,
            `${provider.name} does not offer client-credentials connections`
          )
        }
        yield* checkOwner(provider.id, input.ownerId)
        const response = yield* OAuth.clientCredentials(provider, protocol).pipe(
          Effect.mapError((f) => fromProtocol(provider, f))
        )
        const now = yield* Clock.currentTimeMillis
        const tokens = yield* Effect.try({
          try: () => {
            const t = TokenSet.fromResponse(provider, response, now)
            return { ...t, refreshToken: undefined, refreshExpiresAt: undefined }
          },
          catch: () =>
            authError(
              "exchange_failed",
              provider.id,
              `${provider.name}: the token response has invalid extra fields`
            )
        })
        const identity: AccountIdentity = {
          accountId: input.accountId ?? provider.clientId,
          label: input.label ?? `${provider.name} (client credentials)`,
          profile: { clientId: provider.clientId }
        }
        return yield* save(provider, input.ownerId, "client_credentials", tokens, identity, undefined)
      })

      const linkMinted = Effect.fn("AuthorizationFlow.linkMinted")(function* (input: MintedInput) {
        const parent = yield* manager.get(input.parentId)
        const provider = yield* providers.get(parent.providerId)
        const source = provider.mint
        const parentInfo = {
          accountId: parent.accountId,
          extras: parent.tokens.extras,
          profile: parent.profile
        }
        if (source === undefined || source.canMint?.(parentInfo) === false) {
          return yield* authError(
            "provider_error",
            provider.id,
            source === undefined
              ? `${provider.name} does not mint tokens from a parent connection`
              : `${provider.name}: connection ${parent.id} cannot mint tokens for other accounts`
          )
        }
        const minted = yield* manager.mintFrom(input.parentId, input.accountId)
        const tokens = yield* Effect.try({
          try: () => {
            const t = TokenSet.fromResponse(provider, minted.response, minted.answeredAt)
            return { ...t, refreshToken: undefined, refreshExpiresAt: undefined }
          },
          catch: () =>
            authError(
              "exchange_failed",
              provider.id,
              `${provider.name}: the minted token has invalid extra fields`
            )
        })
        const identity = yield* identify(provider, tokens, {
          kind: "oauth",
          accessToken: Redacted.value(tokens.accessToken),
          tokenType: tokens.tokenType
        })
        if (identity.accountId !== input.accountId) {
          return yield* authError(
            "identity_failed",
            provider.id,
            `${provider.name}: the minted token belongs to ${identity.accountId}, not ${input.accountId}`
          )
        }
        const saved = yield* save(provider, minted.parent.ownerId, "minted", tokens, identity, undefined, {
          parentId: parent.id,
          // An account linked with its own grant keeps it: minting never replaces a refresh token.
          keepIf: (stored) => stored.kind === "oauth" && stored.status === "active"
        })
        return { ...saved, kept: saved.kept === true } satisfies MintedResult
      })

      return AuthorizationFlow.of({
        start,
        complete,
        completeProviderInitiated,
        linkApiKey,
        linkClientCredentials,
        linkMinted
      })
    })
  )
}
