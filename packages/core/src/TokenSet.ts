/**
 * Normalized tokens. Access and refresh tokens are `Redacted` so that they print as `<redacted>` in
 * logs, errors and `JSON.stringify`. Times are epoch milliseconds.
 */
import { Redacted } from "effect"
import * as Dpop from "./internal/dpop.ts"

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
  /**
   * Scopes the server granted beyond those asked for (or held before a refresh), when it said which
   * it granted. Not stored; reported in the `linked` event.
   */
  readonly widenedScopes?: ReadonlyArray<string> | undefined
  /** Response fields Latchkey did not take as given (see `Adjustment`). Not stored; for diagnostics. */
  readonly adjustments?: ReadonlyArray<Adjustment> | undefined
  /** The connection's DPoP private key (JWK JSON) for providers with `dpop`; sealed with the extras. */
  readonly dpopKey?: string | undefined
}

/**
 * A token-response field normalised on the way in: a lifetime out of bounds replaced by the
 * provider's default, or `FALLBACK_LIFETIME_SECONDS` (`expires_in` of 0, negative, not a number, or
 * beyond `MAX_LIFETIME_SECONDS`),
 * or an extra field dropped for its size. `raw` is the value as received, cut to 64 characters.
 */
export interface Adjustment {
  readonly field: string
  readonly raw: string
  readonly action: "default_lifetime" | "dropped_oversized"
}

/** The longest access-token lifetime taken from a response: ten years. Longer is treated as absent. */
export const MAX_LIFETIME_SECONDS = 10 * 365 * 24 * 3600

/** The lifetime assumed for an out-of-bounds `expires_in` when the provider declares no default. */
export const FALLBACK_LIFETIME_SECONDS = 3600

/** Largest single extra field kept (serialised JSON), and largest extras object in total. */
export const MAX_EXTRA_FIELD_BYTES = 16 * 1024
export const MAX_EXTRAS_BYTES = 64 * 1024

/** The longest access or refresh token accepted (bytes). */
export const MAX_TOKEN_LENGTH = 16 * 1024

/** A token must be visible ASCII (RFC 6750 b64token is a subset): no CR, LF, NUL, space or non-ASCII. */
const TOKEN_CHARS = /^[\x21-\x7e]+$/
/** token_type is a single HTTP token (RFC 9110 §5.6.2). */
const TOKEN_TYPE = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/

/**
 * Why a token response cannot be used as it is, or undefined when it can: a token that would break
 * (or smuggle into) an HTTP header, or one of absurd length. Messages never quote the values.
 */
export const unsafeResponse = (response: TokenResponse): string | undefined => {
  const access = response.access_token as unknown
  if (typeof access !== "string" || access.length === 0) return "the token response has no access_token"
  if (access.length > MAX_TOKEN_LENGTH) return `the access_token is longer than ${MAX_TOKEN_LENGTH} bytes`
  if (!TOKEN_CHARS.test(access)) {
    return "the access_token has characters not allowed in an HTTP header (control characters, spaces or non-ASCII)"
  }
  const refresh = response.refresh_token as unknown
  if (refresh !== undefined && refresh !== null && refresh !== "") {
    if (typeof refresh !== "string") return "the refresh_token is not a string"
    if (refresh.length > MAX_TOKEN_LENGTH) return `the refresh_token is longer than ${MAX_TOKEN_LENGTH} bytes`
    if (!TOKEN_CHARS.test(refresh)) {
      return "the refresh_token has characters not allowed in an HTTP header (control characters, spaces or non-ASCII)"
    }
  }
  const type = response.token_type as unknown
  if (type !== undefined && (typeof type !== "string" || !TOKEN_TYPE.test(type) || type.length > 64)) {
    return "the token_type is not a single HTTP token"
  }
  return undefined
}

/** An `expires_in` taken as given: a positive finite number (or numeric string) of at most ten years. */
export const lifetimeInBounds = (value: unknown): boolean => {
  const n =
    typeof value === "number"
      ? value
      : typeof value === "string" && value.trim() !== ""
        ? Number(value)
        : Number.NaN
  return Number.isFinite(n) && n > 0 && n <= MAX_LIFETIME_SECONDS
}

const rawText = (value: unknown): string => {
  let text: string
  try {
    text = typeof value === "string" ? value : (JSON.stringify(value) ?? String(value))
  } catch {
    text = String(value)
  }
  return text.length > 64 ? `${text.slice(0, 61)}...` : text
}

const jsonSize = (value: unknown): number => {
  try {
    return Buffer.byteLength(JSON.stringify(value) ?? "")
  } catch {
    return Number.POSITIVE_INFINITY
  }
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
 * What `fromResponse` needs to know of a provider (a `Provider` is one). Declared here, not imported,
 * so that tokens do not depend on the provider contract, which depends on tokens.
 */
export interface TokenRules {
  readonly defaultAccessTokenSeconds: number | undefined
  readonly defaultRefreshTokenSeconds: number | undefined
  readonly scopes: ReadonlyArray<string>
  readonly tokenExtras?: { parse(value: unknown): Record<string, unknown> } | undefined
}

/**
 * Build a TokenSet from a token response. When the response has no `refresh_token`, the previous one
 * is kept (with its expiry); when it has one, the refresh token's lifetime starts now.
 */
export const fromResponse = (
  provider: TokenRules,
  response: TokenResponse,
  now: number,
  previous?: TokenSet | undefined,
  requestedScopes?: ReadonlyArray<string>
): TokenSet => {
  const adjustments: Array<Adjustment> = []
  const rawExpiresIn = response.expires_in as unknown
  const expiresIn =
    rawExpiresIn === undefined || rawExpiresIn === null || rawExpiresIn === ""
      ? undefined
      : typeof rawExpiresIn === "number" || typeof rawExpiresIn === "string"
        ? Number(rawExpiresIn)
        : Number.NaN
  const inBounds = expiresIn !== undefined && lifetimeInBounds(expiresIn)
  if (expiresIn !== undefined && !inBounds) {
    adjustments.push({ field: "expires_in", raw: rawText(rawExpiresIn), action: "default_lifetime" })
  }
  // A lifetime the server gave but that cannot be right falls back to the provider's default, or to
  // an hour when it has none: never to "does not expire".
  const accessSeconds = inBounds
    ? expiresIn
    : expiresIn !== undefined
      ? (provider.defaultAccessTokenSeconds ?? FALLBACK_LIFETIME_SECONDS)
      : provider.defaultAccessTokenSeconds
  const rotated = typeof response.refresh_token === "string" && response.refresh_token.length > 0
  const rawExtras: Record<string, unknown> = {}
  let extrasBytes = 0
  for (const [key, value] of Object.entries(response)) {
    if (STANDARD.has(key) || value === undefined) continue
    const size = jsonSize(value) + Buffer.byteLength(key)
    if (size > MAX_EXTRA_FIELD_BYTES || extrasBytes + size > MAX_EXTRAS_BYTES) {
      adjustments.push({ field: key, raw: `${size} bytes`, action: "dropped_oversized" })
      continue
    }
    extrasBytes += size
    rawExtras[key] = value
  }
  const extras = provider.tokenExtras ? provider.tokenExtras.parse(rawExtras) : rawExtras
  const granted =
    typeof response.scope === "string" && response.scope.length > 0
      ? response.scope.split(/[\s,]+/).filter((s) => s.length > 0)
      : undefined
  const asked = previous?.scopes ?? requestedScopes ?? provider.scopes
  const scopes = granted ?? asked
  const widenedScopes = granted === undefined ? [] : granted.filter((s) => !asked.includes(s))
  const dpopKey = previous?.dpopKey
  if (dpopKey !== undefined) Dpop.bind(dpopKey, [response.access_token, response.refresh_token])
  return {
    accessToken: Redacted.make(response.access_token),
    refreshToken: rotated ? Redacted.make(response.refresh_token as string) : previous?.refreshToken,
    tokenType: response.token_type ?? "Bearer",
    obtainedAt: now,
    expiresAt: accessSeconds === undefined ? undefined : now + Math.round(accessSeconds * 1000),
    refreshExpiresAt: rotated
      ? provider.defaultRefreshTokenSeconds === undefined
        ? undefined
        : now + provider.defaultRefreshTokenSeconds * 1000
      : previous?.refreshExpiresAt,
    scopes,
    extras: previous ? { ...previous.extras, ...extras } : extras,
    ...(widenedScopes.length > 0 ? { widenedScopes } : {}),
    ...(adjustments.length > 0 ? { adjustments } : {}),
    ...(dpopKey !== undefined ? { dpopKey } : {})
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
