/**
 * How HeyGen's API is called: the credential's header (`Authorization: Bearer` or `X-Api-Key`), and
 * what its error answers mean to the ApiClient (an expired or invalid token, a rate limit).
 */
import type { Provider } from "@latchkey/core/provider"
import { errorCode } from "./User.ts"

/** Older endpoints: 401056 access token expired, 401057 invalid access token. */
const TOKEN_CODES = new Set(["401056", "401057", "unauthorized", "invalid_token", "token_expired"])

/**
 * How the ApiClient treats a HeyGen error: an expired or invalid token (401, v3 `unauthorized`, or
 * the older 401056 / 401057 whatever the status) → refresh and retry once; 429 or
 * `rate_limit_exceeded` → wait for `Retry-After`; anything else (402 credits, 403, 4xx) is returned
 * to the caller as it is.
 */
export const classifyResponse = (response: Provider.ApiResponseInfo): Provider.ApiResponseClass => {
  const code = errorCode(response.body)
  if (response.status === 429 || code === "rate_limit_exceeded") return "rate_limited"
  if (response.status === 401 || (code !== undefined && TOKEN_CODES.has(code))) return "token_invalid"
  return "ok"
}

/** `Authorization: Bearer` for OAuth connections, `X-Api-Key` for API-key connections. */
export const authorizeRequest = (credential: Provider.Credential): Record<string, string> =>
  credential.kind === "api_key"
    ? { "X-Api-Key": credential.apiKey }
    : { Authorization: `Bearer ${credential.accessToken}` }
