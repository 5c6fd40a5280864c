/**
 * A real authorization server for tests, benchmarks and the demo: `oidc-provider` (a certified
 * OpenID Provider) in-process on 127.0.0.1, with rotating single-use refresh tokens, revocation,
 * introspection and its development login/consent forms; and `consent()`, which walks those forms
 * with a cookie jar the way a browser would, returning the callback URL the server redirects to.
 */
import { randomBytes } from "node:crypto"
import { createServer, type Server } from "node:http"
import type { AddressInfo } from "node:net"
import Provider, { type Configuration } from "oidc-provider"

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
  /** Display names by login. */
  readonly accounts?: Readonly<Record<string, { name?: string; email?: string }>>
  /**
   * oidc-provider's storage adapter. Default: its development memory adapter, an LRU of about a
   * thousand entries per server (enough for tests; benchmarks holding thousands of grants pass one).
   */
  readonly adapter?: Configuration["adapter"]
  /** Require a server-provided nonce in every DPoP proof (RFC 9449 §8, §9), at the token endpoint and userinfo. */
  readonly dpopNonce?: boolean
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
  /** Token-endpoint grants seen, by grant type, successful or not. */
  readonly grants: { authorization_code: number; refresh_token: number; refreshErrors: number }
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

export const startOidcServer = async (options: OidcServerOptions): Promise<OidcServer> => {
  const server: Server = createServer()
  await new Promise<void>((resolve) => server.listen(options.port ?? 0, "127.0.0.1", resolve))
  const port = (server.address() as AddressInfo).port
  const issuer = `http://127.0.0.1:${port}`
  const clients = options.clients ?? defaultClients
  const accounts = options.accounts ?? {}
  const provider = new Provider(issuer, {
    ...(options.adapter ? { adapter: options.adapter } : {}),
    clients: clients.map((c) => ({
      ...c,
      redirect_uris: [...options.redirectUris],
      grant_types: ["authorization_code", "refresh_token"],
      response_types: ["code"],
      scope: SCOPES.join(" ")
    })),
    scopes: [...SCOPES],
    claims: { openid: ["sub"], email: ["email"], profile: ["name"] },
    features: {
      devInteractions: { enabled: true },
      revocation: { enabled: true },
      introspection: { enabled: true },
      ...(options.dpopNonce
        ? { dPoP: { enabled: true, nonceSecret: randomBytes(32), requireNonce: () => true } }
        : {})
    },
    pkce: { required: () => false },
    rotateRefreshToken: options.rotateRefreshToken ?? true,
    issueRefreshToken: async (_ctx, client, code) =>
      client.grantTypeAllowed("refresh_token") &&
      (code.scopes.has("offline_access") || code.scopes.has("openid")),
    ttl: {
      AccessToken: options.accessTokenTtl ?? 3600,
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
        email: accounts[sub]?.email ?? `${sub}@example.com`,
        name: accounts[sub]?.name ?? sub
      })
    }),
    renderError: async (ctx, out) => {
      ctx.type = "json"
      ctx.body = out
    }
  })
  provider.proxy = false
  const grants = { authorization_code: 0, refresh_token: 0, refreshErrors: 0 }
  const count = (ctx: any) => {
    const type = ctx?.oidc?.params?.grant_type as string | undefined
    if (type === "authorization_code") grants.authorization_code++
    if (type === "refresh_token") grants.refresh_token++
    return type
  }
  provider.on("grant.success", (ctx: any) => {
    count(ctx)
  })
  provider.on("grant.error", (ctx: any) => {
    if (count(ctx) === "refresh_token") grants.refreshErrors++
  })
  // oidc-provider logs server errors to the console by default; tests see them through responses.
  provider.on("server_error", () => {})
  server.on("request", provider.callback())
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
    provider,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      })
  }
}

export interface ConsentOptions {
  /** The account to log in as (any login is accepted by the development forms). */
  readonly login: string
  /** Abort at the consent step: the server redirects back with error=access_denied. */
  readonly deny?: boolean
  /** Stop at this URL prefix and return it (the app's redirect URI). */
  readonly redirectUri: string
}

/**
 * Walk the development login and consent forms like a browser: follow redirects with a cookie jar,
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
