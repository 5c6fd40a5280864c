/**
 * A local GitHub for tests and demos, built on `@latchkey/core/sandbox`: the web application flow of
 * a GitHub App or OAuth app on 127.0.0.1, as GitHub documents it.
 *
 * - `GET /login/oauth/authorize`: the kit's authorize page (account chooser, Approve / Deny).
 * - `POST /login/oauth/access_token`: `client_id` and `client_secret` in the form body; the code
 *   exchange and the refresh. Answers form-encoded (`access_token=...&scope=...&token_type=bearer`)
 *   unless the request asks for JSON with `Accept: application/json`. Errors come with HTTP 200 and
 *   GitHub's codes: `bad_verification_code`, `redirect_uri_mismatch`, `incorrect_client_credentials`,
 *   `bad_refresh_token`, `unsupported_grant_type`.
 * - User-token expiration (on by default, as for new GitHub Apps): `expires_in` 28800 and a refresh
 *   token with `refresh_token_expires_in` 15897600; a refresh returns a new refresh token and ends the
 *   old one and the old access token. Off (OAuth apps): tokens that do not expire, no refresh token.
 * - `GET /user`: the signed-in user (`Authorization: Bearer` or `token`); 401 `Bad credentials`
 *   otherwise; 403 without a `User-Agent` header, as GitHub does.
 * - `DELETE /applications/{client_id}/grant`: HTTP Basic with the app's client id and secret, JSON
 *   body `{ "access_token": ... }`; deletes the grant and every token of it (204), 422 for a token
 *   that is not a live one of this app.
 *
 * Web and API share one origin here: give `url` as both `webUrl` and `apiUrl` of `GitHub.provider`.
 */
import { randomBytes, timingSafeEqual } from "node:crypto"
import {
  approve,
  authenticateClient,
  empty,
  type FaultSpec,
  type GrantRegistry,
  type IssuedTokens,
  json,
  OAuthError,
  type OAuthSandbox,
  type SandboxAccount,
  type SandboxRequest,
  type SandboxResponse,
  startOAuthSandbox
} from "@latchkey/core/sandbox"

export interface GitHubUser {
  readonly login: string
  /** GitHub's numeric user id. */
  readonly id: number
  readonly name?: string | undefined
  readonly email?: string | undefined
}

export interface GitHubSandboxOptions {
  /** Port on 127.0.0.1 (default: a free one). */
  readonly port?: number
  /** The app's callback URLs (compared exactly). */
  readonly redirectUris: ReadonlyArray<string>
  /** Default: a GitHub-App-like `Iv1.` id. */
  readonly clientId?: string
  /** Default: 40 random hex characters. */
  readonly clientSecret?: string
  /** User-token expiration: on (default; GitHub Apps) or off (OAuth apps, or opted out). */
  readonly tokenExpiration?: boolean
  /** Default 28800 (8 hours), as GitHub; shorten it to watch refreshes happen. */
  readonly accessTokenSeconds?: number
  /** Default 15897600 (6 months), as GitHub. */
  readonly refreshTokenSeconds?: number
  /** Default: octocat and hubot. */
  readonly users?: ReadonlyArray<GitHubUser>
  /** Clock in milliseconds (default Date.now). */
  readonly now?: () => number
}

export interface GitHubSandbox {
  /** `http://127.0.0.1:<port>`: github.com and api.github.com in one. */
  readonly url: string
  readonly clientId: string
  readonly clientSecret: string
  readonly users: ReadonlyArray<GitHubUser>
  /** Approve on the authorize page as `login`; resolves the callback URL. */
  approve(authorizeUrl: string, login: string): Promise<string>
  /** Press Deny on the authorize page; resolves the callback URL (`error=access_denied`). */
  deny(authorizeUrl: string): Promise<string>
  /** Refresh requests the token endpoint answered (successful or not). */
  refreshes(): number
  /** Requests per endpoint: `authorize`, `token`, `user`, `delete_grant`. */
  readonly calls: Readonly<Record<string, number>>
  /** Queue a fault (see the kit's `FaultSpec`), e.g. `{ endpoint: "token", fault: "drop_after_rotate" }`. */
  inject(fault: FaultSpec): void
  /** The kit's bookkeeping: grants, tokens, lifetimes. */
  readonly registry: GrantRegistry
  /** Make every access token expire now (what 8 hours do). */
  expireAccessTokens(): number
  close(): Promise<void>
}

export const DEFAULT_USERS: ReadonlyArray<GitHubUser> = [
  { login: "octocat", id: 583231, name: "The Octocat", email: "octocat@github.com" },
  { login: "hubot", id: 480938, name: "Hubot" }
]

/** A non-expiring token, in the kit's terms: a lifetime far beyond any test. */
const NEVER_SECONDS = 100 * 365 * 24 * 3600

const DOCS =
  "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors"

const ERRORS: Readonly<Record<string, string>> = {
  bad_verification_code: "The code passed is incorrect or expired.",
  redirect_uri_mismatch: "The redirect_uri MUST match the registered callback URL for this application.",
  incorrect_client_credentials: "The client_id and/or client_secret passed are incorrect.",
  bad_refresh_token: "The refresh token passed is incorrect or expired.",
  unsupported_grant_type: "The grant type is not supported."
}

interface GitHubAccount extends SandboxAccount {
  readonly user: GitHubUser
}

const wantsJson = (request: SandboxRequest) => (request.headers.accept ?? "").includes("application/json")

/** GitHub answers the token endpoint in the format the Accept header asks for: JSON, or a form. */
const answer = (request: SandboxRequest, body: Record<string, string | number>): SandboxResponse => {
  if (wantsJson(request)) return json(200, body, { "cache-control": "no-store" })
  const form = new URLSearchParams()
  for (const [k, v] of Object.entries(body)) form.set(k, String(v))
  return {
    status: 200,
    headers: {
      "content-type": "application/x-www-form-urlencoded; charset=utf-8",
      "cache-control": "no-store"
    },
    body: form.toString()
  }
}

const githubError = (request: SandboxRequest, code: string): SandboxResponse =>
  answer(request, {
    error: code,
    error_description: ERRORS[code] ?? code,
    error_uri: `${DOCS}#${code.replaceAll("_", "-")}`
  })

const safeEqual = (a: string, b: string) => {
  const x = Buffer.from(a)
  const y = Buffer.from(b)
  return x.length === y.length && timingSafeEqual(x, y)
}

export const startSandbox = async (options: GitHubSandboxOptions): Promise<GitHubSandbox> => {
  const expiring = options.tokenExpiration ?? true
  const clientId = options.clientId ?? `Iv1.${randomBytes(8).toString("hex")}`
  const clientSecret = options.clientSecret ?? randomBytes(20).toString("hex")
  const users = options.users ?? DEFAULT_USERS
  const client = {
    clientId,
    clientSecret,
    redirectUris: options.redirectUris,
    auth: "client_secret_post" as const,
    name: "Latchkey example app"
  }
  // The access token each grant currently has: a refresh ends the previous one, as on GitHub.
  const currentAccess = new Map<string, string>()
  let sandbox: OAuthSandbox<GitHubAccount> | undefined

  const tokenBody = (issued: IssuedTokens): Record<string, string | number> => {
    const previous = currentAccess.get(issued.grant.id)
    if (previous !== undefined) sandbox!.registry.revokeToken(previous, clientId)
    currentAccess.set(issued.grant.id, issued.accessToken)
    return {
      access_token: issued.accessToken,
      ...(expiring ? { expires_in: issued.expiresIn } : {}),
      ...(issued.refreshToken !== undefined ? { refresh_token: issued.refreshToken } : {}),
      ...(issued.refreshTokenExpiresIn !== undefined
        ? { refresh_token_expires_in: issued.refreshTokenExpiresIn }
        : {}),
      scope: issued.grant.scope.join(","),
      token_type: "bearer"
    }
  }

  // The kit's token endpoint answers JSON only; GitHub's answers what Accept asks for, so this one is
  // served here, from the kit's client authentication and bookkeeping. (Routes given at start are
  // matched before the kit's own.)
  const token = (request: SandboxRequest): SandboxResponse => {
    const form = request.form ?? new URLSearchParams()
    try {
      authenticateClient(request, [client])
    } catch {
      return githubError(request, "incorrect_client_credentials")
    }
    const registry = sandbox!.registry
    const grantType = form.get("grant_type") ?? "authorization_code"
    try {
      if (grantType === "refresh_token") {
        return answer(
          request,
          tokenBody(registry.refresh({ refreshToken: form.get("refresh_token") ?? undefined, clientId }))
        )
      }
      if (grantType !== "authorization_code") return githubError(request, "unsupported_grant_type")
      return answer(
        request,
        tokenBody(
          registry.redeemCode({
            code: form.get("code") ?? undefined,
            clientId,
            redirectUri: form.get("redirect_uri") ?? undefined,
            codeVerifier: form.get("code_verifier") ?? undefined
          })
        )
      )
    } catch (e) {
      if (!(e instanceof OAuthError)) throw e
      if (grantType === "refresh_token") return githubError(request, "bad_refresh_token")
      return githubError(
        request,
        /redirect_uri/.test(e.description) ? "redirect_uri_mismatch" : "bad_verification_code"
      )
    }
  }

  const apiError = (status: number, message: string) =>
    json(status, { message, documentation_url: "https://docs.github.com/rest", status: String(status) })

  const user = (request: SandboxRequest): SandboxResponse => {
    if (!request.headers["user-agent"]) {
      return apiError(
        403,
        "Request forbidden by administrative rules. Please make sure your request has a User-Agent header"
      )
    }
    const header = request.headers.authorization ?? ""
    const match = /^(?:bearer|token)\s+(\S+)$/i.exec(header)
    const check = sandbox!.registry.checkAccessToken(match?.[1])
    if (!check.ok) return apiError(401, match ? "Bad credentials" : "Requires authentication")
    const account = sandbox!.account(check.grant.accountId)!
    const u = account.user
    return json(200, {
      login: u.login,
      id: u.id,
      node_id: Buffer.from(`04:User${u.id}`).toString("base64"),
      avatar_url: `https://avatars.githubusercontent.com/u/${u.id}?v=4`,
      html_url: `https://github.com/${u.login}`,
      type: "User",
      site_admin: false,
      name: u.name ?? null,
      email: u.email ?? null
    })
  }

  const deleteGrant = (request: SandboxRequest): SandboxResponse => {
    const header = request.headers.authorization ?? ""
    const basic = /^basic\s+(\S+)$/i.exec(header)
    const [id, secret] = basic ? Buffer.from(basic[1]!, "base64").toString("utf8").split(/:(.*)/s) : []
    if (id !== request.params.client_id || id !== clientId || !secret || !safeEqual(secret, clientSecret)) {
      return apiError(404, "Not Found")
    }
    const accessToken = (request.json as { access_token?: unknown } | undefined)?.access_token
    const check = sandbox!.registry.checkAccessToken(
      typeof accessToken === "string" ? accessToken : undefined
    )
    if (!check.ok || check.grant.clientId !== clientId) return apiError(422, "Validation Failed")
    sandbox!.registry.revokeGrant(check.grant.id)
    return empty(204)
  }

  sandbox = await startOAuthSandbox<GitHubAccount>({
    name: "GitHub",
    ...(options.port !== undefined ? { port: options.port } : {}),
    clients: [client],
    accounts: users.map((u) => ({
      id: u.login,
      label: u.login,
      ...(u.name ? { description: u.name } : {}),
      user: u
    })),
    paths: { authorize: "/login/oauth/authorize", token: "/login/oauth/access_token" },
    pkce: "optional",
    lifetimes: {
      accessTokenSeconds: expiring ? (options.accessTokenSeconds ?? 28_800) : NEVER_SECONDS,
      refreshTokenSeconds: options.refreshTokenSeconds ?? 15_897_600
    },
    refreshTokens: { rotate: true, reuseRevokesGrant: false, issue: expiring },
    tokenPrefix: "ghu",
    ...(options.now ? { now: options.now } : {}),
    routes: [
      { method: "POST", path: "/login/oauth/access_token", endpoint: "token", handler: token },
      { method: "GET", path: "/user", endpoint: "user", handler: user },
      {
        method: "DELETE",
        path: "/applications/:client_id/grant",
        endpoint: "delete_grant",
        handler: deleteGrant
      }
    ]
  })
  const s = sandbox
  return {
    url: s.url,
    clientId,
    clientSecret,
    users,
    approve: (url, login) => approve(url, { account: login }),
    deny: (url) => approve(url, { deny: true }),
    refreshes: () => s.countCalls({ endpoint: "token", grantType: "refresh_token" }),
    calls: s.calls,
    inject: (fault) => s.inject(fault),
    registry: s.registry,
    expireAccessTokens: () => s.expireAccessTokens(),
    close: () => s.close()
  }
}
