/**
 * A local OAuth 2.0 authorization server to build a provider's sandbox on: an HTML authorize page
 * (account chooser, Approve / Deny), the token endpoint, an optional separate refresh endpoint, RFC
 * 7009 revocation, client authentication, bearer and API-key checks for the provider's own API
 * routes, lifetimes, call counters and fault injection. A provider's sandbox configures paths,
 * accounts and hooks, then adds its API routes with `sandbox.route(...)`.
 */
import { randomBytes, timingSafeEqual } from "node:crypto"
import {
  type Grant,
  GrantRegistry,
  type IssuedTokens,
  type Lifetimes,
  OAuthError,
  type RefreshTokenOptions
} from "./grants.ts"
import {
  escapeHtml,
  type FaultSpec,
  html,
  json,
  type Route,
  type RouteHandler,
  redirect,
  type SandboxRequest,
  type SandboxResponse,
  type SandboxServer,
  startSandboxServer
} from "./http.ts"

/** Someone who can sign in on the sandbox's authorize page. Extend it with the provider's own data. */
export interface SandboxAccount {
  /** Stable id; the value the authorize page's chooser submits. */
  readonly id: string
  /** Shown on the authorize page (e.g. an e-mail). */
  readonly label: string
  /** A second line on the authorize page (e.g. "subscription, 250 credits"). */
  readonly description?: string | undefined
}

export type ClientAuthMethod = "none" | "client_secret_basic" | "client_secret_post"

export interface SandboxClient {
  readonly clientId: string
  /** Required unless `auth` is "none". */
  readonly clientSecret?: string | undefined
  /** Redirect URIs, compared exactly (no prefix or pattern matching). */
  readonly redirectUris: ReadonlyArray<string>
  /** Accepted authentication methods at the token, refresh and revocation endpoints. */
  readonly auth: ClientAuthMethod | ReadonlyArray<ClientAuthMethod>
  /** Shown on the authorize page (default: the client id). */
  readonly name?: string | undefined
}

/** The validated authorize request an approval answers. */
export interface AuthorizeTransaction {
  readonly id: string
  readonly client: SandboxClient
  readonly redirectUri: string
  readonly state: string | undefined
  readonly scope: ReadonlyArray<string>
  readonly codeChallenge: string | undefined
  readonly codeChallengeMethod: string | undefined
  /** Every query parameter of the authorize request (for provider-specific ones). */
  readonly query: URLSearchParams
  readonly expiresAt: number
}

/** A rejection a hook returns: an RFC 6749 error code and a description. */
export interface HookError {
  readonly error: string
  readonly description: string
  /** HTTP status for token-endpoint errors (default 400). */
  readonly status?: number | undefined
}

export type TokenRequestKind = "authorization_code" | "refresh_token"

export interface TokenResponseContext<A extends SandboxAccount> {
  readonly kind: TokenRequestKind
  readonly grant: Grant
  readonly account: A
  readonly issued: IssuedTokens
  /** The form of the token request (undefined for `issueGrant`). */
  readonly form: URLSearchParams | undefined
}

export interface OAuthSandboxOptions<A extends SandboxAccount> {
  /** The provider's name, shown on the authorize page (e.g. "HeyGen"). */
  readonly name: string
  /** Port on 127.0.0.1 (default: a free one). */
  readonly port?: number | undefined
  readonly clients: ReadonlyArray<SandboxClient>
  /** Accounts the authorize page offers, first one preselected. At least one. */
  readonly accounts: ReadonlyArray<A>
  /** Endpoint paths. `refresh` given: refreshes are accepted only there (HeyGen). */
  readonly paths: {
    readonly authorize: string
    readonly token: string
    readonly refresh?: string | undefined
    readonly revoke?: string | undefined
  }
  /** PKCE: "S256" requires an S256 challenge; "optional" verifies one when sent; "none" ignores it. Default "optional". */
  readonly pkce?: "S256" | "optional" | "none" | undefined
  readonly lifetimes?: Partial<Lifetimes> | undefined
  readonly refreshTokens?: Partial<RefreshTokenOptions> | undefined
  /** Scopes the server knows; a request for another one fails with invalid_scope. Default: any. */
  readonly scopes?: ReadonlyArray<string> | undefined
  /** Scope separator in requests and responses (default " "). */
  readonly scopeSeparator?: string | undefined
  /** Include `expires_in` in token responses (default true). */
  readonly sendExpiresIn?: boolean | undefined
  /** Include `scope` in token responses (default false). */
  readonly sendScope?: boolean | undefined
  /** Add RFC 9207 `iss` to callbacks (default false); the value is the sandbox URL. */
  readonly issuerInCallback?: boolean | undefined
  /** Revoking an access token revokes the whole grant (default false). */
  readonly revokeAccessTokenRevokesGrant?: boolean | undefined
  /** Header API keys travel in (default "x-api-key"). */
  readonly apiKeyHeader?: string | undefined
  /** Prefix of tokens, codes and keys (default "sbx"). */
  readonly tokenPrefix?: string | undefined
  /** Clock in milliseconds (default Date.now). */
  readonly now?: (() => number) | undefined
  readonly authorizePage?:
    | {
        /** Extra validation of the authorize request (e.g. a required provider parameter). */
        readonly validate?:
          | ((query: URLSearchParams, client: SandboxClient) => HookError | undefined)
          | undefined
        /**
         * The accounts the page offers for this request (default: all), e.g. only those the app's
         * distribution can install into. An approval of another account is refused.
         */
        readonly accounts?:
          | ((query: URLSearchParams, accounts: ReadonlyArray<A>) => ReadonlyArray<A>)
          | undefined
        /** Extra HTML placed inside the form (escape values with `escapeHtml`). */
        readonly fields?:
          | ((transaction: AuthorizeTransaction, accounts: ReadonlyArray<A>) => string)
          | undefined
        /**
         * Decide an approval: return data stored on the grant (e.g. the chosen location), or an error
         * that the page shows (400) instead of redirecting.
         */
        readonly onApprove?:
          | ((context: {
              readonly account: A
              readonly form: URLSearchParams
              readonly transaction: AuthorizeTransaction
            }) => { readonly data?: Record<string, unknown> } | { readonly error: string })
          | undefined
      }
    | undefined
  /** Extra validation of a token or refresh request (e.g. a required `user_type`). */
  readonly validateTokenRequest?:
    | ((context: {
        readonly kind: TokenRequestKind
        readonly form: URLSearchParams
        readonly client: SandboxClient
      }) => HookError | undefined)
    | undefined
  /** Extra fields of a token response (e.g. HighLevel's `locationId`, `userType`). */
  readonly tokenResponseExtras?: ((context: TokenResponseContext<A>) => Record<string, unknown>) | undefined
  /** Render an error of the token, refresh or revocation endpoint (default RFC 6749 §5.2 JSON). */
  readonly formatError?: ((error: OAuthError, request: SandboxRequest) => SandboxResponse) | undefined
  /** Extra routes (the provider's API). More can be added later with `sandbox.route`. */
  readonly routes?: ReadonlyArray<Route> | undefined
}

/** The outcome of authenticating an API request. */
export type ApiAuth<A extends SandboxAccount> =
  | { readonly ok: true; readonly kind: "oauth"; readonly account: A; readonly grant: Grant }
  | { readonly ok: true; readonly kind: "api_key"; readonly account: A }
  | {
      readonly ok: false
      /** missing: no credential; unknown/revoked/expired: an access token or API key that does not work. */
      readonly reason: "missing" | "unknown" | "expired" | "revoked"
    }

export interface OAuthSandbox<A extends SandboxAccount> {
  /** `http://127.0.0.1:<port>`: also the issuer. */
  readonly url: string
  readonly port: number
  /** Absolute endpoint URLs (`refresh` and `revocation` only when configured). */
  readonly endpoints: {
    readonly issuer: string
    readonly authorization: string
    readonly token: string
    readonly refresh: string | undefined
    readonly revocation: string | undefined
  }
  readonly accounts: ReadonlyArray<A>
  readonly clients: ReadonlyArray<SandboxClient>
  /** The bookkeeping (codes, grants, tokens, API keys); `lifetimes` and `refreshTokens` are live settings. */
  readonly registry: GrantRegistry
  /** The HTTP server (routes, counters, faults). */
  readonly server: SandboxServer
  /** Requests per endpoint name: "authorize", "token", "refresh", "revoke", and the provider's own. */
  readonly calls: Readonly<Record<string, number>>
  countCalls: SandboxServer["countCalls"]
  resetCalls(): void
  /** Queue a fault for an endpoint (see `FaultSpec`). */
  inject(fault: FaultSpec): void
  clearFaults(): void
  /** Change lifetimes from now on (tokens already issued keep theirs). */
  setLifetimes(lifetimes: Partial<Lifetimes>): void
  /** Add a route for the provider's API. */
  route(method: string, path: string, endpoint: string, handler: RouteHandler): void
  /** Authenticate an API request: `Authorization: Bearer <access token>` or the API-key header. */
  authenticate(request: SandboxRequest): ApiAuth<A>
  account(accountId: string): A | undefined
  /** Mint a grant directly (no browser, no HTTP): returns the token response the token endpoint would. */
  issueGrant(input: {
    readonly account: string
    readonly clientId?: string | undefined
    readonly scope?: ReadonlyArray<string> | undefined
    readonly data?: Record<string, unknown> | undefined
  }): { readonly grant: Grant; readonly tokenResponse: Record<string, unknown> }
  /** Issue an API key for an account. */
  issueApiKey(account: string): string
  /** Make access tokens expire now (all, or one grant's, or one account's). Returns how many. */
  expireAccessTokens(filter?: { readonly grantId?: string; readonly accountId?: string }): number
  close(): Promise<void>
}

const methodsOf = (client: SandboxClient): ReadonlyArray<ClientAuthMethod> =>
  typeof client.auth === "string" ? [client.auth] : client.auth

const safeEqual = (a: string, b: string): boolean => {
  const x = Buffer.from(a)
  const y = Buffer.from(b)
  return x.length === y.length && timingSafeEqual(x, y)
}

/**
 * Authenticate the client of a token, refresh or revocation request (RFC 6749 §2.3.1): HTTP Basic,
 * credentials in the form, or a public client's `client_id` alone, each only when the client allows
 * that method. Throws `OAuthError` invalid_client (401).
 */
export const authenticateClient = (
  request: SandboxRequest,
  clients: ReadonlyArray<SandboxClient>
): SandboxClient => {
  const form = request.form ?? new URLSearchParams()
  const header = request.headers.authorization
  let method: ClientAuthMethod
  let clientId: string | undefined
  let secret: string | undefined
  if (header !== undefined && /^basic /i.test(header)) {
    const decoded = Buffer.from(header.slice(6).trim(), "base64").toString("utf8")
    const colon = decoded.indexOf(":")
    if (colon < 0) throw new OAuthError("invalid_client", "malformed Basic credentials", 401)
    try {
      clientId = decodeURIComponent(decoded.slice(0, colon).replaceAll("+", " "))
      secret = decodeURIComponent(decoded.slice(colon + 1).replaceAll("+", " "))
    } catch {
      throw new OAuthError("invalid_client", "malformed Basic credentials", 401)
    }
    if (form.has("client_secret")) {
      throw new OAuthError("invalid_request", "client credentials sent in more than one way")
    }
    method = "client_secret_basic"
  } else if (form.has("client_secret")) {
    method = "client_secret_post"
    clientId = form.get("client_id") ?? undefined
    secret = form.get("client_secret") ?? undefined
  } else {
    method = "none"
    clientId = form.get("client_id") ?? undefined
  }
  if (!clientId) throw new OAuthError("invalid_client", "client authentication failed", 401)
  const formId = form.get("client_id")
  if (method === "client_secret_basic" && formId !== null && formId !== clientId) {
    throw new OAuthError("invalid_request", "client_id does not match the Basic credentials")
  }
  const client = clients.find((c) => c.clientId === clientId)
  if (client === undefined || !methodsOf(client).includes(method)) {
    throw new OAuthError("invalid_client", "client authentication failed", 401)
  }
  if (
    method !== "none" &&
    !(client.clientSecret !== undefined && secret !== undefined && safeEqual(client.clientSecret, secret))
  ) {
    throw new OAuthError("invalid_client", "client authentication failed", 401)
  }
  return client
}

/** The default RFC 6749 §5.2 error response. */
export const oauthErrorResponse = (error: OAuthError): SandboxResponse =>
  json(
    error.status,
    { error: error.error, error_description: error.description },
    {
      "cache-control": "no-store",
      ...(error.status === 401 ? { "www-authenticate": 'Basic realm="sandbox"' } : {})
    }
  )

/**
 * The look of every sandbox page (the Latchkey demo's own): system fonts, inline styles, no request
 * beyond the page itself (no web fonts, no favicon fetch), readable at 320 px, WCAG AA contrast.
 */
export const SANDBOX_PAGE_STYLE =
  ":root{color-scheme:light;--ink:#111827;--muted:#4b5563;--line:#d1d5db;--accent:#4338ca}" +
  "*{box-sizing:border-box}body{margin:0;background:#f4f6fb;color:var(--ink);" +
  "font:15px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,'Helvetica Neue',Arial,sans-serif}" +
  "main{max-width:34rem;margin:2.5rem auto;padding:1.5rem;background:#fff;border:1px solid #e5e7eb;" +
  "border-radius:16px;box-shadow:0 1px 2px rgb(16 24 40/6%),0 4px 12px rgb(16 24 40/6%)}" +
  "@media (max-width:36rem){main{margin:0;border-radius:0;border-width:0 0 1px}}" +
  "h1{font-size:1.35rem;margin:.2rem 0 .8rem;line-height:1.25}p{margin:.6rem 0}" +
  "code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.85em;background:#f3f4f6;" +
  "border:1px solid #e5e7eb;border-radius:6px;padding:.05rem .35rem;overflow-wrap:anywhere}" +
  "fieldset{border:0;padding:0;margin:1rem 0}legend{font-weight:600;margin-bottom:.3rem}" +
  "label{display:block;padding:.6rem .75rem;border:1px solid var(--line);border-radius:10px;margin:.45rem 0;cursor:pointer}" +
  "label:has(input:checked){border-color:var(--accent);background:#eef2ff}" +
  "small{color:var(--muted);display:block;margin-left:1.6rem}" +
  "input[type=text],input[type=password],input[type=email]{display:block;width:100%;font:inherit;padding:.55rem .7rem;" +
  "border:1px solid #9ca3af;border-radius:10px;margin:.25rem 0 .8rem}" +
  ".actions{display:flex;flex-wrap:wrap;gap:.6rem;margin-top:1rem}" +
  "button,.button{font:inherit;font-weight:600;padding:.55rem 1.2rem;border-radius:10px;border:1px solid var(--line);" +
  "background:#fff;color:var(--ink);cursor:pointer;text-decoration:none;display:inline-block}" +
  "button[value=approve],button[value=install],button.primary{background:var(--accent);border-color:var(--accent);color:#fff}" +
  "button:focus-visible,.button:focus-visible,input:focus-visible{outline:3px solid #a5b4fc;outline-offset:2px}" +
  ".sandbox{display:inline-block;background:#fef3c7;color:#78350f;padding:.2rem .6rem;border-radius:999px;" +
  "font-size:.8rem;font-weight:600;margin:0 0 .4rem}#error{color:#991b1b;background:#fef2f2;border:1px solid #fecaca;" +
  "border-radius:10px;padding:.6rem .8rem}"

/** A whole sandbox page around `body`: the shared style, no external request (`data:` favicon). */
export const sandboxPage = (title: string, body: string) =>
  `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(title)}</title>` +
  `<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">` +
  `<style>${SANDBOX_PAGE_STYLE}</style></head>` +
  `<body><main><p class="sandbox">Sandbox: a local stand-in, not the real service.</p>${body}</main></body></html>`

const page = sandboxPage

const errorPage = (name: string, message: string) =>
  html(
    400,
    page(`${name} sandbox: error`, `<h1>Cannot authorize</h1><p id="error">${escapeHtml(message)}</p>`)
  )

/** Start an OAuth sandbox. */
export const startOAuthSandbox = async <A extends SandboxAccount>(
  options: OAuthSandboxOptions<A>
): Promise<OAuthSandbox<A>> => {
  if (options.accounts.length === 0) throw new TypeError("startOAuthSandbox: give at least one account")
  for (const c of options.clients) {
    if (methodsOf(c).some((m) => m !== "none") && !c.clientSecret) {
      throw new TypeError(`startOAuthSandbox: client ${c.clientId} needs a clientSecret`)
    }
  }
  const registry = new GrantRegistry({
    lifetimes: options.lifetimes,
    refreshTokens: options.refreshTokens,
    now: options.now,
    prefix: options.tokenPrefix
  })
  const now = registry.now
  const sep = options.scopeSeparator ?? " "
  const pkce = options.pkce ?? "optional"
  const transactions = new Map<string, AuthorizeTransaction>()
  const accountById = (id: string) => options.accounts.find((a) => a.id === id)
  const formatError = (e: OAuthError, req: SandboxRequest) =>
    options.formatError ? options.formatError(e, req) : oauthErrorResponse(e)
  const server = await startSandboxServer({ port: options.port, routes: options.routes })
  const base = server.url
  const apiKeyHeader = (options.apiKeyHeader ?? "x-api-key").toLowerCase()

  const callback = (redirectUri: string, params: Record<string, string | undefined>) => {
    const u = new URL(redirectUri)
    for (const [k, v] of Object.entries(params)) if (v !== undefined) u.searchParams.set(k, v)
    if (options.issuerInCallback) u.searchParams.set("iss", base)
    return u.toString()
  }

  const tokenResponse = (
    kind: TokenRequestKind,
    issued: IssuedTokens,
    form: URLSearchParams | undefined
  ): Record<string, unknown> => {
    const body: Record<string, unknown> = { token_type: issued.tokenType, access_token: issued.accessToken }
    if (options.sendExpiresIn ?? true) body.expires_in = issued.expiresIn
    if (issued.refreshToken !== undefined) body.refresh_token = issued.refreshToken
    if (options.sendScope) body.scope = issued.grant.scope.join(sep)
    const account = accountById(issued.grant.accountId)!
    const extras = options.tokenResponseExtras?.({ kind, grant: issued.grant, account, issued, form })
    return { ...body, ...extras }
  }

  // ---- authorize ------------------------------------------------------------------------------

  const authorizeGet: RouteHandler = (req) => {
    const q = req.query
    const clientId = q.get("client_id")
    const client = options.clients.find((c) => c.clientId === clientId)
    if (!clientId || client === undefined) return errorPage(options.name, "Unknown client_id.")
    const redirectUri =
      q.get("redirect_uri") ?? (client.redirectUris.length === 1 ? client.redirectUris[0] : undefined)
    if (!redirectUri || !client.redirectUris.includes(redirectUri)) {
      return errorPage(options.name, "redirect_uri is not registered for this client.")
    }
    const state = q.get("state") ?? undefined
    const fail = (error: string, description: string) =>
      redirect(callback(redirectUri, { error, error_description: description, state }))
    if (q.get("response_type") !== "code")
      return fail("unsupported_response_type", "response_type must be code")
    const challenge = q.get("code_challenge") ?? undefined
    const method = challenge === undefined ? undefined : (q.get("code_challenge_method") ?? "plain")
    if (pkce === "S256" && challenge === undefined)
      return fail("invalid_request", "code_challenge is required")
    if (pkce !== "none" && method !== undefined && method !== "S256") {
      return fail("invalid_request", "code_challenge_method must be S256")
    }
    if (pkce !== "none" && challenge !== undefined && !/^[A-Za-z0-9_-]{43}$/.test(challenge)) {
      return fail("invalid_request", "code_challenge is not an S256 challenge")
    }
    const scope = (q.get("scope") ?? "").split(sep).filter((s) => s.length > 0)
    if (options.scopes !== undefined && scope.some((s) => !options.scopes!.includes(s))) {
      return fail("invalid_scope", "unknown scope requested")
    }
    const hookError = options.authorizePage?.validate?.(q, client)
    if (hookError) return fail(hookError.error, hookError.description)
    const transaction: AuthorizeTransaction = {
      id: randomBytes(16).toString("base64url"),
      client,
      redirectUri,
      state,
      scope,
      codeChallenge: pkce === "none" ? undefined : challenge,
      codeChallengeMethod: pkce === "none" ? undefined : method,
      query: new URLSearchParams(q),
      expiresAt: now() + 10 * 60_000
    }
    transactions.set(transaction.id, transaction)
    const offered = options.authorizePage?.accounts?.(q, options.accounts) ?? options.accounts
    const chooser = offered
      .map(
        (a, i) =>
          `<label><input type="radio" name="account" value="${escapeHtml(a.id)}"${i === 0 ? " checked" : ""}> ` +
          `${escapeHtml(a.label)}${a.description ? `<small>${escapeHtml(a.description)}</small>` : ""}</label>`
      )
      .join("")
    const scopes =
      scope.length > 0
        ? `<p>It asks for: ${scope.map((s) => `<code>${escapeHtml(s)}</code>`).join(" ")}</p>`
        : ""
    const extra = options.authorizePage?.fields?.(transaction, options.accounts) ?? ""
    return html(
      200,
      page(
        `${options.name} sandbox: authorize ${client.name ?? client.clientId}`,
        `<h1>Authorize ${escapeHtml(client.name ?? client.clientId)}</h1>` +
          `<p><strong>${escapeHtml(client.name ?? client.clientId)}</strong> wants to access your ${escapeHtml(options.name)} account.</p>${scopes}` +
          `<form method="post" action="${escapeHtml(req.path)}">` +
          `<input type="hidden" name="transaction" value="${escapeHtml(transaction.id)}">` +
          `<fieldset><legend>Sign in as</legend>${chooser}</fieldset>${extra}` +
          `<p class="actions"><button type="submit" name="decision" value="approve">Approve</button>` +
          `<button type="submit" name="decision" value="deny">Deny</button></p></form>`
      )
    )
  }

  const authorizePost: RouteHandler = (req) => {
    const form = req.form ?? new URLSearchParams()
    const id = form.get("transaction") ?? ""
    const transaction = transactions.get(id)
    if (transaction === undefined || transaction.expiresAt <= now()) {
      transactions.delete(id)
      return errorPage(options.name, "This authorization request is unknown, used or expired; start again.")
    }
    const decision = form.get("decision")
    if (decision !== "approve" && decision !== "deny")
      return errorPage(options.name, "Choose Approve or Deny.")
    const state = transaction.state
    if (decision === "deny") {
      transactions.delete(id)
      return redirect(
        callback(transaction.redirectUri, {
          error: "access_denied",
          error_description: "The user denied the request",
          state
        })
      )
    }
    const account = accountById(form.get("account") ?? "")
    const offered = options.authorizePage?.accounts?.(transaction.query, options.accounts) ?? options.accounts
    if (account === undefined || !offered.includes(account))
      return errorPage(options.name, "Choose an account.")
    let data: Record<string, unknown> | undefined
    const decided = options.authorizePage?.onApprove?.({ account, form, transaction })
    if (decided !== undefined) {
      if ("error" in decided) return errorPage(options.name, decided.error)
      data = decided.data
    }
    transactions.delete(id)
    const code = registry.issueCode({
      clientId: transaction.client.clientId,
      redirectUri: transaction.redirectUri,
      accountId: account.id,
      scope: transaction.scope,
      codeChallenge: transaction.codeChallenge,
      codeChallengeMethod: transaction.codeChallengeMethod,
      data
    })
    return redirect(callback(transaction.redirectUri, { code, state }))
  }

  // ---- token, refresh, revoke ---------------------------------------------------------------

  const oauthEndpoint =
    (f: (req: SandboxRequest, form: URLSearchParams) => SandboxResponse): RouteHandler =>
    (req) => {
      try {
        if (req.form === undefined) {
          throw new OAuthError("invalid_request", "the body must be application/x-www-form-urlencoded")
        }
        return f(req, req.form)
      } catch (e) {
        if (e instanceof OAuthError) return formatError(e, req)
        throw e
      }
    }

  const noStore = { "cache-control": "no-store", pragma: "no-cache" }

  const validate = (kind: TokenRequestKind, form: URLSearchParams, client: SandboxClient) => {
    const hook = options.validateTokenRequest?.({ kind, form, client })
    if (hook) throw new OAuthError(hook.error, hook.description, hook.status ?? 400)
  }

  const doRefresh = (form: URLSearchParams, client: SandboxClient) => {
    validate("refresh_token", form, client)
    const scopeParam = form.get("scope")
    const issued = registry.refresh({
      refreshToken: form.get("refresh_token") ?? undefined,
      clientId: client.clientId,
      scope: scopeParam === null ? undefined : scopeParam.split(sep).filter((s) => s.length > 0)
    })
    return json(200, tokenResponse("refresh_token", issued, form), noStore)
  }

  const separateRefresh = options.paths.refresh !== undefined

  const token = oauthEndpoint((req, form) => {
    const client = authenticateClient(req, options.clients)
    const grantType = form.get("grant_type")
    if (grantType === "authorization_code") {
      validate("authorization_code", form, client)
      const issued = registry.redeemCode({
        code: form.get("code") ?? undefined,
        clientId: client.clientId,
        redirectUri: form.get("redirect_uri") ?? undefined,
        codeVerifier: form.get("code_verifier") ?? undefined
      })
      return json(200, tokenResponse("authorization_code", issued, form), noStore)
    }
    if (grantType === "refresh_token" && !separateRefresh) return doRefresh(form, client)
    if (!grantType) throw new OAuthError("invalid_request", "grant_type is required")
    throw new OAuthError("unsupported_grant_type", `grant_type ${grantType} is not supported here`)
  })

  const refresh = oauthEndpoint((req, form) => {
    const client = authenticateClient(req, options.clients)
    const grantType = form.get("grant_type")
    if (grantType !== "refresh_token") {
      throw new OAuthError("unsupported_grant_type", "this endpoint accepts only grant_type=refresh_token")
    }
    return doRefresh(form, client)
  })

  const revoke = oauthEndpoint((req, form) => {
    const client = authenticateClient(req, options.clients)
    const t = form.get("token")
    if (!t) throw new OAuthError("invalid_request", "token is required")
    registry.revokeToken(t, client.clientId, { wholeGrant: options.revokeAccessTokenRevokesGrant === true })
    return { status: 200, headers: noStore, body: "" }
  })

  const p = options.paths
  server.route({ method: "GET", path: p.authorize, endpoint: "authorize", handler: authorizeGet })
  server.route({ method: "POST", path: p.authorize, endpoint: "authorize", handler: authorizePost })
  server.route({ method: "POST", path: p.token, endpoint: "token", handler: token })
  if (p.refresh !== undefined)
    server.route({ method: "POST", path: p.refresh, endpoint: "refresh", handler: refresh })
  if (p.revoke !== undefined)
    server.route({ method: "POST", path: p.revoke, endpoint: "revoke", handler: revoke })

  const defaultClient = options.clients[0]

  return {
    url: base,
    port: server.port,
    endpoints: {
      issuer: base,
      authorization: base + p.authorize,
      token: base + p.token,
      refresh: p.refresh === undefined ? undefined : base + p.refresh,
      revocation: p.revoke === undefined ? undefined : base + p.revoke
    },
    accounts: options.accounts,
    clients: options.clients,
    registry,
    server,
    calls: server.calls,
    countCalls: server.countCalls,
    resetCalls: server.resetCalls,
    inject: server.inject,
    clearFaults: server.clearFaults,
    setLifetimes: (lifetimes) => {
      registry.lifetimes = { ...registry.lifetimes, ...lifetimes }
    },
    route: (method, path, endpoint, handler) => server.route({ method, path, endpoint, handler }),
    authenticate: (req) => {
      const authorization = req.headers.authorization
      const key = req.headers[apiKeyHeader]
      if (authorization !== undefined && /^bearer\s+/i.test(authorization)) {
        const check = registry.checkAccessToken(authorization.replace(/^bearer\s+/i, "").trim())
        if (!check.ok) return { ok: false, reason: check.reason }
        const account = accountById(check.grant.accountId)
        if (account === undefined) return { ok: false, reason: "unknown" }
        return { ok: true, kind: "oauth", account, grant: check.grant }
      }
      if (key !== undefined) {
        const accountId = registry.checkApiKey(key)
        const account = accountId === undefined ? undefined : accountById(accountId)
        if (account === undefined) return { ok: false, reason: "unknown" }
        return { ok: true, kind: "api_key", account }
      }
      return { ok: false, reason: "missing" }
    },
    account: accountById,
    issueGrant: (input) => {
      const clientId = input.clientId ?? defaultClient?.clientId
      if (clientId === undefined) throw new TypeError("issueGrant: no client")
      if (accountById(input.account) === undefined)
        throw new TypeError(`issueGrant: unknown account ${input.account}`)
      const issued = registry.issueGrant({
        clientId,
        accountId: input.account,
        scope: input.scope,
        data: input.data
      })
      return { grant: issued.grant, tokenResponse: tokenResponse("authorization_code", issued, undefined) }
    },
    issueApiKey: (account) => {
      if (accountById(account) === undefined) throw new TypeError(`issueApiKey: unknown account ${account}`)
      return registry.issueApiKey(account)
    },
    expireAccessTokens: (filter) => registry.expireAccessTokens(filter),
    close: server.close
  }
}
