/**
 * HeyGen (seeds 000 and 001): a public OAuth client with PKCE S256 and no secret; the code exchange
 * at `api2.heygen.com/v1/oauth/token` and refreshes at the SEPARATE `/v1/oauth/refresh_token`;
 * ten-day access tokens (864000 s) assumed when `expires_in` is missing; rotating refresh tokens
 * (the old one kept only when a response has none); RFC 7009 revocation. The account is identified
 * with `GET /v3/users/me` (its client is `User.ts`, re-exported here). API-key connections send
 * `X-Api-Key` and never refresh.
 */
import { Provider } from "@latchkey/core/provider"
import { authorizeRequest, classifyResponse } from "./Api.ts"
import { fetchUser } from "./User.ts"

/** HeyGen's hosts. Override them for the sandbox or a staging host. */
export interface HeyGenUrls {
  /** The web app, where users authorize (default `https://app.heygen.com`). */
  readonly app: string
  /** The OAuth token, refresh and revocation host (default `https://api2.heygen.com`). */
  readonly auth: string
  /** The API (default `https://api.heygen.com`). */
  readonly api: string
}

export const defaultUrls: HeyGenUrls = {
  app: "https://app.heygen.com",
  auth: "https://api2.heygen.com",
  api: "https://api.heygen.com"
}

export interface HeyGenOptions {
  /** Issued by HeyGen's partnerships team after the integration intake form. */
  readonly clientId: string
  /** The redirect URI HeyGen registered for the client; sent exactly as given. */
  readonly redirectUri: string
  /** Provider id within your Latchkey instance. Default `"heygen"`. */
  readonly id?: string | undefined
  /** Display name. Default `"HeyGen"`. */
  readonly name?: string | undefined
  /** Hosts to use instead of HeyGen's (e.g. `sandbox.urls`). Each one may be given alone. */
  readonly urls?: Partial<HeyGenUrls> | undefined
  /** Scopes, if HeyGen issued any for the client (its documented flow sends none). */
  readonly scopes?: ReadonlyArray<string> | undefined
}

/** Ten days: HeyGen's documented `expires_in`, assumed when a response omits it. */
export const ACCESS_TOKEN_SECONDS = 864_000

export { authorizeRequest, classifyResponse } from "./Api.ts"
export {
  account,
  type ConnectionFetcher,
  type CreditSummary,
  credits,
  errorCode,
  HeyGenApiError,
  type HeyGenCreditPool,
  type HeyGenSubscription,
  type HeyGenUsageBased,
  type HeyGenUser,
  type HeyGenWallet,
  parseUser
} from "./User.ts"

const join = (base: string, path: string) => `${base.replace(/\/+$/, "")}${path}`

/** The HeyGen provider for Latchkey. */
export const provider = (options: HeyGenOptions): Provider.Provider => {
  const urls: HeyGenUrls = { ...defaultUrls, ...options.urls }
  const apiBaseUrl = urls.api.replace(/\/+$/, "")
  return Provider.make({
    id: options.id ?? "heygen",
    name: options.name ?? "HeyGen",
    clientId: options.clientId,
    clientAuth: "none",
    pkce: "S256",
    redirectUri: options.redirectUri,
    endpoints: {
      issuer: urls.app.replace(/\/+$/, ""),
      authorization: join(urls.app, "/oauth/authorize"),
      token: join(urls.auth, "/v1/oauth/token"),
      refresh: join(urls.auth, "/v1/oauth/refresh_token"),
      revocation: join(urls.auth, "/v1/oauth/revoke")
    },
    ...(options.scopes ? { scopes: options.scopes } : {}),
    lifetimes: { accessTokenSeconds: ACCESS_TOKEN_SECONDS, refreshTokenSeconds: null },
    refreshTokenPolicy: "rotating",
    // PROVIDERS.md: rotation probable, behaviour on reuse unverified: assume no grace, grant revoked.
    refreshTokenReuse: { graceSeconds: 0, revokesGrant: true },
    apiBaseUrl,
    apiKeys: true,
    authorizeRequest,
    classifyResponse,
    identify: async ({ fetch }) => {
      const user = await fetchUser((url) => fetch(url), `${apiBaseUrl}/v3/users/me`)
      const name = [user.first_name, user.last_name].filter((n) => n).join(" ")
      return {
        accountId: user.username,
        label: user.email ?? user.username,
        profile: {
          username: user.username,
          ...(user.email !== null ? { email: user.email } : {}),
          ...(name ? { name } : {}),
          billingType: user.billing_type
        }
      }
    }
  })
}
