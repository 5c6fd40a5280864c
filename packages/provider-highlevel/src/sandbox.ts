/**
 * `@latchkey/provider-highlevel/sandbox`: a local HighLevel on 127.0.0.1, built on the shared sandbox
 * kit (`@latchkey/core/sandbox`). It serves both the marketplace (`/oauth/chooselocation`, and the
 * marketplace's own install page for public apps) and the API (`/oauth/token`, `/oauth/locationToken`,
 * `/oauth/installedLocations`, `/locations/:id`, `/companies/:id`, `/users/:id`) from one port, and
 * behaves as PROVIDERS.md says HighLevel does:
 *
 * - client_secret_post only, no PKCE, exact redirect URIs, single-use codes;
 * - `user_type` (Location | Company) required on every token request and matching the installation;
 * - access tokens for 86,399 s, refresh tokens SINGLE USE and valid a year (both scalable); a reused
 *   refresh token is `invalid_grant` and, with `reuseRevokesGrant`, ends the whole grant;
 * - location tokens minted from an agency token (no refresh token; dead once the agency grant is);
 * - every API call needs `Version: 2021-07-28` and its scope (`locations.readonly`, `oauth.write`…);
 *   rate limits per app and location with the real
 *   headers; signed INSTALL / UNINSTALL webhooks (Ed25519 `x-ghl-signature`, RSA `x-wh-signature`);
 * - the kit's faults, e.g. `inject({ endpoint: "token", grantType: "refresh_token", fault: "drop_after_rotate" })`.
 *
 * Its clock is `now` (default `Date.now`): give it the test's clock to run a year in no time.
 */
import { randomBytes } from "node:crypto"
import {
  approve as approvePage,
  escapeHtml,
  type FaultSpec,
  type Grant,
  html,
  json,
  OAuthError,
  type OAuthSandbox,
  oauthErrorResponse,
  redirect,
  type SandboxAccount,
  type SandboxRequest,
  type SandboxResponse,
  sandboxPage,
  startOAuthSandbox
} from "@latchkey/core/sandbox"
import {
  ACCESS_TOKEN_SECONDS,
  API_VERSION,
  appIdOf,
  REFRESH_TOKEN_SECONDS,
  type UserType
} from "./internal.ts"
import { makeServerRateLimit, type RateLimitOptions } from "./sandbox/rateLimit.ts"
import {
  type DeliverOptions,
  type Delivery,
  makeSigner,
  type Signing,
  type WebhookKeys
} from "./sandbox/webhooks.ts"

export type { DeliverOptions, Delivery, RateLimitOptions, Signing, WebhookKeys }

export interface SandboxLocation {
  readonly id: string
  readonly name: string
  readonly email?: string
  readonly timezone?: string
  readonly address?: string
}

export interface SandboxCompany {
  readonly id: string
  readonly name: string
  readonly email?: string
}

export interface SandboxUser {
  readonly id: string
  readonly name: string
  readonly email: string
}

/** Who can be chosen on the chooselocation page: one of the agency's locations, or the agency. */
export interface HighLevelAccount extends SandboxAccount {
  readonly userType: UserType
  readonly companyId: string
  readonly location: SandboxLocation | undefined
}

export interface HighLevelSandboxOptions {
  readonly port?: number
  readonly clientId?: string
  readonly clientSecret?: string
  /** Redirect URIs registered for the app (exact match). Default `http://127.0.0.1:3000/oauth/highlevel/callback`. */
  readonly redirectUris?: ReadonlyArray<string>
  readonly company?: SandboxCompany
  /** The agency's locations (sub-accounts). Default: three. */
  readonly locations?: ReadonlyArray<SandboxLocation>
  /**
   * What the app's distribution lets the chooselocation page offer: `"Location"` (sub-account apps:
   * locations only), `"Company"` (the agency only) or `"both"` (default), as the marketplace does.
   */
  readonly distribution?: UserType | "both"
  /** The app's scopes, granted by a marketplace install. */
  readonly scopes?: ReadonlyArray<string>
  /** The agency user who installs the app (`userId` in token responses). */
  readonly user?: SandboxUser
  /** Seconds. Defaults: 86,399 (a day), 365 days, 600. */
  readonly lifetimes?: {
    readonly accessTokenSeconds?: number
    readonly refreshTokenSeconds?: number | null
    readonly codeSeconds?: number
  }
  /** Reusing a spent refresh token also revokes the whole grant (RFC 9700). Default false: only invalid_grant. */
  readonly reuseRevokesGrant?: boolean
  /** API rate limits (default 100 per 10 s, 200,000 a day, per app and location); `false` for none. */
  readonly rateLimit?: RateLimitOptions | false
  /** Clock in milliseconds (default `Date.now`). */
  readonly now?: () => number
}

export type InstallTarget = { readonly locationId: string } | { readonly companyId: string }

export interface HighLevelSandbox {
  /** `http://127.0.0.1:<port>`: the marketplace and the API. */
  readonly url: string
  readonly clientId: string
  readonly clientSecret: string
  /** The first registered redirect URI. */
  readonly redirectUri: string
  /** Spread into `HighLevel.provider({ ...sandbox.providerOptions, scopes })`. */
  readonly providerOptions: {
    readonly clientId: string
    readonly clientSecret: string
    readonly redirectUri: string
    readonly marketplaceUrl: string
    readonly apiUrl: string
  }
  readonly company: SandboxCompany
  readonly locations: ReadonlyArray<SandboxLocation>
  readonly user: SandboxUser
  /** The public keys an app configures for `HighLevel.Webhooks.make(...)`. */
  readonly webhookKeys: WebhookKeys
  /** The kit sandbox underneath (registry, server, routes). */
  readonly oauth: OAuthSandbox<HighLevelAccount>
  /** Requests per endpoint: authorize, token, location_token, installed_locations, locations, companies, users, install. */
  readonly calls: Readonly<Record<string, number>>
  countCalls: OAuthSandbox<HighLevelAccount>["countCalls"]
  resetCalls(): void
  inject(fault: FaultSpec): void
  clearFaults(): void
  /** Change lifetimes from now on (issued tokens keep theirs). */
  setLifetimes(lifetimes: { accessTokenSeconds?: number; refreshTokenSeconds?: number | null }): void
  /** Switch reuse detection's grant revocation on or off. */
  setReuseRevokesGrant(on: boolean): void
  /** A person on the chooselocation page: picks a location (or the agency by its company id) and approves. */
  approve(authorizeUrl: string, account?: string): Promise<string>
  deny(authorizeUrl: string): Promise<string>
  /**
   * A public marketplace install: someone installs the app from HighLevel's marketplace UI, which
   * redirects to the app's redirect URI with `?code=...` and no state. Resolves that URL.
   */
  install(target?: InstallTarget, options?: { readonly redirectUri?: string }): Promise<string>
  /** Uninstall: the app's grants for the location (or company, with its location tokens) end; UNINSTALL is delivered when `webhookUrl` is given. */
  uninstall(
    target: InstallTarget,
    options?: { readonly webhookUrl?: string } & DeliverOptions
  ): Promise<Delivery | undefined>
  /** Deliver a signed INSTALL or UNINSTALL webhook to a URL. */
  sendWebhook(
    url: string,
    type: "INSTALL" | "UNINSTALL",
    target: InstallTarget,
    options?: DeliverOptions
  ): Promise<Delivery>
  /** Whether the app is installed in a location (by an install of its own or of the agency). */
  isInstalled(locationId: string): boolean
  close(): Promise<void>
}

const DEFAULT_COMPANY: SandboxCompany = {
  id: "sbxCompany0001",
  name: "Sandbox Agency",
  email: "agency@sandbox.test"
}
const DEFAULT_LOCATIONS: ReadonlyArray<SandboxLocation> = [
  {
    id: "sbxLocation001",
    name: "Acme Plumbing",
    email: "hello@acme-plumbing.test",
    timezone: "America/New_York",
    address: "12 Main St, Springfield"
  },
  {
    id: "sbxLocation002",
    name: "Bright Dental",
    email: "front-desk@bright-dental.test",
    timezone: "America/Chicago",
    address: "400 Oak Ave, Riverton"
  },
  {
    id: "sbxLocation003",
    name: "Cedar Realty",
    email: "team@cedar-realty.test",
    timezone: "Europe/London",
    address: "7 Quay Rd, Bristol"
  }
]
const DEFAULT_USER: SandboxUser = { id: "sbxUser0001", name: "Sam Sandbox", email: "sam@sandbox.test" }

const KNOWN_VERSIONS = new Set([API_VERSION, "2021-04-15"])

const apiError = (status: number, message: string, error: string, headers?: Record<string, string>) =>
  json(status, { statusCode: status, message, error }, headers)

export const startSandbox = async (options: HighLevelSandboxOptions = {}): Promise<HighLevelSandbox> => {
  const now = options.now ?? Date.now
  const clientId = options.clientId ?? "66c0ffee5a4db0c1e2f3a4b5-sbx1q2w3"
  const clientSecret = options.clientSecret ?? `sbx-hl-${randomBytes(18).toString("base64url")}`
  const redirectUris = options.redirectUris ?? ["http://127.0.0.1:3000/oauth/highlevel/callback"]
  const company = options.company ?? DEFAULT_COMPANY
  const locations = options.locations ?? DEFAULT_LOCATIONS
  const user = options.user ?? DEFAULT_USER
  const limits = options.rateLimit === false ? undefined : makeServerRateLimit(options.rateLimit ?? {}, now)
  const signer = makeSigner(now)
  // Installs of the app: by sub-accounts themselves, and by the agency (which covers every location).
  const directInstalls = new Set<string>()
  let agencyInstalled = false
  const isInstalled = (locationId: string) => agencyInstalled || directInstalls.has(locationId)
  const appScopes = options.scopes ?? [
    "locations.readonly",
    "users.readonly",
    "companies.readonly",
    "oauth.readonly",
    "oauth.write"
  ]

  const accounts: Array<HighLevelAccount> = [
    ...locations.map(
      (l): HighLevelAccount => ({
        id: l.id,
        label: l.name,
        description: `Sub-account${l.address ? ` · ${l.address}` : ""}`,
        userType: "Location",
        companyId: company.id,
        location: l
      })
    ),
    {
      id: company.id,
      label: company.name,
      description: "Agency (Company): every sub-account",
      userType: "Company",
      companyId: company.id,
      location: undefined
    }
  ]

  const dataOf = (account: HighLevelAccount) => ({
    userType: account.userType,
    companyId: account.companyId,
    ...(account.location ? { locationId: account.location.id } : {})
  })

  const markInstalled = (grant: Grant) => {
    if (grant.data.userType === "Company") agencyInstalled = true
    else if (typeof grant.data.locationId === "string") directInstalls.add(grant.data.locationId)
  }

  // The grant a presented (current) refresh token belongs to, without spending it.
  const grantOfRefreshToken = (token: string | null) =>
    token === null ? undefined : oauth.registry.grants().find((g) => g.refreshToken === token)

  const oauth: OAuthSandbox<HighLevelAccount> = await startOAuthSandbox<HighLevelAccount>({
    name: "HighLevel",
    port: options.port,
    clients: [
      {
        clientId,
        clientSecret,
        redirectUris,
        auth: "client_secret_post",
        name: "Latchkey sandbox app"
      }
    ],
    accounts,
    paths: { authorize: "/oauth/chooselocation", token: "/oauth/token" },
    pkce: "none",
    lifetimes: {
      accessTokenSeconds: options.lifetimes?.accessTokenSeconds ?? ACCESS_TOKEN_SECONDS,
      refreshTokenSeconds:
        options.lifetimes?.refreshTokenSeconds === undefined
          ? REFRESH_TOKEN_SECONDS
          : options.lifetimes.refreshTokenSeconds,
      codeSeconds: options.lifetimes?.codeSeconds ?? 600
    },
    refreshTokens: { rotate: true, reuseRevokesGrant: options.reuseRevokesGrant ?? false, issue: true },
    sendScope: true,
    tokenPrefix: "sbxhl",
    now,
    authorizePage: {
      accounts: (_query, all) =>
        all.filter((a) => (options.distribution ?? "both") === "both" || a.userType === options.distribution),
      onApprove: ({ account }) => ({ data: dataOf(account) })
    },
    validateTokenRequest: ({ kind, form }) => {
      const userType = form.get("user_type")
      if (userType === null) return { error: "invalid_request", description: "user_type is required" }
      if (userType !== "Location" && userType !== "Company") {
        return { error: "invalid_request", description: "user_type must be Location or Company" }
      }
      if (kind === "refresh_token") {
        const grant = grantOfRefreshToken(form.get("refresh_token"))
        if (grant !== undefined && grant.data.userType !== userType) {
          return { error: "invalid_request", description: `user_type must be ${String(grant.data.userType)}` }
        }
      }
      return undefined
    },
    tokenResponseExtras: ({ kind, grant, form }) => {
      const userType = grant.data.userType as UserType
      if (kind === "authorization_code" && form !== undefined && form.get("user_type") !== userType) {
        // The code is spent; nothing it issued may stay usable.
        oauth.registry.revokeGrant(grant.id)
        throw new OAuthError("invalid_request", `user_type must be ${userType} for this installation`)
      }
      if (kind === "authorization_code") markInstalled(grant)
      return userType === "Company"
        ? {
            userType,
            companyId: grant.data.companyId,
            approvedLocations: locations.map((l) => l.id),
            userId: user.id,
            isBulkInstallation: true
          }
        : {
            userType,
            companyId: grant.data.companyId,
            locationId: grant.data.locationId,
            userId: user.id,
            isBulkInstallation: false
          }
    },
    // HighLevel's observed answer to bad client credentials; everything else as RFC 6749 §5.2.
    formatError: (error) =>
      error.error === "invalid_client"
        ? json(401, { error: "UnAuthorized!", error_description: "Invalid client credentials!" })
        : oauthErrorResponse(error)
  })

  // ---- the API ------------------------------------------------------------------------------

  interface Caller {
    readonly grant: Grant
    readonly userType: UserType
    readonly companyId: string
    readonly locationId: string | undefined
  }

  /** Version header, bearer token (a location token dies with its agency grant), rate limit. */
  const guard = (
    req: SandboxRequest,
    scope: string,
    handler: (caller: Caller, headers: Record<string, string>) => SandboxResponse
  ): SandboxResponse => {
    const version = req.headers.version
    if (version === undefined) return apiError(401, "version header was not found", "Unauthorized")
    if (!KNOWN_VERSIONS.has(version)) return apiError(400, "version header is not supported", "Bad Request")
    const auth = oauth.authenticate(req)
    const agencyGrant = auth.ok && auth.kind === "oauth" ? auth.grant.data.agencyGrantId : undefined
    const agencyRevoked =
      typeof agencyGrant === "string" && oauth.registry.grant(agencyGrant)?.revoked === true
    if (!auth.ok || auth.kind !== "oauth" || agencyRevoked) {
      return apiError(401, "Invalid token: access token is invalid", "Unauthorized")
    }
    const data = auth.grant.data
    const caller: Caller = {
      grant: auth.grant,
      userType: data.userType as UserType,
      companyId: String(data.companyId),
      locationId: typeof data.locationId === "string" ? data.locationId : undefined
    }
    let headers: Record<string, string> = {}
    if (limits !== undefined) {
      const decision = limits.take(`${auth.grant.clientId}:${caller.locationId ?? caller.companyId}`)
      headers = decision.headers
      if (!decision.allowed) return apiError(429, "Too Many Requests", "Too Many Requests", headers)
    }
    if (!auth.grant.scope.includes(scope)) {
      return apiError(401, "The token is not authorized for this scope.", "Unauthorized", headers)
    }
    return handler(caller, headers)
  }

  const forbidden = (headers: Record<string, string>) =>
    apiError(403, "The token does not have access to this location.", "Forbidden", headers)

  const locationBody = (l: SandboxLocation) => ({
    location: {
      id: l.id,
      companyId: company.id,
      name: l.name,
      ...(l.email ? { email: l.email } : {}),
      ...(l.timezone ? { timezone: l.timezone } : {}),
      ...(l.address ? { address: l.address } : {})
    }
  })

  oauth.route("GET", "/locations/:locationId", "locations", (req) =>
    guard(req, "locations.readonly", (caller, headers) => {
      const l = locations.find((x) => x.id === req.params.locationId)
      const allowed =
        caller.userType === "Company" ? l !== undefined : caller.locationId === req.params.locationId
      if (!allowed) return forbidden(headers)
      return json(200, locationBody(l!), headers)
    })
  )

  oauth.route("GET", "/companies/:companyId", "companies", (req) =>
    guard(req, "companies.readonly", (caller, headers) => {
      if (caller.userType !== "Company" || caller.companyId !== req.params.companyId) {
        return apiError(403, "The token does not have access to this company.", "Forbidden", headers)
      }
      return json(200, { company: { id: company.id, name: company.name, email: company.email } }, headers)
    })
  )

  oauth.route("GET", "/users/:userId", "users", (req) =>
    guard(req, "users.readonly", (caller, headers) => {
      if (req.params.userId !== user.id || caller.companyId !== company.id) {
        return apiError(404, "User not found", "Not Found", headers)
      }
      return json(200, { id: user.id, name: user.name, email: user.email, companyId: company.id }, headers)
    })
  )

  oauth.route("GET", "/oauth/installedLocations", "installed_locations", (req) =>
    guard(req, "oauth.readonly", (caller, headers) => {
      const companyId = req.query.get("companyId")
      const appId = req.query.get("appId")
      if (!companyId || !appId) {
        return json(
          422,
          { statusCode: 422, message: ["companyId and appId are required"], error: "Unprocessable Entity" },
          headers
        )
      }
      if (caller.userType !== "Company" || caller.companyId !== companyId) {
        return apiError(403, "The token does not have access to this company.", "Forbidden", headers)
      }
      if (appId !== appIdOf(caller.grant.clientId))
        return apiError(400, "Invalid appId", "Bad Request", headers)
      const filter = req.query.get("isInstalled")
      const rows = locations
        .map((l) => ({ _id: l.id, name: l.name, address: l.address ?? "", isInstalled: isInstalled(l.id) }))
        .filter((l) => filter === null || String(l.isInstalled) === filter)
      return json(200, { locations: rows, count: rows.length }, headers)
    })
  )

  oauth.route("POST", "/oauth/locationToken", "location_token", (req) =>
    guard(req, "oauth.write", (caller, headers) => {
      const form = req.form
      if (form === undefined) {
        return apiError(400, "the body must be application/x-www-form-urlencoded", "Bad Request", headers)
      }
      const companyId = form.get("companyId")
      const locationId = form.get("locationId")
      if (!companyId || !locationId) {
        return json(
          422,
          {
            statusCode: 422,
            message: ["companyId and locationId are required"],
            error: "Unprocessable Entity"
          },
          headers
        )
      }
      if (caller.userType !== "Company" || caller.companyId !== companyId) {
        return apiError(401, "This route is not yet supported by the IAM Service", "Unauthorized", headers)
      }
      const location = locations.find((l) => l.id === locationId)
      if (location === undefined || !isInstalled(locationId)) {
        return apiError(400, "Location not found or the app is not installed there", "Bad Request", headers)
      }
      const issued = oauth.registry.issueGrant({
        clientId: caller.grant.clientId,
        accountId: locationId,
        scope: caller.grant.scope,
        data: { userType: "Location", companyId, locationId, agencyGrantId: caller.grant.id },
        refreshToken: false
      })
      return json(
        200,
        {
          access_token: issued.accessToken,
          token_type: "Bearer",
          expires_in: issued.expiresIn,
          scope: caller.grant.scope.join(" "),
          locationId,
          userId: user.id
        },
        { ...headers, "cache-control": "no-store" }
      )
    })
  )

  // ---- the marketplace's own install page (public apps) ----------------------------------------

  const installPage = (redirectUri: string, message?: string) =>
    html(
      message ? 400 : 200,
      sandboxPage(
        "HighLevel sandbox: install app",
        `<h1>Install Latchkey sandbox app</h1>` +
          (message ? `<p id="error">${escapeHtml(message)}</p>` : "") +
          `<form method="post" action="/marketplace/install"><input type="hidden" name="client_id" value="${escapeHtml(clientId)}">` +
          `<input type="hidden" name="redirect_uri" value="${escapeHtml(redirectUri)}"><fieldset><legend>Install into</legend>` +
          accounts
            .map(
              (a, i) =>
                `<label><input type="radio" name="account" value="${escapeHtml(a.id)}"${i === 0 ? " checked" : ""}> ${escapeHtml(a.label)}</label>`
            )
            .join("") +
          `</fieldset><p class="actions"><button type="submit" name="decision" value="install">Install and authorize</button></p></form>`
      )
    )

  oauth.route("GET", "/marketplace/install", "install", (req) => {
    if (req.query.get("client_id") !== clientId) return html(400, '<p id="error">Unknown app.</p>')
    const redirectUri = req.query.get("redirect_uri") ?? redirectUris[0]!
    if (!redirectUris.includes(redirectUri))
      return html(400, '<p id="error">redirect_uri is not registered.</p>')
    return installPage(redirectUri)
  })

  oauth.route("POST", "/marketplace/install", "install", (req) => {
    const form = req.form ?? new URLSearchParams()
    const redirectUri = form.get("redirect_uri") ?? ""
    if (form.get("client_id") !== clientId || !redirectUris.includes(redirectUri)) {
      return html(400, '<p id="error">Unknown app or redirect_uri.</p>')
    }
    const account = accounts.find((a) => a.id === form.get("account"))
    if (account === undefined) return installPage(redirectUri, "Choose where to install.")
    const code = oauth.registry.issueCode({
      clientId,
      redirectUri,
      accountId: account.id,
      scope: appScopes,
      codeChallenge: undefined,
      codeChallengeMethod: undefined,
      data: dataOf(account)
    })
    // No state: HighLevel started this install, not the app.
    const target = new URL(redirectUri)
    target.searchParams.set("code", code)
    return redirect(target.href)
  })

  // ---- webhooks and uninstall --------------------------------------------------------------------

  const accountOfTarget = (target: InstallTarget): HighLevelAccount => {
    const id = "locationId" in target ? target.locationId : target.companyId
    const account = accounts.find((a) => a.id === id)
    if (account === undefined) throw new TypeError(`HighLevel sandbox: no location or company ${id}`)
    return account
  }

  const sendWebhook = (
    url: string,
    type: "INSTALL" | "UNINSTALL",
    target: InstallTarget,
    deliver?: DeliverOptions
  ) => {
    const account = accountOfTarget(target)
    const base: Record<string, unknown> =
      type === "INSTALL"
        ? {
            type,
            appId: appIdOf(clientId),
            versionId: appIdOf(clientId),
            installType: account.userType,
            ...(account.location ? { locationId: account.location.id } : {}),
            companyId: company.id,
            userId: user.id,
            companyName: company.name,
            isWhitelabelCompany: false
          }
        : {
            type,
            appId: appIdOf(clientId),
            ...(account.location ? { locationId: account.location.id } : { companyId: company.id })
          }
    return signer.deliver(url, base, deliver)
  }

  const uninstall = async (
    target: InstallTarget,
    opts: { readonly webhookUrl?: string } & DeliverOptions = {}
  ) => {
    const account = accountOfTarget(target)
    for (const grant of oauth.registry.grants({ clientId })) {
      // An agency uninstall ends the agency's grants (and so the location tokens minted from them);
      // a sub-account's own install ends only with its own uninstall.
      const hit =
        account.userType === "Company"
          ? grant.data.userType === "Company" && grant.data.companyId === company.id
          : grant.data.locationId === account.id && grant.data.agencyGrantId === undefined
      if (hit) oauth.registry.revokeGrant(grant.id)
    }
    if (account.userType === "Company") agencyInstalled = false
    else directInstalls.delete(account.id)
    return opts.webhookUrl === undefined ? undefined : sendWebhook(opts.webhookUrl, "UNINSTALL", target, opts)
  }

  const firstRedirect = redirectUris[0]!
  return {
    url: oauth.url,
    clientId,
    clientSecret,
    redirectUri: firstRedirect,
    providerOptions: {
      clientId,
      clientSecret,
      redirectUri: firstRedirect,
      marketplaceUrl: oauth.url,
      apiUrl: oauth.url
    },
    company,
    locations,
    user,
    webhookKeys: signer.keys,
    oauth,
    calls: oauth.calls,
    countCalls: oauth.countCalls,
    resetCalls: () => oauth.resetCalls(),
    inject: (fault) => oauth.inject(fault),
    clearFaults: () => oauth.clearFaults(),
    setLifetimes: (lifetimes) => {
      const next: { accessTokenSeconds?: number; refreshTokenSeconds?: number | null } = {}
      if (lifetimes.accessTokenSeconds !== undefined) next.accessTokenSeconds = lifetimes.accessTokenSeconds
      if (lifetimes.refreshTokenSeconds !== undefined)
        next.refreshTokenSeconds = lifetimes.refreshTokenSeconds
      oauth.setLifetimes(next)
    },
    setReuseRevokesGrant: (on) => {
      oauth.registry.refreshTokens = { ...oauth.registry.refreshTokens, reuseRevokesGrant: on }
    },
    approve: (authorizeUrl, account) => approvePage(authorizeUrl, { account: account ?? locations[0]!.id }),
    deny: (authorizeUrl) => approvePage(authorizeUrl, { deny: true }),
    install: (target, opts) => {
      const account = target === undefined ? accounts[0]! : accountOfTarget(target)
      const page = new URL("/marketplace/install", oauth.url)
      page.searchParams.set("client_id", clientId)
      page.searchParams.set("redirect_uri", opts?.redirectUri ?? firstRedirect)
      return approvePage(page.href, { account: account.id })
    },
    uninstall,
    sendWebhook,
    isInstalled,
    close: () => oauth.close()
  }
}
