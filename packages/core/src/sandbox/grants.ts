/**
 * Code and token bookkeeping of a sandbox authorization server: single-use authorization codes bound
 * to their request, grants, access and refresh tokens with lifetimes, rotation and reuse detection,
 * revocation and API keys. Pure in-memory state with an injectable clock; no HTTP here.
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto"

/** An RFC 6749 §5.2 error, as the kit's bookkeeping reports it. */
export class OAuthError extends Error {
  readonly error: string
  readonly description: string
  readonly status: number
  constructor(error: string, description: string, status = 400) {
    super(`${error}: ${description}`)
    this.name = "OAuthError"
    this.error = error
    this.description = description
    this.status = status
  }
}

export interface Lifetimes {
  /** Access token lifetime in seconds (default 3600). */
  readonly accessTokenSeconds: number
  /** Refresh token lifetime in seconds; null for no expiry (default null). */
  readonly refreshTokenSeconds: number | null
  /** Authorization code lifetime in seconds (default 600). */
  readonly codeSeconds: number
}

export interface RefreshTokenOptions {
  /** Each refresh consumes the refresh token and issues a new one (default true). */
  readonly rotate: boolean
  /** Reusing a consumed refresh token revokes the whole grant (default false: only invalid_grant). */
  readonly reuseRevokesGrant: boolean
  /**
   * Seconds after its rotation during which a consumed refresh token is still accepted (and issues
   * new tokens), as Cognito's `RetryGracePeriodSeconds` or Connect2id's grace period (default 0).
   */
  readonly reuseGraceSeconds: number
  /** Issue refresh tokens at all (default true). */
  readonly issue: boolean
}

export interface Grant {
  readonly id: string
  readonly clientId: string
  readonly accountId: string
  readonly scope: ReadonlyArray<string>
  /** Provider-specific data decided at approval (e.g. a chosen location); mutable by the provider. */
  readonly data: Record<string, unknown>
  readonly createdAt: number
  revoked: boolean
  /** The current (unconsumed) refresh token, if any. */
  refreshToken: string | undefined
  /** How many refreshes succeeded. */
  refreshes: number
}

/** What issuing tokens produced (the body of a token response, before provider extras). */
export interface IssuedTokens {
  readonly grant: Grant
  readonly accessToken: string
  readonly tokenType: "Bearer"
  readonly expiresIn: number
  /** Undefined when refresh tokens are not issued, or when a non-rotating refresh kept the old one. */
  readonly refreshToken: string | undefined
  /** Seconds until the refresh token expires; undefined when it does not expire or none was issued. */
  readonly refreshTokenExpiresIn: number | undefined
}

export interface CodeRequest {
  readonly clientId: string
  readonly redirectUri: string
  readonly accountId: string
  readonly scope: ReadonlyArray<string>
  readonly codeChallenge: string | undefined
  readonly codeChallengeMethod: string | undefined
  readonly data?: Record<string, unknown> | undefined
}

interface CodeRecord extends CodeRequest {
  readonly expiresAt: number
  used: boolean
  grantId: string | undefined
}

interface TokenRecord {
  readonly kind: "access" | "refresh"
  readonly grantId: string
  readonly expiresAt: number | null
  state: "active" | "consumed" | "revoked"
  /** When a refresh token was consumed (rotated). */
  consumedAt?: number | undefined
  /** How many refresh requests presented this refresh token. */
  presented?: number | undefined
}

export type TokenCheck =
  | { readonly ok: true; readonly grant: Grant }
  | { readonly ok: false; readonly reason: "unknown" | "expired" | "revoked" }

export interface GrantRegistryOptions {
  readonly lifetimes?: Partial<Lifetimes> | undefined
  readonly refreshTokens?: Partial<RefreshTokenOptions> | undefined
  /** Clock in milliseconds (default Date.now). */
  readonly now?: (() => number) | undefined
  /** Prefix of every token, code and key (default "sbx"). */
  readonly prefix?: string | undefined
}

/** The PKCE S256 challenge of a verifier (RFC 7636 §4.2). */
export const s256 = (verifier: string): string => createHash("sha256").update(verifier).digest("base64url")

const VERIFIER = /^[A-Za-z0-9\-._~]{43,128}$/

/** Check a PKCE verifier against a challenge; only S256 is accepted. */
export const verifyPkce = (verifier: string | undefined, challenge: string, method: string): boolean => {
  if (verifier === undefined || !VERIFIER.test(verifier) || method !== "S256") return false
  const a = Buffer.from(s256(verifier))
  const b = Buffer.from(challenge)
  return a.length === b.length && timingSafeEqual(a, b)
}

const random = () => randomBytes(24).toString("base64url")

export class GrantRegistry {
  lifetimes: Lifetimes
  refreshTokens: RefreshTokenOptions
  readonly now: () => number
  readonly prefix: string
  private readonly codes = new Map<string, CodeRecord>()
  private readonly tokens = new Map<string, TokenRecord>()
  private readonly grantsById = new Map<string, Grant>()
  private readonly accessByGrant = new Map<string, Set<string>>()
  private readonly apiKeys = new Map<string, { accountId: string; revoked: boolean }>()
  /** Consumed refresh tokens presented again outside any grace period (each one a token spent twice). */
  reuseCount = 0
  /** Consumed refresh tokens presented again inside the grace period (accepted). */
  graceReuseCount = 0

  constructor(options: GrantRegistryOptions = {}) {
    this.lifetimes = {
      accessTokenSeconds: 3600,
      refreshTokenSeconds: null,
      codeSeconds: 600,
      ...options.lifetimes
    }
    this.refreshTokens = {
      rotate: true,
      reuseRevokesGrant: false,
      reuseGraceSeconds: 0,
      issue: true,
      ...options.refreshTokens
    }
    this.now = options.now ?? Date.now
    this.prefix = options.prefix ?? "sbx"
  }

  // ---- codes ------------------------------------------------------------------------------

  /** Issue a single-use authorization code bound to the request it answers. */
  issueCode(request: CodeRequest): string {
    const code = `${this.prefix}_code_${random()}`
    this.codes.set(code, {
      ...request,
      expiresAt: this.now() + this.lifetimes.codeSeconds * 1000,
      used: false,
      grantId: undefined
    })
    return code
  }

  /**
   * Redeem a code: checks that it exists, is unused and unexpired, and that the client, redirect URI
   * and PKCE verifier match. A second use fails with invalid_grant and revokes what the first issued
   * (RFC 6749 §4.1.2). Throws `OAuthError`.
   */
  redeemCode(input: {
    readonly code: string | undefined
    readonly clientId: string
    readonly redirectUri: string | undefined
    readonly codeVerifier: string | undefined
  }): IssuedTokens {
    if (!input.code) throw new OAuthError("invalid_request", "code is required")
    const record = this.codes.get(input.code)
    if (record === undefined) throw new OAuthError("invalid_grant", "authorization code not found")
    if (record.used) {
      if (record.grantId !== undefined) this.revokeGrant(record.grantId)
      throw new OAuthError("invalid_grant", "authorization code was already used")
    }
    record.used = true
    if (record.expiresAt <= this.now()) throw new OAuthError("invalid_grant", "authorization code expired")
    if (record.clientId !== input.clientId) {
      throw new OAuthError("invalid_grant", "authorization code was issued to another client")
    }
    if (record.redirectUri !== input.redirectUri) {
      throw new OAuthError("invalid_grant", "redirect_uri does not match the authorization request")
    }
    if (record.codeChallenge !== undefined) {
      if (!verifyPkce(input.codeVerifier, record.codeChallenge, record.codeChallengeMethod ?? "S256")) {
        throw new OAuthError("invalid_grant", "PKCE verification failed")
      }
    } else if (input.codeVerifier !== undefined) {
      throw new OAuthError("invalid_grant", "code_verifier sent but the authorization had no code_challenge")
    }
    const issued = this.issueGrant({
      clientId: record.clientId,
      accountId: record.accountId,
      scope: record.scope,
      data: record.data
    })
    record.grantId = issued.grant.id
    return issued
  }

  // ---- grants and tokens ------------------------------------------------------------------

  /** Create a grant and its first tokens directly (no HTTP, no code): for tests and benchmarks. */
  issueGrant(input: {
    readonly clientId: string
    readonly accountId: string
    readonly scope?: ReadonlyArray<string> | undefined
    readonly data?: Record<string, unknown> | undefined
    /** Issue a refresh token (default: the registry's `refreshTokens.issue`). */
    readonly refreshToken?: boolean | undefined
  }): IssuedTokens {
    const grant: Grant = {
      id: `grant_${random()}`,
      clientId: input.clientId,
      accountId: input.accountId,
      scope: input.scope ?? [],
      data: { ...input.data },
      createdAt: this.now(),
      revoked: false,
      refreshToken: undefined,
      refreshes: 0
    }
    this.grantsById.set(grant.id, grant)
    this.accessByGrant.set(grant.id, new Set())
    const withRefresh = input.refreshToken ?? this.refreshTokens.issue
    return this.mint(grant, withRefresh)
  }

  private mint(grant: Grant, newRefreshToken: boolean): IssuedTokens {
    const now = this.now()
    const accessToken = `${this.prefix}_at_${random()}`
    const expiresIn = this.lifetimes.accessTokenSeconds
    this.tokens.set(accessToken, {
      kind: "access",
      grantId: grant.id,
      expiresAt: now + expiresIn * 1000,
      state: "active"
    })
    this.accessByGrant.get(grant.id)?.add(accessToken)
    let refreshToken: string | undefined
    const refreshSeconds = this.lifetimes.refreshTokenSeconds
    if (newRefreshToken) {
      refreshToken = `${this.prefix}_rt_${random()}`
      this.tokens.set(refreshToken, {
        kind: "refresh",
        grantId: grant.id,
        expiresAt: refreshSeconds === null ? null : now + refreshSeconds * 1000,
        state: "active"
      })
      grant.refreshToken = refreshToken
    }
    return {
      grant,
      accessToken,
      tokenType: "Bearer",
      expiresIn,
      refreshToken,
      refreshTokenExpiresIn:
        refreshToken !== undefined && refreshSeconds !== null ? refreshSeconds : undefined
    }
  }

  /**
   * Refresh: the token must be an active, unexpired refresh token of this client's live grant. With
   * rotation it is consumed and a new one issued; reusing a consumed one fails with invalid_grant
   * (and revokes the grant when `reuseRevokesGrant`). Throws `OAuthError`.
   */
  refresh(input: {
    readonly refreshToken: string | undefined
    readonly clientId: string
    readonly scope?: ReadonlyArray<string> | undefined
  }): IssuedTokens {
    if (!input.refreshToken) throw new OAuthError("invalid_request", "refresh_token is required")
    const record = this.tokens.get(input.refreshToken)
    if (record === undefined || record.kind !== "refresh") {
      throw new OAuthError("invalid_grant", "refresh token not found")
    }
    const grant = this.grantsById.get(record.grantId)!
    if (grant.clientId !== input.clientId) {
      throw new OAuthError("invalid_grant", "refresh token was issued to another client")
    }
    record.presented = (record.presented ?? 0) + 1
    if (record.state === "consumed") {
      const grace = this.refreshTokens.reuseGraceSeconds * 1000
      const inGrace =
        grace > 0 &&
        record.consumedAt !== undefined &&
        this.now() - record.consumedAt < grace &&
        !grant.revoked
      if (!inGrace) {
        this.reuseCount++
        if (this.refreshTokens.reuseRevokesGrant) this.revokeGrant(grant.id)
        throw new OAuthError("invalid_grant", "refresh token was already used")
      }
      this.graceReuseCount++
      grant.refreshes++
      return this.mint(grant, true)
    }
    if (record.state === "revoked" || grant.revoked) {
      throw new OAuthError("invalid_grant", "refresh token was revoked")
    }
    if (record.expiresAt !== null && record.expiresAt <= this.now()) {
      throw new OAuthError("invalid_grant", "refresh token expired")
    }
    if (input.scope?.some((s) => !grant.scope.includes(s))) {
      throw new OAuthError("invalid_scope", "requested scope exceeds the grant")
    }
    const rotate = this.refreshTokens.rotate
    if (rotate) {
      record.state = "consumed"
      record.consumedAt = this.now()
    }
    grant.refreshes++
    return this.mint(grant, rotate)
  }

  /**
   * How the refresh tokens of some grants were used: refresh requests received, the most times any
   * one refresh token was presented (a rotating token belongs to one expiry: 1 means each expiry was
   * refreshed once), and how many refresh tokens were presented more than once.
   */
  refreshTokenUse(filter: { readonly accountId?: string; readonly grant?: (grant: Grant) => boolean }): {
    readonly requests: number
    readonly maxPerToken: number
    readonly sentTwice: number
  } {
    let requests = 0
    let maxPerToken = 0
    let sentTwice = 0
    for (const record of this.tokens.values()) {
      if (record.kind !== "refresh" || !record.presented) continue
      const grant = this.grantsById.get(record.grantId)!
      if (filter.accountId !== undefined && grant.accountId !== filter.accountId) continue
      if (filter.grant !== undefined && !filter.grant(grant)) continue
      requests += record.presented
      maxPerToken = Math.max(maxPerToken, record.presented)
      if (record.presented > 1) sentTwice++
    }
    return { requests, maxPerToken, sentTwice }
  }

  /** Check an access token (for API routes). */
  checkAccessToken(token: string | undefined): TokenCheck {
    if (!token) return { ok: false, reason: "unknown" }
    const record = this.tokens.get(token)
    if (record === undefined || record.kind !== "access") return { ok: false, reason: "unknown" }
    const grant = this.grantsById.get(record.grantId)!
    if (record.state !== "active" || grant.revoked) return { ok: false, reason: "revoked" }
    if (record.expiresAt !== null && record.expiresAt <= this.now()) return { ok: false, reason: "expired" }
    return { ok: true, grant }
  }

  /**
   * RFC 7009: revoking a refresh token revokes its grant; revoking an access token revokes that token
   * (and the grant when `wholeGrant`). Unknown tokens and other clients' tokens are ignored. Returns
   * whether something was revoked.
   */
  revokeToken(token: string, clientId: string, options: { readonly wholeGrant?: boolean } = {}): boolean {
    const record = this.tokens.get(token)
    if (record === undefined) return false
    const grant = this.grantsById.get(record.grantId)!
    if (grant.clientId !== clientId) return false
    if (record.kind === "refresh" || options.wholeGrant === true) return this.revokeGrant(grant.id)
    if (record.state !== "active") return false
    record.state = "revoked"
    return true
  }

  /** Revoke a grant and every token it issued. */
  revokeGrant(grantId: string): boolean {
    const grant = this.grantsById.get(grantId)
    if (grant === undefined || grant.revoked) return false
    grant.revoked = true
    for (const token of this.accessByGrant.get(grantId) ?? []) {
      const r = this.tokens.get(token)
      if (r) r.state = "revoked"
    }
    if (grant.refreshToken !== undefined) {
      const r = this.tokens.get(grant.refreshToken)
      if (r && r.state === "active") r.state = "revoked"
    }
    return true
  }

  /** Make the matching grants' access tokens expire now (to exercise 401 → refresh). Returns how many. */
  expireAccessTokens(filter: { readonly grantId?: string; readonly accountId?: string } = {}): number {
    let n = 0
    const now = this.now()
    for (const grant of this.grantsById.values()) {
      if (filter.grantId !== undefined && grant.id !== filter.grantId) continue
      if (filter.accountId !== undefined && grant.accountId !== filter.accountId) continue
      for (const token of this.accessByGrant.get(grant.id) ?? []) {
        const r = this.tokens.get(token)
        if (r && r.state === "active") {
          this.tokens.set(token, { ...r, expiresAt: now - 1 })
          n++
        }
      }
    }
    return n
  }

  /** The grant a token (access or refresh, in any state) belongs to, without using it. */
  grantOfToken(token: string | null | undefined): Grant | undefined {
    if (!token) return undefined
    const record = this.tokens.get(token)
    return record === undefined ? undefined : this.grantsById.get(record.grantId)
  }

  grant(grantId: string): Grant | undefined {
    return this.grantsById.get(grantId)
  }

  /** Every grant, in creation order. */
  grants(filter: { readonly accountId?: string; readonly clientId?: string } = {}): ReadonlyArray<Grant> {
    return [...this.grantsById.values()].filter(
      (g) =>
        (filter.accountId === undefined || g.accountId === filter.accountId) &&
        (filter.clientId === undefined || g.clientId === filter.clientId)
    )
  }

  // ---- API keys -----------------------------------------------------------------------------

  issueApiKey(accountId: string): string {
    const key = `${this.prefix}_key_${random()}`
    this.apiKeys.set(key, { accountId, revoked: false })
    return key
  }

  revokeApiKey(key: string): boolean {
    const record = this.apiKeys.get(key)
    if (record === undefined || record.revoked) return false
    record.revoked = true
    return true
  }

  /** The account an API key belongs to, if it is known and not revoked. */
  checkApiKey(key: string | undefined): string | undefined {
    if (!key) return undefined
    const record = this.apiKeys.get(key)
    return record && !record.revoked ? record.accountId : undefined
  }
}
