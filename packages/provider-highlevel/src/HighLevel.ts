/**
 * HighLevel (GoHighLevel) API v2, seed 003: a confidential client (`client_secret_post`, no PKCE),
 * space-separated scopes, `user_type` on every token request, access tokens for a day and SINGLE-USE
 * refresh tokens valid a year. The account is the location (or, for agency tokens, the company)
 * named in the token response; every API call carries `Version: 2021-07-28`.
 */
import { AuthorizationFlow, type LatchkeyClient, Provider } from "@latchkey/core"
import { Effect, type Redacted } from "effect"
import {
  ACCESS_TOKEN_SECONDS,
  API_URL,
  API_VERSION,
  accountOf,
  MARKETPLACE_URL,
  REFRESH_TOKEN_SECONDS,
  TokenExtras,
  type UserType,
  WHITE_LABEL_MARKETPLACE_URL
} from "./internal.ts"

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
  rateLimitedFetch
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

/** A 401 that a new token would not fix: the Version header is missing, or a scope was not granted. */
const notAboutTheToken = (message: unknown) =>
  typeof message === "string" && /version header|not authorized for this scope/i.test(message)

/** The JSON body; undefined when the token may not read it (403, or a scope not granted); throws otherwise. */
const readIfAllowed = async (
  response: Response,
  what: string
): Promise<Record<string, unknown> | undefined> => {
  if (response.ok) return (await response.json()) as Record<string, unknown>
  const body = (await response.json().catch(() => undefined)) as { message?: unknown } | undefined
  if (response.status === 403 || (response.status === 401 && notAboutTheToken(body?.message)))
    return undefined
  throw new Error(`${what} answered ${response.status}`)
}

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
    // HighLevel answers 401 {"error":"UnAuthorized!"} both for bad client credentials and for a code or
    // refresh token it does not accept: only the former is the client's fault; the latter ends the grant.
    classifyTokenError: ({ error, description }) =>
      error === "UnAuthorized!"
        ? /client credentials/i.test(description ?? "")
          ? "invalid_client"
          : "invalid_grant"
        : undefined,
    providerInitiated: true,
    apiBaseUrl: api,
    ...(limiter
      ? { apiFetch: (inner: typeof fetch) => rateLimitedFetch({ fetch: inner, limiter, apiUrl: api }) }
      : {}),
    authorizeRequest: (credential) => ({
      authorization:
        credential.kind === "oauth" ? `Bearer ${credential.accessToken}` : `Bearer ${credential.apiKey}`,
      version: API_VERSION
    }),
    // A 401 about the Version header or an ungranted scope, or a 403 for a location the token cannot
    // see, is not fixed by a new token: only a rejected token is worth one refresh.
    classifyResponse: ({ status, body }) =>
      status === 429
        ? "rate_limited"
        : status === 401 && !notAboutTheToken((body as { message?: unknown } | undefined)?.message)
          ? "token_invalid"
          : "ok",
    // The label comes from GET /locations/{id} (GET /companies/{id} for agencies); without the scope
    // to read it, the id is the label.
    identify: async ({ tokens, fetch }) => {
      const account = accountOf(tokens.extras as TokenExtras, userType)
      const companyId = (tokens.extras as TokenExtras).companyId
      if (account.userType === "Location") {
        const body = await readIfAllowed(
          await fetch(`/locations/${encodeURIComponent(account.id)}`),
          "GET /locations/{id}"
        )
        const location = (body?.location ?? {}) as Record<string, unknown>
        const name = typeof location.name === "string" && location.name ? location.name : account.id
        return {
          accountId: account.id,
          label: name,
          profile: {
            userType: "Location",
            locationId: account.id,
            ...(companyId ? { companyId } : {}),
            name,
            ...(typeof location.email === "string" ? { email: location.email } : {}),
            ...(typeof location.timezone === "string" ? { timezone: location.timezone } : {})
          }
        }
      }
      const body = await readIfAllowed(
        await fetch(`/companies/${encodeURIComponent(account.id)}`),
        "GET /companies/{id}"
      )
      const company = (body?.company ?? {}) as Record<string, unknown>
      const name = typeof company.name === "string" && company.name ? company.name : account.id
      return {
        accountId: account.id,
        label: name,
        profile: { userType: "Company", companyId: account.id, name }
      }
    }
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
