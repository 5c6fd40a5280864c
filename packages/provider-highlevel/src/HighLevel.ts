/**
 * HighLevel (GoHighLevel) API v2, seed 003: a confidential client (`client_secret_post`, no PKCE),
 * space-separated scopes, `user_type` on every token request, access tokens for a day and SINGLE-USE
 * refresh tokens valid a year. The account is the location (or, for agency tokens, the company)
 * named in the token response; every API call carries `Version: 2021-07-28`.
 */
import { AuthorizationFlow, type LatchkeyClient, Provider } from "@latchkey/core/provider"
import { Effect, type Redacted } from "effect"
import { authorizeRequest, classifyResponse, classifyTokenError, identify } from "./Api.ts"
import {
  ACCESS_TOKEN_SECONDS,
  API_URL,
  MARKETPLACE_URL,
  REFRESH_TOKEN_SECONDS,
  TokenExtras,
  type UserType,
  WHITE_LABEL_MARKETPLACE_URL
} from "./internal.ts"
import { locationTokens } from "./LocationTokens.ts"

export {
  ACCESS_TOKEN_SECONDS,
  API_URL,
  API_VERSION,
  accountOf,
  appIdOf,
  MARKETPLACE_URL,
  REFRESH_TOKEN_SECONDS,
  TokenExtras,
  type UserType,
  WHITE_LABEL_MARKETPLACE_URL
} from "./internal.ts"
export * as Locations from "./Locations.ts"

import { makeRateLimiter, type RateLimiter, type RateLimiterOptions, rateLimitedFetch } from "./RateLimit.ts"

export {
  bucketKey,
  makeRateLimiter,
  type RateLimiter,
  type RateLimiterOptions,
  rateLimitedFetch,
  type SharedRateBudget,
  sharedRateBudget
} from "./RateLimit.ts"
export * as Webhooks from "./Webhooks.ts"

export interface HighLevelOptions {
  /** Provider id within your Latchkey instance. Default `"highlevel"`. */
  readonly id?: string
  /** Display name. Default `"HighLevel"`. */
  readonly name?: string
  /** The app's client id, `<appId>-<suffix>`. */
  readonly clientId: string
  readonly clientSecret: string | Redacted.Redacted<string>
  readonly redirectUri: string
  /** e.g. `["locations.readonly", "oauth.readonly", "oauth.write"]`; sent space-separated. */
  readonly scopes: ReadonlyArray<string>
  /** Which token the code is exchanged for: a sub-account (`Location`, default) or an agency (`Company`). */
  readonly userType?: UserType
  /** Send users to the white-label marketplace host (`marketplace.leadconnectorhq.com`). */
  readonly whiteLabel?: boolean
  /** Other hosts, e.g. the sandbox's: `marketplaceUrl` serves /oauth/chooselocation, `apiUrl` the API. */
  readonly marketplaceUrl?: string
  readonly apiUrl?: string
  /**
   * Keep API calls within HighLevel's rate limits (burst 100 per 10 s per location or company, learnt
   * from the `X-RateLimit-*` headers; a 429 waits for `Retry-After`). On by default; `false` turns it
   * off, an object tunes it (a clock for tests) or passes a limiter to share or inspect.
   */
  readonly rateLimit?: false | (RateLimiterOptions & { readonly limiter?: RateLimiter })
}

/**
 * The HighLevel provider: the whole definition, as data. Agency (Company) connections mint location
 * tokens (`mint`, see LocationTokens.ts); `identify` and the API rules are in Api.ts.
 */
export const provider = (options: HighLevelOptions): Provider.Provider => {
  const userType = options.userType ?? "Location"
  const marketplace =
    options.marketplaceUrl ?? (options.whiteLabel ? WHITE_LABEL_MARKETPLACE_URL : MARKETPLACE_URL)
  const api = options.apiUrl ?? API_URL
  // One limiter per provider instance: every request of this Latchkey instance shares its budget.
  const limiter =
    options.rateLimit === false
      ? undefined
      : (options.rateLimit?.limiter ?? makeRateLimiter(options.rateLimit ?? {}))
  return Provider.make({
    id: options.id ?? "highlevel",
    name: options.name ?? "HighLevel",
    clientId: options.clientId,
    clientSecret: options.clientSecret,
    clientAuth: "client_secret_post",
    pkce: "none",
    endpoints: {
      issuer: api,
      authorization: new URL("/oauth/chooselocation", marketplace).href,
      token: new URL("/oauth/token", api).href
    },
    redirectUri: options.redirectUri,
    scopes: options.scopes,
    scopeSeparator: " ",
    tokenParams: { user_type: userType },
    lifetimes: { accessTokenSeconds: ACCESS_TOKEN_SECONDS, refreshTokenSeconds: REFRESH_TOKEN_SECONDS },
    refreshTokenPolicy: "rotating",
    // Single-use refresh tokens; whether reuse revokes the grant is unverified: assume it does.
    refreshTokenReuse: { graceSeconds: 0, revokesGrant: true },
    tokenExtras: TokenExtras,
    classifyTokenError,
    providerInitiated: true,
    mint: locationTokens,
    apiBaseUrl: api,
    ...(limiter
      ? { apiFetch: (inner: typeof fetch) => rateLimitedFetch({ fetch: inner, limiter, apiUrl: api }) }
      : {}),
    authorizeRequest,
    classifyResponse,
    identify: identify(userType)
  })
}

export interface MarketplaceInstallInput {
  /** The app's user (or tenant) the installed location belongs to. */
  readonly ownerId: string
  /** The redirect URI request as received: `?code=...` and no state. */
  readonly callback: string | URL | URLSearchParams
  /** Default `"highlevel"`. */
  readonly providerId?: string
}

/**
 * A public marketplace install: HighLevel's marketplace started the install, so the redirect URI
 * receives a code with no state of ours. This entry point, and only this one, exchanges such a code;
 * `completeAuthorization` keeps refusing callbacks without state.
 */
export const marketplaceInstall = (input: MarketplaceInstallInput) =>
  AuthorizationFlow.AuthorizationFlow.use((flow) =>
    flow.completeProviderInitiated({
      providerId: input.providerId ?? "highlevel",
      ownerId: input.ownerId,
      callback: input.callback
    })
  ).pipe(Effect.withSpan("HighLevel.marketplaceInstall"))

/** `marketplaceInstall` for the Promise API. */
export const completeMarketplaceInstall = (
  latchkey: LatchkeyClient,
  input: MarketplaceInstallInput
): Promise<AuthorizationFlow.CompleteResult> => latchkey.run(marketplaceInstall(input))
