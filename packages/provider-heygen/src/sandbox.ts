/**
 * A local HeyGen on 127.0.0.1, built on `@latchkey/core/sandbox`: the authorize page (Approve / Deny,
 * a choice among sandbox users with different billing types), the token endpoint and the separate
 * refresh endpoint (PKCE S256, exact redirect URI, single-use codes, rotating refresh tokens),
 * revocation, `GET /v3/users/me` in HeyGen's envelope, API keys (`X-Api-Key`), per-endpoint call
 * counts, lifetimes and fault injection. One origin serves what HeyGen spreads over app.heygen.com,
 * api2.heygen.com and api.heygen.com: pass `sandbox.urls` to `HeyGen.provider`.
 */
import {
  type ApproveOptions,
  approve,
  type FaultSpec,
  json,
  type Lifetimes,
  type OAuthSandbox,
  type RefreshTokenOptions,
  type SandboxAccount,
  type SandboxRequest,
  startOAuthSandbox
} from "@latchkey/core/sandbox"
import type { HeyGenUrls } from "./HeyGen.ts"

/** The `data` of `GET /v3/users/me` (HeyGen's shape: exactly one billing object populated). */
export interface HeyGenUserData {
  readonly username: string
  readonly email: string
  readonly first_name: string
  readonly last_name: string
  readonly billing_type: "wallet" | "subscription" | "usage_based" | null
  readonly wallet?: unknown
  readonly subscription?: unknown
  readonly usage_based?: unknown
}

export interface HeyGenSandboxUser extends SandboxAccount {
  readonly data: HeyGenUserData
}

const user = (data: HeyGenUserData, description: string): HeyGenSandboxUser => ({
  id: data.username,
  label: data.email,
  description,
  data: { wallet: null, subscription: null, usage_based: null, ...data }
})

/** Three users, one per billing type; `jane_doe` is HeyGen's documented example. */
export const defaultUsers: ReadonlyArray<HeyGenSandboxUser> = [
  user(
    {
      username: "jane_doe",
      email: "jane@example.com",
      first_name: "Jane",
      last_name: "Doe",
      billing_type: "subscription",
      subscription: {
        plan: "enterprise",
        credits: {
          premium_credits: { remaining: 250, resets_at: "2026-05-01T00:00:00Z" },
          add_on_credits: { remaining: 50, resets_at: null }
        }
      }
    },
    "Subscription (enterprise): 250 premium + 50 add-on credits"
  ),
  user(
    {
      username: "walt_wallet",
      email: "walt@example.com",
      first_name: "Walt",
      last_name: "Wallace",
      billing_type: "wallet",
      wallet: {
        currency: "usd",
        remaining_balance: 42.5,
        auto_reload: { enabled: true, amount_usd: 50, threshold_usd: 10 }
      }
    },
    "Wallet: $42.50, auto-reload on"
  ),
  user(
    {
      username: "uma_metered",
      email: "uma@example.com",
      first_name: "Uma",
      last_name: "Meyer",
      billing_type: "usage_based",
      usage_based: {
        included_credits: 1000,
        remaining_credits: 640,
        spending_cap_usd: 500,
        spending_current_usd: 120.75
      }
    },
    "Usage-based: 640 of 1,000 included credits left"
  )
]

export interface HeyGenSandboxOptions {
  /** Port on 127.0.0.1 (default: a free one). */
  readonly port?: number | undefined
  /** The client id the sandbox accepts (default `"heygen-sandbox-client"`). */
  readonly clientId?: string | undefined
  /** Redirect URIs registered for the client, matched exactly. */
  readonly redirectUris: ReadonlyArray<string>
  /** Sandbox users (default `defaultUsers`). */
  readonly users?: ReadonlyArray<HeyGenSandboxUser> | undefined
  /** Seconds. Default: access 864000 (HeyGen's ten days), refresh tokens never expire, codes 600. */
  readonly lifetimes?: Partial<Lifetimes> | undefined
  /** Default: rotating (HeyGen's CLI treats the old token as spent; UNVERIFIED), reuse → invalid_grant only. */
  readonly refreshTokens?: Partial<RefreshTokenOptions> | undefined
  /** Send `expires_in` (default true; false exercises the client's ten-day default). */
  readonly sendExpiresIn?: boolean | undefined
  /** Clock in milliseconds (default Date.now). */
  readonly now?: (() => number) | undefined
}

export interface HeyGenSandbox extends OAuthSandbox<HeyGenSandboxUser> {
  /** The hosts to give `HeyGen.provider({ urls })`. */
  readonly urls: HeyGenUrls
  readonly clientId: string
  /** Walk the authorize page as a person would (see `approve` in `@latchkey/core/sandbox`). */
  approve(authorizeUrl: string | URL, options?: ApproveOptions): Promise<string>
  /** Replace a user's `/v3/users/me` data from now on (e.g. credits spent). */
  setUserData(username: string, data: Partial<HeyGenUserData>): void
  /** The `/v3/users/me` data a user currently has. */
  userData(username: string): HeyGenUserData
}

const DOC_URL = "https://docs.heygen.com/reference/errors"

const v3Error = (status: number, code: string, message: string) =>
  json(status, { error: { code, message, doc_url: DOC_URL } })

/** Start a local HeyGen. */
export const startHeyGenSandbox = async (options: HeyGenSandboxOptions): Promise<HeyGenSandbox> => {
  const clientId = options.clientId ?? "heygen-sandbox-client"
  const users = new Map((options.users ?? defaultUsers).map((u) => [u.id, { ...u.data }]))
  const sandbox = await startOAuthSandbox<HeyGenSandboxUser>({
    name: "HeyGen",
    port: options.port,
    clients: [{ clientId, redirectUris: options.redirectUris, auth: "none", name: clientId }],
    accounts: options.users ?? defaultUsers,
    paths: {
      authorize: "/oauth/authorize",
      token: "/v1/oauth/token",
      refresh: "/v1/oauth/refresh_token",
      revoke: "/v1/oauth/revoke"
    },
    pkce: "S256",
    lifetimes: { accessTokenSeconds: 864_000, refreshTokenSeconds: null, ...options.lifetimes },
    refreshTokens: { rotate: true, reuseRevokesGrant: false, ...options.refreshTokens },
    sendExpiresIn: options.sendExpiresIn ?? true,
    tokenPrefix: "hg",
    now: options.now
  })

  const authFailure = (reason: "missing" | "unknown" | "expired" | "revoked") =>
    reason === "missing"
      ? "Missing authentication: send Authorization: Bearer <token> or X-Api-Key"
      : reason === "expired"
        ? "Access token expired"
        : "Invalid access token or API key"

  // v3: {"code":100,"data":{...},"message":null}; errors {"error":{code,message,doc_url}}.
  sandbox.route("GET", "/v3/users/me", "users_me", (req: SandboxRequest) => {
    const auth = sandbox.authenticate(req)
    if (!auth.ok) return v3Error(401, "unauthorized", authFailure(auth.reason))
    return json(200, { code: 100, data: users.get(auth.account.id), message: null })
  })

  // An older-style endpoint (v2), whose errors are {"code":401056|401057,"message":...}. Its body is
  // illustrative (the remaining credits); it is here for the older error envelope.
  sandbox.route("GET", "/v2/user/remaining_quota", "remaining_quota", (req: SandboxRequest) => {
    const auth = sandbox.authenticate(req)
    if (!auth.ok) {
      return auth.reason === "expired"
        ? json(401, { code: 401056, message: "Access token expired" })
        : json(401, { code: 401057, message: authFailure(auth.reason) })
    }
    const data = users.get(auth.account.id)!
    const left =
      (data.subscription as { credits?: { premium_credits?: { remaining?: number } } } | null)?.credits
        ?.premium_credits?.remaining ??
      (data.usage_based as { remaining_credits?: number } | null)?.remaining_credits ??
      0
    return json(200, { error: null, data: { remaining_quota: left } })
  })

  // HeyGen-shaped bodies for API faults unless the test gives its own.
  const inject = (fault: FaultSpec) => {
    const api = fault.endpoint === "users_me" || fault.endpoint === "remaining_quota"
    if (api && fault.fault === "rate_limit" && fault.body === undefined) {
      return sandbox.inject({
        ...fault,
        body: JSON.stringify({
          error: { code: "rate_limit_exceeded", message: "Rate limit exceeded", doc_url: DOC_URL }
        })
      })
    }
    if (api && fault.fault === "status" && fault.body === undefined) {
      return sandbox.inject({
        ...fault,
        body: JSON.stringify({
          error: { code: "internal_error", message: "Internal error", doc_url: DOC_URL }
        })
      })
    }
    return sandbox.inject(fault)
  }

  return {
    ...sandbox,
    inject,
    urls: { app: sandbox.url, auth: sandbox.url, api: sandbox.url },
    clientId,
    approve: (url, approveOptions) => approve(url, approveOptions),
    setUserData: (username, data) => {
      const current = users.get(username)
      if (current === undefined) throw new TypeError(`setUserData: unknown sandbox user ${username}`)
      users.set(username, { ...current, ...data })
    },
    userData: (username) => {
      const current = users.get(username)
      if (current === undefined) throw new TypeError(`userData: unknown sandbox user ${username}`)
      return current
    }
  }
}
