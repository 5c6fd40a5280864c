/**
 * A real authorization server for tests, benchmarks and the demo: `oidc-provider` (a certified
 * OpenID Provider) in-process on 127.0.0.1, with rotating single-use refresh tokens, revocation,
 * introspection, its own storage, signing key and login/consent forms (configured so that
 * oidc-provider has nothing to warn about); and `consent()`, which walks those forms
 * with a cookie jar the way a browser would, returning the callback URL the server redirects to.
 */
import { createHash, generateKeyPairSync, randomBytes } from "node:crypto"
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http"
import type { AddressInfo } from "node:net"
import Provider, { type Adapter, type AdapterPayload, type Configuration } from "oidc-provider"

export interface OidcClient {
  readonly client_id: string
  readonly client_secret?: string
  readonly token_endpoint_auth_method: "client_secret_basic" | "client_secret_post" | "none"
}

export interface OidcServerOptions {
  readonly port?: number
  /** Redirect URIs every client accepts. */
  readonly redirectUris: ReadonlyArray<string>
  readonly clients?: ReadonlyArray<OidcClient>
  /** Seconds. Default 3600 (seed 002: one hour). */
  readonly accessTokenTtl?: number
  /** Seconds. Default 30 days (seed 002). */
  readonly refreshTokenTtl?: number
  /** Default true: every refresh returns a new refresh token and the old one is consumed. */
  readonly rotateRefreshToken?: boolean
  /**
   * Hold every answer to a refresh_token grant this long after the server processed it (default 0):
   * a slow network, so that refreshes are in flight long enough to be interrupted.
   */
  readonly refreshAnswerDelayMs?: number
  /** Display names by login. */
  readonly accounts?: Readonly<Record<string, { name?: string; email?: string }>>
  /**
   * oidc-provider's storage adapter. Default: an in-memory store of this server's own, without a
   * size limit (entries leave when they expire).
   */
  readonly adapter?: Configuration["adapter"]
  /** Require a server-provided nonce in every DPoP proof (RFC 9449 §8, §9), at the token endpoint and userinfo. */
  readonly dpopNonce?: boolean
  /**
   * Offer the client-credentials grant (RFC 6749 §4.4) to the confidential clients, with tokens
   * living this many seconds (default `accessTokenTtl`). Off by default.
   */
  readonly clientCredentials?: boolean | { readonly ttl?: number }
}

export interface OidcServer {
  readonly issuer: string
  readonly port: number
  readonly endpoints: {
    readonly issuer: string
    readonly authorization: string
    readonly token: string
    readonly revocation: string
    readonly userinfo: string
    readonly introspection: string
  }
  readonly clients: ReadonlyArray<OidcClient>
  /**
   * How one account's refresh tokens were used: requests, the most times any one token was presented
   * (1 when each expiry was refreshed once) and the tokens presented more than once.
   */
  refreshTokenUse(accountId: string): { requests: number; maxPerToken: number; sentTwice: number }
  /** Token-endpoint grants seen, by grant type, successful or not. */
  readonly grants: {
    authorization_code: number
    refresh_token: number
    refreshErrors: number
    client_credentials: number
  }
  readonly provider: Provider
  close(): Promise<void>
}

export const defaultClients: ReadonlyArray<OidcClient> = [
  {
    client_id: "basic-client",
    client_secret: "basic-secret-0123456789",
    token_endpoint_auth_method: "client_secret_basic"
  },
  {
    client_id: "post-client",
    client_secret: "post-secret-0123456789",
    token_endpoint_auth_method: "client_secret_post"
  },
  { client_id: "public-client", token_endpoint_auth_method: "none" }
]

export const SCOPES = ["openid", "offline_access", "read", "write", "admin", "email", "profile"] as const

/**
 * oidc-provider's storage, in this process's memory, one per server. (Its built-in adapter is a
 * development LRU shared by every server in the process, and it warns about it on each start.)
 */
const memoryAdapter = (): Configuration["adapter"] => {
  const rows = new Map<string, { payload: AdapterPayload; expiresAt: number }>()
  const index = new Map<string, string>()
  const live = (key: string) => {
    const row = rows.get(key)
    if (row === undefined) return undefined
    if (row.expiresAt <= Date.now()) {
      rows.delete(key)
      return undefined
    }
    return row.payload
  }
  return class MemoryAdapter implements Adapter {
    readonly name: string
    constructor(name: string) {
      this.name = name
    }
    key(id: string) {
      return `${this.name}:${id}`
    }
    async upsert(id: string, payload: AdapterPayload, expiresIn: number) {
      rows.set(this.key(id), { payload, expiresAt: expiresIn ? Date.now() + expiresIn * 1000 : Infinity })
      if (payload.uid) index.set(`uid:${payload.uid}`, id)
      if (payload.userCode) index.set(`userCode:${payload.userCode}`, id)
    }
    async find(id: string) {
      return live(this.key(id))
    }
    async findByUid(uid: string) {
      const id = index.get(`uid:${uid}`)
      return id === undefined ? undefined : live(this.key(id))
    }
    async findByUserCode(userCode: string) {
      const id = index.get(`userCode:${userCode}`)
      return id === undefined ? undefined : live(this.key(id))
    }
    async consume(id: string) {
      const payload = live(this.key(id))
      if (payload) payload.consumed = Math.floor(Date.now() / 1000)
    }
    async destroy(id: string) {
      rows.delete(this.key(id))
    }
    async revokeByGrantId(grantId: string) {
      for (const [key, row] of rows) if (row.payload.grantId === grantId) rows.delete(key)
    }
  }
}

/** One RS256 signing key per process (generating RSA keys is slow), instead of the development keys. */
let signingKey: Record<string, unknown> | undefined
const jwks = () => {
  signingKey ??= {
    ...generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey.export({ format: "jwk" }),
    kid: "testkit-rs256",
    alg: "RS256",
    use: "sig"
  }
  return { keys: [signingKey] }
}

/**
 * The look of the login and consent pages (the Latchkey demo's own): system fonts, inline styles, no
 * request beyond the page itself (no web fonts, no favicon fetch), WCAG AA contrast, usable at 320 px.
 */
const STYLE =
  ":root{color-scheme:light;--ink:#111827;--muted:#4b5563;--line:#d1d5db;--accent:#0f766e}" +
  "*{box-sizing:border-box}body{margin:0;background:#f4f6fb;color:var(--ink);" +
  "font:15px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,'Helvetica Neue',Arial,sans-serif}" +
  "main{max-width:28rem;margin:2.5rem auto;padding:1.5rem;background:#fff;border:1px solid #e5e7eb;" +
  "border-radius:16px;box-shadow:0 1px 2px rgb(16 24 40/6%),0 4px 12px rgb(16 24 40/6%)}" +
  "@media (max-width:30rem){main{margin:0;border-radius:0;border-width:0 0 1px}}" +
  ".brand{display:inline-block;background:#ccfbf1;color:#134e4a;padding:.2rem .6rem;border-radius:999px;" +
  "font-size:.8rem;font-weight:600;margin:0 0 .4rem}h1{font-size:1.35rem;margin:.2rem 0 .8rem;line-height:1.25}" +
  "p{margin:.6rem 0}label{display:block;font-weight:600;margin-top:.6rem}" +
  "input{display:block;width:100%;font:inherit;padding:.55rem .7rem;border:1px solid #9ca3af;border-radius:10px;margin:.25rem 0 .4rem}" +
  "code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.85em;background:#f3f4f6;" +
  "border:1px solid #e5e7eb;border-radius:6px;padding:.05rem .35rem}" +
  ".actions{display:flex;flex-wrap:wrap;align-items:center;gap:.6rem;margin-top:1rem}" +
  "button,.button{font:inherit;font-weight:600;padding:.55rem 1.2rem;border-radius:10px;border:1px solid var(--line);" +
  "background:#fff;color:var(--ink);cursor:pointer;text-decoration:none;display:inline-block}" +
  "button[type=submit]{background:var(--accent);border-color:var(--accent);color:#fff}" +
  "button:focus-visible,.button:focus-visible,input:focus-visible{outline:3px solid #5eead4;outline-offset:2px}" +
  ".hint{color:var(--muted);font-size:.9rem}"

const escapeHtml = (value: unknown) =>
  String(value).replace(
    /[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]!
  )

const page = (title: string, body: string) =>
  `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(title)}</title>` +
  `<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">` +
  `<style>${STYLE}</style></head><body><main><p class="brand">Example Corp · test authorization server</p>` +
  `<h1>${escapeHtml(title)}</h1>${body}</main></body></html>`

/** What `/interaction/<uid>/abort` tells the client, by the page it was pressed on. */
export const CANCEL_DESCRIPTIONS = {
  login: "End-User cancelled the sign-in",
  consent: "End-User aborted interaction"
} as const

const readForm = async (req: IncomingMessage) => {
  let text = ""
  for await (const chunk of req) text += chunk
  return new URLSearchParams(text)
}

/**
 * The login and consent pages (the same forms as oidc-provider's development interactions, which
 * warn on every start): any login and password sign in; Continue grants what the client asked for;
 * `/interaction/<uid>/abort` denies.
 */
const interactions =
  (provider: Provider) =>
  async (req: IncomingMessage, res: ServerResponse, uid: string, abort: boolean): Promise<void> => {
    try {
      const details = await provider.interactionDetails(req, res)
      if (abort) {
        await provider.interactionFinished(
          req,
          res,
          {
            error: "access_denied",
            error_description:
              details.prompt.name === "login" ? CANCEL_DESCRIPTIONS.login : CANCEL_DESCRIPTIONS.consent
          },
          { mergeWithLastSubmission: false }
        )
        return
      }
      const action = `/interaction/${encodeURIComponent(uid)}`
      if (req.method === "GET") {
        const client = String(details.params.client_id ?? "")
        const scopes = String(details.params.scope ?? "")
          .split(" ")
          .filter((x) => x.length > 0)
        const body =
          details.prompt.name === "login"
            ? `<p>Sign in to continue to <strong>${escapeHtml(client)}</strong>. Any login and password work here.</p>` +
              `<form autocomplete="off" action="${action}" method="post"><input type="hidden" name="prompt" value="login"/>` +
              `<label for="login">Login</label><input required type="text" id="login" name="login" placeholder="Enter any login" autofocus>` +
              `<label for="password">Password</label><input required type="password" id="password" name="password" placeholder="and password">` +
              `<p class="actions"><button type="submit">Sign-in</button><a class="button" href="${action}/abort">Cancel</a></p></form>`
            : `<p><strong>${escapeHtml(client)}</strong> asks for access to your account:</p>` +
              `<p>${scopes.map((x) => `<code>${escapeHtml(x)}</code>`).join(" ")}</p>` +
              `<form autocomplete="off" action="${action}" method="post"><input type="hidden" name="prompt" value="consent"/>` +
              `<p class="actions"><button autofocus type="submit">Continue</button><a class="button" href="${action}/abort">Cancel</a></p></form>` +
              `<p class="hint">Continue grants what the app asked for; Cancel sends you back without linking anything.</p>`
        res.writeHead(200, { "content-type": "text/html; charset=utf-8", "cache-control": "no-store" })
        res.end(page(details.prompt.name === "login" ? "Sign-in" : "Authorize", body))
        return
      }
      const form = await readForm(req)
      if (form.get("prompt") === "login" && details.prompt.name === "login") {
        await provider.interactionFinished(
          req,
          res,
          { login: { accountId: form.get("login") ?? "" } },
          { mergeWithLastSubmission: false }
        )
        return
      }
      if (form.get("prompt") === "consent" && details.prompt.name === "consent") {
        const missing = details.prompt.details as {
          missingOIDCScope?: ReadonlyArray<string>
          missingOIDCClaims?: ReadonlyArray<string>
          missingResourceScopes?: Record<string, ReadonlyArray<string>>
        }
        const grant = details.grantId
          ? await provider.Grant.find(details.grantId)
          : new provider.Grant({
              accountId: details.session!.accountId,
              clientId: String(details.params.client_id)
            })
        if (grant === undefined) throw new Error("grant not found")
        if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(" "))
        if (missing.missingOIDCClaims) grant.addOIDCClaims([...missing.missingOIDCClaims])
        for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
          grant.addResourceScope(indicator, scopes.join(" "))
        }
        await provider.interactionFinished(
          req,
          res,
          { consent: { grantId: await grant.save() } },
          { mergeWithLastSubmission: true }
        )
        return
      }
      res.writeHead(400, { "content-type": "application/json" }).end('{"error":"invalid_request"}')
    } catch (error) {
      res
        .writeHead(400, { "content-type": "application/json" })
        .end(JSON.stringify({ error: "interaction_failed", message: (error as Error).message }))
    }
  }

export const startOidcServer = async (options: OidcServerOptions): Promise<OidcServer> => {
  const server: Server = createServer()
  await new Promise<void>((resolve) => server.listen(options.port ?? 0, "127.0.0.1", resolve))
  const port = (server.address() as AddressInfo).port
  const issuer = `http://127.0.0.1:${port}`
  const clients = options.clients ?? defaultClients
  const accounts = options.accounts ?? {}
  const provider = new Provider(issuer, {
    adapter: options.adapter ?? memoryAdapter(),
    jwks: jwks() as Configuration["jwks"],
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
    clients: clients.map((c) => ({
      ...c,
      redirect_uris: [...options.redirectUris],
      grant_types: [
        "authorization_code",
        "refresh_token",
        ...(options.clientCredentials && c.token_endpoint_auth_method !== "none"
          ? ["client_credentials"]
          : [])
      ],
      response_types: ["code"],
      scope: SCOPES.join(" ")
    })),
    scopes: [...SCOPES],
    claims: { openid: ["sub"], email: ["email"], profile: ["name"] },
    features: {
      devInteractions: { enabled: false },
      // oidc-provider's default policies, given explicitly (it prints a notice whenever a default runs).
      revocation: {
        enabled: true,
        allowedPolicy: async (_ctx, client, token) => token.clientId === client.clientId
      },
      introspection: {
        enabled: true,
        allowedPolicy: async (ctx, client, token) =>
          !(client.clientAuthMethod === "none" && token.clientId !== ctx.oidc.client?.clientId)
      },
      ...(options.dpopNonce
        ? { dPoP: { enabled: true, nonceSecret: randomBytes(32), requireNonce: () => true } }
        : {}),
      ...(options.clientCredentials ? { clientCredentials: { enabled: true } } : {})
    },
    clientBasedCORS: () => false,
    pkce: { required: () => false },
    rotateRefreshToken: options.rotateRefreshToken ?? true,
    issueRefreshToken: async (_ctx, client, code) =>
      client.grantTypeAllowed("refresh_token") &&
      (code.scopes.has("offline_access") || code.scopes.has("openid")),
    ttl: {
      AccessToken: options.accessTokenTtl ?? 3600,
      ClientCredentials:
        (typeof options.clientCredentials === "object" ? options.clientCredentials.ttl : undefined) ??
        options.accessTokenTtl ??
        3600,
      RefreshToken: options.refreshTokenTtl ?? 30 * 24 * 3600,
      AuthorizationCode: 60,
      IdToken: 3600,
      Grant: 365 * 24 * 3600,
      Interaction: 600,
      Session: 3600
    },
    cookies: { keys: ["latchkey-testkit-cookie-key-0123456789"] },
    findAccount: async (_ctx, sub) => ({
      accountId: sub,
      claims: async () => ({
        sub,
        // A login that is already an e-mail address is its own address.
        email: accounts[sub]?.email ?? (sub.includes("@") ? sub : `${sub}@example.com`),
        name: accounts[sub]?.name ?? sub
      })
    }),
    renderError: async (ctx, out) => {
      ctx.type = "json"
      ctx.body = out
    }
  })
  provider.proxy = false
  const grants = { authorization_code: 0, refresh_token: 0, refreshErrors: 0, client_credentials: 0 }
  const count = (ctx: any) => {
    const type = ctx?.oidc?.params?.grant_type as string | undefined
    if (type === "authorization_code") grants.authorization_code++
    if (type === "refresh_token") grants.refresh_token++
    if (type === "client_credentials") grants.client_credentials++
    return type
  }
  // Refresh tokens presented, by SHA-256 (never the token): how often, and whose.
  const presented = new Map<string, { uses: number; accountId: string | undefined }>()
  const notePresented = (ctx: any) => {
    const value = ctx?.oidc?.params?.refresh_token
    if (ctx?.oidc?.params?.grant_type !== "refresh_token" || typeof value !== "string") return
    const key = createHash("sha256").update(value).digest("base64url")
    const entry = presented.get(key) ?? { uses: 0, accountId: undefined }
    entry.uses++
    entry.accountId ??= ctx.oidc.entities?.RefreshToken?.accountId ?? ctx.oidc.entities?.Account?.accountId
    presented.set(key, entry)
  }
  provider.on("grant.success", (ctx: any) => {
    count(ctx)
    notePresented(ctx)
  })
  provider.on("grant.error", (ctx: any) => {
    if (count(ctx) === "refresh_token") grants.refreshErrors++
    notePresented(ctx)
  })
  const answerDelay = options.refreshAnswerDelayMs ?? 0
  if (answerDelay > 0) {
    provider.use(async (ctx, next) => {
      await next()
      if (ctx.path === "/token" && ctx.oidc?.params?.grant_type === "refresh_token")
        await new Promise((resolve) => setTimeout(resolve, answerDelay))
    })
  }
  // oidc-provider logs server errors to the console by default; tests see them through responses.
  provider.on("server_error", () => {})
  const callback = provider.callback()
  const interact = interactions(provider)
  server.on("request", (req, res) => {
    const match = /^\/interaction\/([^/?]+)(\/abort)?(?:\?|$)/.exec(req.url ?? "")
    if (match) return void interact(req, res, decodeURIComponent(match[1]!), match[2] !== undefined)
    callback(req, res)
  })
  return {
    issuer,
    port,
    endpoints: {
      issuer,
      authorization: `${issuer}/auth`,
      token: `${issuer}/token`,
      revocation: `${issuer}/token/revocation`,
      userinfo: `${issuer}/me`,
      introspection: `${issuer}/token/introspection`
    },
    clients,
    grants,
    refreshTokenUse: (accountId) => {
      let requests = 0
      let maxPerToken = 0
      let sentTwice = 0
      for (const entry of presented.values()) {
        if (entry.accountId !== accountId) continue
        requests += entry.uses
        maxPerToken = Math.max(maxPerToken, entry.uses)
        if (entry.uses > 1) sentTwice++
      }
      return { requests, maxPerToken, sentTwice }
    },
    provider,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      })
  }
}

export interface ConsentOptions {
  /** The account to log in as (any login is accepted by the forms). */
  readonly login: string
  /** Abort at the consent step: the server redirects back with error=access_denied. */
  readonly deny?: boolean
  /** Stop at this URL prefix and return it (the app's redirect URI). */
  readonly redirectUri: string
}

/**
 * Walk the login and consent forms like a browser: follow redirects with a cookie jar,
 * post the forms, and return the URL the server finally redirects to under `redirectUri`.
 */
export const consent = async (authorizeUrl: string, options: ConsentOptions): Promise<string> => {
  const jar = new Map<string, string>()
  const cookieHeader = () => [...jar].map(([k, v]) => `${k}=${v}`).join("; ")
  const remember = (response: Response) => {
    for (const line of response.headers.getSetCookie()) {
      const [pair] = line.split(";")
      const eq = pair!.indexOf("=")
      jar.set(pair!.slice(0, eq).trim(), pair!.slice(eq + 1).trim())
    }
  }
  let url = authorizeUrl
  let method = "GET"
  let body: URLSearchParams | undefined
  for (let hop = 0; hop < 20; hop++) {
    if (url.startsWith(options.redirectUri)) return url
    const response = await fetch(url, {
      method,
      redirect: "manual",
      headers: {
        cookie: cookieHeader(),
        ...(body ? { "content-type": "application/x-www-form-urlencoded" } : {})
      },
      ...(body ? { body } : {})
    })
    remember(response)
    if (response.status >= 300 && response.status < 400) {
      await response.body?.cancel()
      url = new URL(response.headers.get("location")!, url).href
      method = "GET"
      body = undefined
      continue
    }
    const html = await response.text()
    if (response.status !== 200)
      throw new Error(`consent: ${url} answered ${response.status}: ${html.slice(0, 200)}`)
    const action = /<form[^>]*action="([^"]+)"/.exec(html)?.[1]
    if (!action) throw new Error(`consent: no form at ${url}`)
    const submit = new URL(action.replace(/&amp;/g, "&"), url).href
    if (html.includes('name="prompt" value="login"')) {
      method = "POST"
      body = new URLSearchParams({ prompt: "login", login: options.login, password: "any" })
      url = submit
    } else if (html.includes('name="prompt" value="consent"')) {
      if (options.deny) {
        url = submit.replace(/\/interaction\/([^/]+)$/, "/interaction/$1/abort")
        method = "GET"
        body = undefined
      } else {
        method = "POST"
        body = new URLSearchParams({ prompt: "consent" })
        url = submit
      }
    } else {
      throw new Error(`consent: unexpected page at ${url}`)
    }
  }
  throw new Error("consent: too many redirects")
}

/**
 * The token server of the store conformance suite's cross-process checks (`ConformanceTokenServer` of
 * `@latchkey/core/testing`): this server with rotating single-use refresh tokens, linked through its
 * real login and consent forms.
 */
export const conformanceTokenServer = async () => {
  const redirectUri = "http://127.0.0.1:9/callback"
  const server = await startOidcServer({ redirectUris: [redirectUri], rotateRefreshToken: true })
  const client = server.clients.find((c) => c.client_id === "basic-client")!
  return {
    provider: {
      clientId: client.client_id,
      clientSecret: client.client_secret!,
      clientAuth: "client_secret_basic" as const,
      endpoints: server.endpoints,
      redirectUri,
      scopes: ["openid", "offline_access", "email", "read"],
      authorizationParams: { prompt: "consent" }
    },
    identify: async ({
      fetch
    }: {
      readonly fetch: (input: string | URL, init?: RequestInit) => Promise<Response>
    }) => {
      const res = await fetch(server.endpoints.userinfo)
      if (!res.ok) throw new Error(`userinfo ${res.status}`)
      const body = (await res.json()) as { sub: string; email?: string }
      return { accountId: body.sub, label: body.email ?? body.sub }
    },
    approve: (url: string, login: string) => consent(url, { login, redirectUri }),
    refreshCount: () => server.grants.refresh_token,
    refreshErrors: () => server.grants.refreshErrors,
    close: () => server.close()
  }
}
