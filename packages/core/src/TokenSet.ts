/**
 * Normalized tokens. Access and refresh tokens are `Redacted` so that they print as `<redacted>` in
 * logs, errors and `JSON.stringify`. Times are epoch milliseconds.
 */
import { Redacted } from "effect"
import type { Provider } from "./Provider.ts"

export interface TokenSet {
  readonly accessToken: Redacted.Redacted<string>
  readonly refreshToken: Redacted.Redacted<string> | undefined
  readonly tokenType: string
  /** When the access token was obtained. */
  readonly obtainedAt: number
  /** When the access token expires; undefined when the provider gives no expiry. */
  readonly expiresAt: number | undefined
  /** When the refresh token expires (HighLevel: one year), if known. */
  readonly refreshExpiresAt: number | undefined
  readonly scopes: ReadonlyArray<string>
  /** Provider-specific fields of the token response, validated by the provider's `tokenExtras`. */
  readonly extras: Readonly<Record<string, unknown>>
}

const STANDARD = new Set(["access_token", "refresh_token", "token_type", "expires_in", "scope", "id_token"])

/** The raw token-endpoint response fields this module reads. */
export interface TokenResponse {
  readonly access_token: string
  readonly token_type?: string | undefined
  readonly expires_in?: number | string | undefined
  readonly refresh_token?: string | undefined
  readonly scope?: string | undefined
  readonly [key: string]: unknown
}

/**
 * Build a TokenSet from a token response. When the response has no `refresh_token`, the previous one
 * is kept (with its expiry); when it has one, the refresh token's lifetime starts now.
 */
export const fromResponse = (
  provider: Provider,
  response: TokenResponse,
  now: number,
  previous?: TokenSet | undefined,
  requestedScopes?: ReadonlyArray<string>
): TokenSet => {
  const expiresIn = response.expires_in === undefined ? undefined : Number(response.expires_in)
  const accessSeconds =
    expiresIn !== undefined && Number.isFinite(expiresIn) && expiresIn > 0
      ? expiresIn
      : provider.defaultAccessTokenSeconds
  const rotated = typeof response.refresh_token === "string" && response.refresh_token.length > 0
  const rawExtras: Record<string, unknown> = {}
  for (const [key, value] of Object.entries(response)) {
    if (!STANDARD.has(key) && value !== undefined) rawExtras[key] = value
  }
  const extras = provider.tokenExtras ? provider.tokenExtras.parse(rawExtras) : rawExtras
  const scopes =
    typeof response.scope === "string" && response.scope.length > 0
      ? response.scope.split(/[\s,]+/).filter((s) => s.length > 0)
      : (previous?.scopes ?? requestedScopes ?? provider.scopes)
  return {
    accessToken: Redacted.make(response.access_token),
    refreshToken: rotated ? Redacted.make(response.refresh_token as string) : previous?.refreshToken,
    tokenType: response.token_type ?? "Bearer",
    obtainedAt: now,
    expiresAt: accessSeconds === undefined ? undefined : now + accessSeconds * 1000,
    refreshExpiresAt: rotated
      ? provider.defaultRefreshTokenSeconds === undefined
        ? undefined
        : now + provider.defaultRefreshTokenSeconds * 1000
      : previous?.refreshExpiresAt,
    scopes,
    extras: previous ? { ...previous.extras, ...extras } : extras
  }
}

/**
 * The skew actually applied to a token: the configured skew, but never more than a quarter of the
 * token's lifetime, so that tokens living seconds (sandboxes, demos) are not refreshed on every call.
 */
export const effectiveSkew = (tokens: TokenSet, skewMs: number): number =>
  tokens.expiresAt === undefined ? 0 : Math.min(skewMs, Math.max(0, tokens.expiresAt - tokens.obtainedAt) / 4)

/** The access token is usable at `now` with the given skew. */
export const isFresh = (tokens: TokenSet, now: number, skewMs: number): boolean =>
  tokens.expiresAt === undefined || now < tokens.expiresAt - effectiveSkew(tokens, skewMs)

export const refreshTokenExpired = (tokens: TokenSet, now: number): boolean =>
  tokens.refreshExpiresAt !== undefined && now >= tokens.refreshExpiresAt
