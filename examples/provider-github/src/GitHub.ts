/**
 * GitHub, from its documented endpoints: the web application flow of OAuth apps and GitHub Apps.
 *
 * - Authorize at `https://github.com/login/oauth/authorize`; exchange and refresh at
 *   `https://github.com/login/oauth/access_token` with `client_id` and `client_secret` in the form
 *   body, asking for JSON (`Accept: application/json`, or GitHub answers form-encoded).
 * - PKCE S256 is accepted (since July 2025) and sent.
 * - Tokens do not expire, and there is no refresh token, unless the app has user-token expiration on
 *   (GitHub Apps, by default): then `expires_in` is 28800 (8 hours), a refresh token comes with
 *   `refresh_token_expires_in` 15897600 (6 months), and each refresh returns a new refresh token and
 *   ends the old one and the old access token.
 * - Token-endpoint errors come with HTTP 200 and an `error` field, in GitHub's own codes
 *   (`bad_verification_code`, `bad_refresh_token`, `incorrect_client_credentials`, ...).
 * - The account is `GET https://api.github.com/user`: the numeric `id` (stable; logins can be
 *   renamed) and the `login`.
 * - Revocation is not RFC 7009: `DELETE /applications/{client_id}/grant` with HTTP Basic client
 *   credentials and the access token in a JSON body deletes the grant and every token of it.
 *
 * The two API calls (`GET /user`, the grant's `DELETE`) are in `Api.ts`.
 */
import { Provider } from "@latchkey/core/provider"
import type { Redacted } from "effect"
import { z } from "zod"
import { deleteGrant, identifyUser } from "./Api.ts"

export const WEB_URL = "https://github.com"
export const API_URL = "https://api.github.com"
/** The REST API version this provider is written against. */
export const API_VERSION = "2022-11-28"
/** GitHub's documented refresh-token lifetime when user-token expiration is on (6 months). */
export const REFRESH_TOKEN_SECONDS = 15_897_600

export interface GitHubOptions {
  /** Provider id within your Latchkey instance. Default `"github"`. */
  readonly id?: string
  /** Display name. Default `"GitHub"`. */
  readonly name?: string
  readonly clientId: string
  readonly clientSecret: string | Redacted.Redacted<string>
  /** The callback URL registered with the app. */
  readonly redirectUri: string
  /** OAuth-app scopes, sent space-separated. Default `["read:user"]`. GitHub Apps ignore scopes. */
  readonly scopes?: ReadonlyArray<string>
  /** Offer to sign up during the flow (GitHub's `allow_signup`). Default: GitHub's (true). */
  readonly allowSignup?: boolean
  /** Another github.com: the sandbox, or a GitHub Enterprise Server (`https://ghe.example.com`). */
  readonly webUrl?: string
  /** Another API host: the sandbox, or `https://ghe.example.com/api/v3`. */
  readonly apiUrl?: string
  /** GitHub asks every API request to carry a User-Agent naming the app. Default `"latchkey"`. */
  readonly userAgent?: string
}

const under = (base: string, path: string) => `${base.replace(/\/+$/, "")}${path}`

/** The GitHub provider for Latchkey. */
export const provider = (options: GitHubOptions): Provider.Provider => {
  const web = options.webUrl ?? WEB_URL
  const api = options.apiUrl ?? API_URL
  const userAgent = options.userAgent ?? "latchkey"
  const apiHeaders = {
    accept: "application/vnd.github+json",
    "x-github-api-version": API_VERSION,
    "user-agent": userAgent
  }
  return Provider.make({
    id: options.id ?? "github",
    name: options.name ?? "GitHub",
    clientId: options.clientId,
    clientSecret: options.clientSecret,
    clientAuth: "client_secret_post",
    pkce: "S256",
    endpoints: {
      issuer: under(web, "/login/oauth"),
      authorization: under(web, "/login/oauth/authorize"),
      token: under(web, "/login/oauth/access_token")
    },
    redirectUri: options.redirectUri,
    scopes: options.scopes ?? ["read:user"],
    scopeSeparator: " ",
    ...(options.allowSignup !== undefined
      ? { authorizationParams: { allow_signup: String(options.allowSignup) } }
      : {}),
    // No access-token default: without `expires_in` a GitHub token does not expire. A refresh token
    // (only with expiration on) lives six months.
    lifetimes: { accessTokenSeconds: null, refreshTokenSeconds: REFRESH_TOKEN_SECONDS },
    refreshTokenPolicy: "rotating",
    tokenErrorCodes: {
      bad_verification_code: "invalid_grant",
      bad_refresh_token: "invalid_grant",
      redirect_uri_mismatch: "invalid_grant",
      incorrect_client_credentials: "invalid_client",
      unsupported_grant_type: "unsupported_grant_type"
    },
    // Keep nothing else of the token response (`refresh_token_expires_in` is the declared lifetime).
    tokenExtras: z.object({}),
    apiBaseUrl: api,
    authorizeRequest: (credential) => ({
      ...apiHeaders,
      authorization: `Bearer ${credential.kind === "oauth" ? credential.accessToken : credential.apiKey}`
    }),
    // 401 is a refused token. GitHub's secondary rate limits answer 403 or 429 with Retry-After; a
    // primary limit (403, x-ratelimit-remaining: 0, no Retry-After) is returned to the app as is.
    classifyResponse: ({ status, headers }) =>
      status === 401
        ? "token_invalid"
        : (status === 429 || status === 403) && headers.has("retry-after")
          ? "rate_limited"
          : "ok",
    identify: identifyUser,
    revoke: deleteGrant(under(api, "/applications"), apiHeaders)
  })
}
