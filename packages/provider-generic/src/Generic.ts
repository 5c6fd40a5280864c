/**
 * Any RFC 6749 authorization server in the client-secret style (seed 002): client id and secret,
 * `client_secret_basic` (which RFC 6749 §2.3.1 says servers MUST support) or `client_secret_post`,
 * refresh on the token endpoint, space-separated scopes. One hour / 30 days are assumed when the
 * server does not say how long its tokens live.
 */
import { Provider, ProviderDefinitionError } from "@latchkey/core/provider"
import { identifyFromUserinfo } from "./UserInfo.ts"

export interface GenericOptions {
  /** Provider id within your Latchkey instance. Default `"generic"`. */
  readonly id?: string
  /** Display name. Default `"OAuth provider"`. */
  readonly name?: string
  readonly clientId: string
  /** A string or an Effect `Redacted`. Omit for a public client (then PKCE is always used). */
  readonly clientSecret?: Provider.ProviderDefinition["clientSecret"]
  /**
   * How the client authenticates at the token endpoint (the same name as in `Provider.make`).
   * Default `client_secret_basic`, or `none` when there is no `clientSecret`.
   */
  readonly clientAuth?: Provider.ClientAuth
  /** @deprecated Renamed `clientAuth`, as in `Provider.make`; still accepted. */
  readonly auth?: Provider.ClientAuth
  readonly redirectUri: string
  /** Explicit endpoints (recommended: no discovery request). */
  readonly endpoints?: Provider.Endpoints
  /** Or an issuer whose RFC 8414 / OpenID metadata is fetched once. */
  readonly issuer?: string
  /** Default `["read"]`. `admin` usually needs the provider's approval. */
  readonly scopes?: ReadonlyArray<string>
  /** Send PKCE S256 (RFC 9700 recommends it for every client). Default true. */
  readonly pkce?: boolean
  /** Extra authorize-URL parameters, e.g. `{ prompt: "consent" }`. */
  readonly authorizationParams?: Readonly<Record<string, string>>
  /** Seconds. Defaults: 3600 and 30 days. */
  readonly accessTokenLifetime?: number
  readonly refreshTokenLifetime?: number
  /** Whether a refresh returns a new refresh token (RFC 6749 §6 allows both). Default `rotating`. */
  readonly refreshTokenPolicy?: Provider.RefreshTokenPolicy
  /**
   * What the server does when a rotated refresh token comes back (its reuse grace period, and
   * whether reuse revokes the grant). Default: no grace, reuse revokes the grant.
   */
  readonly refreshTokenReuse?: Provider.RefreshTokenReuse
  /**
   * The user-info URL used to identify the account; default `endpoints.userinfo`, or with `issuer` the
   * discovery document's `userinfo_endpoint`.
   */
  readonly userinfoUrl?: string
  /** Custom identification; default: GET the user-info URL and read `sub`/`id` and `email`/`name`. */
  readonly identify?: Provider.ProviderDefinition["identify"]
  readonly apiBaseUrl?: string
  /** More origins that may receive the tokens (the user-info URL's is added by itself). */
  readonly apiOrigins?: ReadonlyArray<string>
  /** The server always sends RFC 9207 `iss`; required when providers share a redirect URI. */
  readonly requireIss?: boolean
  /** Sender-constrained tokens (DPoP, RFC 9449), for servers that issue them. */
  readonly dpop?: boolean
  /**
   * Client-credentials connections (RFC 6749 §4.4: the client's own token, no user), linked with
   * `latchkey.linkClientCredentials` and renewed by the engine with the same grant: `true`, or the
   * scopes (default `scopes`) and extra parameters to ask with. Needs a client secret.
   */
  readonly clientCredentials?: Provider.ProviderDefinition["clientCredentials"]
}

const safeOrigin = (url: string): string | undefined => {
  try {
    return new URL(url).origin
  } catch {
    return undefined
  }
}

/** The provider for one authorization server; the account is identified from its user-info endpoint by default. */
export const provider = (options: GenericOptions): Provider.Provider => {
  const id = options.id ?? "generic"
  const userinfo = options.userinfoUrl ?? options.endpoints?.userinfo
  const auth =
    options.clientAuth ??
    options.auth ??
    (options.clientSecret === undefined ? "none" : "client_secret_basic")
  // Explicit endpoints without a user-info URL cannot identify an account: say so now, not after consent.
  if (options.identify === undefined && userinfo === undefined && options.endpoints !== undefined) {
    throw new ProviderDefinitionError({
      providerId: id,
      field: "endpoints.userinfo",
      message: `Invalid provider "${id}": endpoints.userinfo (or userinfoUrl, or an identify function) is needed to identify the linked account`
    })
  }
  return Provider.make({
    id,
    name: options.name ?? "OAuth provider",
    clientId: options.clientId,
    ...(options.clientSecret !== undefined ? { clientSecret: options.clientSecret } : {}),
    clientAuth: auth,
    pkce: options.pkce === false && auth !== "none" ? "none" : "S256",
    ...(options.endpoints ? { endpoints: options.endpoints } : {}),
    ...(options.issuer ? { discovery: { issuer: options.issuer } } : {}),
    redirectUri: options.redirectUri,
    scopes: options.scopes ?? ["read"],
    scopeSeparator: " ",
    ...(options.authorizationParams ? { authorizationParams: options.authorizationParams } : {}),
    lifetimes: {
      accessTokenSeconds: options.accessTokenLifetime ?? 3600,
      refreshTokenSeconds: options.refreshTokenLifetime ?? 30 * 24 * 3600
    },
    refreshTokenPolicy: options.refreshTokenPolicy ?? "rotating",
    ...(options.refreshTokenReuse ? { refreshTokenReuse: options.refreshTokenReuse } : {}),
    ...(options.requireIss !== undefined ? { requireIss: options.requireIss } : {}),
    ...(options.dpop !== undefined ? { dpop: options.dpop } : {}),
    ...(options.clientCredentials !== undefined ? { clientCredentials: options.clientCredentials } : {}),
    apiOrigins: [...(options.apiOrigins ?? []), ...(options.userinfoUrl ? [options.userinfoUrl] : [])],
    apiBaseUrl:
      options.apiBaseUrl ?? (options.endpoints ? safeOrigin(options.endpoints.token) : options.issuer),
    // With discovery only, `start` checks the discovered metadata has a user-info endpoint before the
    // user is sent to the provider.
    ...(options.identify === undefined && userinfo === undefined ? { requiresUserinfo: true } : {}),
    identify: options.identify ?? identifyFromUserinfo(userinfo)
  })
}
