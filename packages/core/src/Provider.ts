/**
 * The provider plugin contract. A provider is a declarative description of an OAuth 2.0 server and the
 * API behind it; `Provider.make` validates it with zod and fails at construction with a message that
 * names the provider and the field. The built-in providers are written with exactly this function.
 */
import { Redacted } from "effect"
import { z } from "zod"
import { ProviderDefinitionError } from "./Errors.ts"
import type { TokenSet } from "./TokenSet.ts"

/** How the client authenticates at the token endpoint. */
export type ClientAuth = "none" | "client_secret_basic" | "client_secret_post"

/** Whether the provider hands out a new refresh token on each refresh (single use) or keeps the old one. */
export type RefreshTokenPolicy = "rotating" | "reusable"

/** What a provider does when a rotated refresh token comes back (see `ProviderDefinition.refreshTokenReuse`). */
export interface RefreshTokenReuse {
  /**
   * Seconds after its first use during which the provider still accepts a rotated refresh token
   * (Amazon Cognito `RetryGracePeriodSeconds` 0-60, Connect2id 5 by default). Default 0.
   */
  readonly graceSeconds?: number | undefined
  /** Whether presenting a used refresh token revokes the whole grant (oidc-provider does). Default true. */
  readonly revokesGrant?: boolean | undefined
}

export interface AccountIdentity {
  /** Stable id of the account at the provider: the same account linked twice gets the same id. */
  readonly accountId: string
  /** Human-readable label (e-mail, username, location name). */
  readonly label: string
  /** JSON-safe profile data to keep with the connection (shown by apps; never secrets). */
  readonly profile?: Record<string, unknown> | undefined
}

/** What `identify` gets: the fresh tokens and a fetch that already carries the provider's auth headers. */
export interface IdentifyContext {
  readonly tokens: TokenSet
  readonly fetch: (input: string | URL, init?: RequestInit) => Promise<Response>
  /** The user-info URL: `endpoints.userinfo`, or the `userinfo_endpoint` the discovery document publishes. */
  readonly userinfoEndpoint?: string | undefined
}

/** The credential an API request is authorized with. */
export type Credential =
  | { readonly kind: "oauth"; readonly accessToken: string; readonly tokenType: string }
  | { readonly kind: "api_key"; readonly apiKey: string }

/** How an API response should be treated by the ApiClient. */
export type ApiResponseClass = "ok" | "token_invalid" | "rate_limited"

export interface ApiResponseInfo {
  readonly status: number
  readonly headers: Headers
  /** The parsed JSON body when the response was JSON, else undefined. Read lazily and only on errors. */
  readonly body: unknown
}

/** The error codes of RFC 6749 §5.2 that the engine acts on. */
export type TokenErrorCode = z.infer<typeof TokenErrorCodeSchema>

/** What a custom `revoke` gets: the connection's tokens, the client credentials and a fetch. */
export interface RevokeContext {
  readonly tokens: TokenSet
  readonly clientId: string
  readonly clientSecret: Redacted.Redacted<string> | undefined
  /** The fetch Latchkey is configured with, bounded by its request timeout. */
  readonly fetch: (input: string | URL, init?: RequestInit) => Promise<Response>
}

/**
 * Where a connection's credential comes from; the engine renews each kind under the same single
 * flight, lease, Refresher and events (see `Connection.ConnectionKind`):
 * - `refresh_token`: a user's authorization, renewed with its refresh token (every OAuth provider);
 * - `client_credentials`: the client's own token, renewed by the client-credentials grant
 *   (`ProviderDefinition.clientCredentials`);
 * - `minted`: minted from a parent connection's access token (`ProviderDefinition.mint`);
 * - `api_key`: a key the app was given, never renewed (`ProviderDefinition.apiKeys`).
 */
export type CredentialSource = "refresh_token" | "client_credentials" | "minted" | "api_key"

/** The client-credentials grant (RFC 6749 §4.4): connections of the client itself, with no user. */
export interface ClientCredentialsSource {
  /** Scopes to ask for (default: the provider's `scopes`). */
  readonly scopes?: ReadonlyArray<string> | undefined
  /** Extra token-request parameters, e.g. `{ resource: "https://api.example.com" }` (RFC 8707). */
  readonly params?: Readonly<Record<string, string>> | undefined
}

/** Who mints, and for which account: what `MintSource` functions get. */
export interface MintContext {
  /** The parent connection: its account and the extras of its current tokens. */
  readonly parent: {
    readonly accountId: string
    readonly extras: Readonly<Record<string, unknown>>
    readonly profile: Readonly<Record<string, unknown>> | undefined
  }
  /** The account the minted token is for (the minted connection's `accountId`). */
  readonly accountId: string
}

/**
 * Tokens minted from a parent connection's access token (HighLevel's location tokens, minted from the
 * agency token with `POST /oauth/locationToken`). The engine renews the parent first when needed,
 * sends `request` with the parent's API headers through the provider's `apiFetch`, reads the answer
 * as a token response (RFC 6749 §5.1; a refresh token in it is ignored) and keeps `extras` beside the
 * answer's extras. A 401 the provider classifies as `token_invalid` refreshes the parent once; a 429
 * or 5xx is retried like a refresh; any other refusal means the parent can no longer mint for the
 * account (the connection needs linking again).
 */
export interface MintSource {
  /** The minting request: a URL (relative URLs resolve against `apiBaseUrl`) and its init. */
  readonly request: (context: MintContext) => {
    readonly url: string
    readonly init?: RequestInit | undefined
  }
  /** Token extras to keep beside the answer's (e.g. `{ userType: "Location", locationId }`). */
  readonly extras?: ((context: MintContext) => Record<string, unknown>) | undefined
  /** Which parents may mint (default: any connection of this provider); others are refused at link time. */
  readonly canMint?: ((parent: MintContext["parent"]) => boolean) | undefined
}

export interface Endpoints {
  /** Issuer identifier, compared with the RFC 9207 `iss` callback parameter when the server sends it. */
  readonly issuer: string
  readonly authorization: string
  readonly token: string
  /** A separate refresh URL (HeyGen). Defaults to the token endpoint. */
  readonly refresh?: string | undefined
  readonly revocation?: string | undefined
  readonly userinfo?: string | undefined
}

export interface ProviderDefinition {
  /** Unique id within one Latchkey instance, e.g. `"heygen"`. Lowercase letters, digits, `-` and `_`. */
  readonly id: string
  /** Display name, e.g. `"HeyGen"`. */
  readonly name: string
  readonly clientId: string
  readonly clientSecret?: string | Redacted.Redacted<string> | undefined
  readonly clientAuth: ClientAuth
  /** PKCE method. `S256` whenever the provider supports it; `none` only for servers that reject it. */
  readonly pkce?: "S256" | "none" | undefined
  /** Explicit endpoints; or `discovery` for servers that publish RFC 8414 / OIDC metadata. */
  readonly endpoints?: Endpoints | undefined
  readonly discovery?: { readonly issuer: string } | undefined
  /** The redirect URI registered at the provider. Sent exactly as given. */
  readonly redirectUri: string
  /**
   * The server always sends RFC 9207 `iss` in its authorization responses: a callback without it is
   * refused. Required of every provider that shares its redirect URI with another (mix-up defence,
   * RFC 9700 §4.4); implied when the server's metadata says `authorization_response_iss_parameter_supported`.
   */
  readonly requireIss?: boolean | undefined
  /**
   * Sender-constrained tokens (DPoP, RFC 9449): every token request and API request carries a proof
   * made with the connection's own key pair, which is sealed with the connection.
   */
  readonly dpop?: boolean | undefined
  readonly scopes?: ReadonlyArray<string> | undefined
  readonly scopeSeparator?: string | undefined
  readonly authorizationParams?: Readonly<Record<string, string>> | undefined
  readonly tokenParams?: Readonly<Record<string, string>> | undefined
  readonly refreshParams?: Readonly<Record<string, string>> | undefined
  /** Lifetimes assumed when the token response does not say (`expires_in` missing). */
  readonly lifetimes?:
    | {
        readonly accessTokenSeconds?: number | null | undefined
        readonly refreshTokenSeconds?: number | null | undefined
      }
    | undefined
  readonly refreshTokenPolicy?: RefreshTokenPolicy | undefined
  /**
   * What the provider does when a rotated refresh token is presented again. The engine reads these
   * facts only when a refresh is in doubt (its answer was lost, or its process died after sending):
   * a resend is safe with reusable tokens or inside the grace period; otherwise it is made once, as
   * the only remaining chance, after the holder has been silent for `inDoubtAfterMs`.
   * Default: no grace period, and reuse revokes the grant (the worst case: oidc-provider's).
   */
  readonly refreshTokenReuse?: RefreshTokenReuse | undefined
  /**
   * The provider's own token-endpoint error codes and the RFC 6749 §5.2 code each one stands for, e.g.
   * GitHub's `{ bad_refresh_token: "invalid_grant", incorrect_client_credentials: "invalid_client" }`.
   * Errors keep the provider's code; the engine acts on the standard one.
   */
  readonly tokenErrorCodes?: Readonly<Record<string, TokenErrorCode>> | undefined
  /**
   * For providers whose error code alone is ambiguous (HighLevel answers 401 `UnAuthorized!` both for
   * bad client credentials and for a refresh token it no longer accepts): read the whole error and
   * say which RFC 6749 code it stands for, or undefined to fall back to `tokenErrorCodes`.
   */
  readonly classifyTokenError?:
    | ((error: {
        readonly status: number | undefined
        readonly error: string
        readonly description: string | undefined
      }) => TokenErrorCode | undefined)
    | undefined
  /**
   * Revoke a connection at the provider when its revocation is not RFC 7009 (GitHub deletes the app
   * authorization with `DELETE /applications/{client_id}/grant`). Resolves true when the provider
   * confirmed it. Default: RFC 7009 at `endpoints.revocation` (or the discovered one), if any.
   */
  readonly revoke?: ((context: RevokeContext) => Promise<boolean>) | undefined
  /** Extra token-response fields to keep (validated); e.g. HighLevel's `locationId`. */
  readonly tokenExtras?: z.ZodType<Record<string, unknown>> | undefined
  /** Identify the linked account from fresh tokens. */
  readonly identify: (context: IdentifyContext) => Promise<AccountIdentity>
  /**
   * `identify` reads the user-info endpoint: `start` then refuses to send a user away when neither
   * `endpoints.userinfo` nor the discovered metadata has one (instead of failing after consent).
   */
  readonly requiresUserinfo?: boolean | undefined
  /** Base URL for relative ApiClient requests. Its origin receives the connection's credentials. */
  readonly apiBaseUrl?: string | undefined
  /**
   * Further origins (https; plain http only for loopback hosts) that may receive the connection's
   * credentials, besides those of `apiBaseUrl` and `endpoints.userinfo`. A request through the
   * ApiClient to any other origin is refused with `ApiError("forbidden_origin")`, and a redirect to
   * one is followed without the credentials (RFC 9700 §4.9: tokens go only to their resource servers).
   */
  readonly apiOrigins?: ReadonlyArray<string> | undefined
  /** Headers that authorize an API request. Default: `Authorization: <type> <token>`. */
  readonly authorizeRequest?: ((credential: Credential) => Record<string, string>) | undefined
  /** Classify API responses. Default: 401 → token_invalid, 429 → rate_limited. */
  readonly classifyResponse?: ((response: ApiResponseInfo) => ApiResponseClass) | undefined
  /** Whether API-key connections are supported (the key is then used instead of OAuth tokens). */
  readonly apiKeys?: boolean | undefined
  /**
   * Client-credentials connections (machine to machine, no user): `true`, or the scopes and
   * parameters to ask with. Linked with `AuthorizationFlow.linkClientCredentials`; renewed by the
   * engine with the same grant when the token nears expiry.
   */
  readonly clientCredentials?: boolean | ClientCredentialsSource | undefined
  /** Connections minted from a parent connection's token; linked with `AuthorizationFlow.linkMinted`. */
  readonly mint?: MintSource | undefined
  /**
   * Whether the provider itself may start an install and send a code with no state of ours (HighLevel
   * public marketplace apps). Such callbacks are accepted only by the separately named
   * `AuthorizationFlow.completeProviderInitiated`, never by `complete`.
   */
  readonly providerInitiated?: boolean | undefined
  /**
   * Wraps the fetch used for this provider's API requests (the ApiClient and `identify`), e.g. to
   * keep within the provider's rate limits. Called once per Latchkey instance with its base fetch.
   */
  readonly apiFetch?: ((fetch: typeof globalThis.fetch) => typeof globalThis.fetch) | undefined
}

/** A validated provider, ready to register with Latchkey. */
export interface Provider extends ProviderDefinition {
  readonly pkce: "S256" | "none"
  readonly scopes: ReadonlyArray<string>
  readonly scopeSeparator: string
  readonly refreshTokenPolicy: RefreshTokenPolicy
  readonly refreshTokenReuse: { readonly graceSeconds: number; readonly revokesGrant: boolean }
  readonly clientSecretValue: Redacted.Redacted<string> | undefined
  readonly authorizeRequest: (credential: Credential) => Record<string, string>
  readonly classifyResponse: (response: ApiResponseInfo) => ApiResponseClass
  readonly defaultAccessTokenSeconds: number | undefined
  readonly defaultRefreshTokenSeconds: number | undefined
  /** The origins that may receive this provider's credentials (see `apiOrigins`). */
  readonly credentialOrigins: ReadonlyArray<string>
  /** The client-credentials grant's settings, when the provider offers it. */
  readonly clientCredentials: ClientCredentialsSource | undefined
}

/** The RFC 6749 §5.2 token-endpoint error codes a provider's own codes can be mapped to. */
export const TokenErrorCodeSchema = z.enum([
  "invalid_request",
  "invalid_client",
  "invalid_grant",
  "unauthorized_client",
  "unsupported_grant_type",
  "invalid_scope"
])

const LOOPBACK = /^(localhost|127(?:\.\d{1,3}){3}|\[::1\])$/i

/** True for hosts on this machine (127.0.0.0/8, localhost, [::1]): the only hosts plain http is allowed for. */
export const isLoopbackHost = (hostname: string): boolean => LOOPBACK.test(hostname)

// Messages name no field: `make` prefixes every message with the field's path, once.
const url = () =>
  z.string().superRefine((value, ctx) => {
    let parsed: URL
    try {
      parsed = new URL(value)
    } catch {
      ctx.addIssue({ code: "custom", message: "must be an absolute URL" })
      return
    }
    if (parsed.protocol === "https:") return
    if (parsed.protocol === "http:" && isLoopbackHost(parsed.hostname)) return
    ctx.addIssue({
      code: "custom",
      message: "must use https (plain http is allowed only for loopback hosts)"
    })
  })

/** Authorize parameters that bind the response to its request: never set by a definition. */
const AUTHORIZE_RESERVED = new Set([
  "state",
  "response_type",
  "redirect_uri",
  "client_id",
  "code_challenge",
  "code_challenge_method"
])

const fn = () =>
  z.custom<(...args: Array<any>) => any>((value) => typeof value === "function", {
    message: "must be a function"
  })

const lifetime = z.number().int().positive().nullable().optional()
/** Scope names: no empty one, no whitespace inside (they are joined with the separator). */
const scopeList = z.array(
  z
    .string()
    .min(1)
    .regex(/^[^\s]+$/, "a scope has no whitespace")
)

const DefinitionSchema = z
  .object({
    id: z.string().regex(/^[a-z0-9][a-z0-9_-]*$/, "must be lowercase letters, digits, '-' or '_'"),
    name: z.string().min(1),
    clientId: z.string().min(1),
    clientSecret: z
      .union([z.string().min(1), z.custom<Redacted.Redacted<string>>((v) => Redacted.isRedacted(v))])
      .optional(),
    clientAuth: z.enum(["none", "client_secret_basic", "client_secret_post"]),
    pkce: z.enum(["S256", "none"]).optional(),
    endpoints: z
      .object({
        issuer: z.string().min(1),
        authorization: url(),
        token: url(),
        refresh: url().optional(),
        revocation: url().optional(),
        userinfo: url().optional()
      })
      .optional(),
    discovery: z.object({ issuer: url() }).optional(),
    redirectUri: z.string().superRefine((value, ctx) => {
      try {
        const u = new URL(value)
        if (u.hash) ctx.addIssue({ code: "custom", message: "must not have a fragment" })
      } catch {
        ctx.addIssue({ code: "custom", message: "must be an absolute URL" })
      }
    }),
    requireIss: z.boolean().optional(),
    dpop: z.boolean().optional(),
    scopes: scopeList.optional(),
    scopeSeparator: z.string().min(1).optional(),
    authorizationParams: z
      .record(z.string(), z.string())
      .refine((params) => !Object.keys(params).some((k) => AUTHORIZE_RESERVED.has(k.toLowerCase())), {
        message: "may not set state, response_type, redirect_uri, client_id or code_challenge(_method)"
      })
      .optional(),
    tokenParams: z.record(z.string(), z.string()).optional(),
    refreshParams: z.record(z.string(), z.string()).optional(),
    lifetimes: z.object({ accessTokenSeconds: lifetime, refreshTokenSeconds: lifetime }).optional(),
    refreshTokenPolicy: z.enum(["rotating", "reusable"]).optional(),
    refreshTokenReuse: z
      .object({
        graceSeconds: z.number().int().min(0).max(86_400).optional(),
        revokesGrant: z.boolean().optional()
      })
      .strict()
      .optional(),
    tokenErrorCodes: z.record(z.string().min(1), TokenErrorCodeSchema).optional(),
    classifyTokenError: fn().optional(),
    revoke: fn().optional(),
    tokenExtras: z.custom<z.ZodType>((v) => v instanceof z.ZodType, "must be a zod schema").optional(),
    identify: fn(),
    apiBaseUrl: url().optional(),
    authorizeRequest: fn().optional(),
    classifyResponse: fn().optional(),
    apiOrigins: z.array(url()).optional(),
    apiKeys: z.boolean().optional(),
    clientCredentials: z
      .union([
        z.boolean(),
        z
          .object({
            scopes: scopeList.optional(),
            params: z.record(z.string(), z.string()).optional()
          })
          .strict()
      ])
      .optional(),
    mint: z.object({ request: fn(), extras: fn().optional(), canMint: fn().optional() }).strict().optional(),
    providerInitiated: z.boolean().optional(),
    requiresUserinfo: z.boolean().optional(),
    apiFetch: fn().optional()
  })
  .superRefine((def, ctx) => {
    if (!def.endpoints === !def.discovery) {
      ctx.addIssue({
        code: "custom",
        path: ["endpoints"],
        message: "or discovery: give exactly one of the two"
      })
    }
    if (def.clientAuth !== "none" && def.clientSecret === undefined) {
      ctx.addIssue({
        code: "custom",
        path: ["clientSecret"],
        message: `is required with clientAuth ${def.clientAuth}`
      })
    }
    if (def.clientCredentials !== undefined && def.clientCredentials !== false && def.clientAuth === "none") {
      ctx.addIssue({
        code: "custom",
        path: ["clientCredentials"],
        message: "needs a confidential client (clientAuth client_secret_basic or client_secret_post)"
      })
    }
    if (def.clientAuth === "none" && def.pkce === "none") {
      ctx.addIssue({
        code: "custom",
        path: ["pkce"],
        message: "must be S256 for a public client (clientAuth none)"
      })
    }
  })

const defaultAuthorize = (credential: Credential): Record<string, string> =>
  credential.kind === "api_key"
    ? { "x-api-key": credential.apiKey }
    : {
        authorization: `${/^bearer$/i.test(credential.tokenType) ? "Bearer" : /^dpop$/i.test(credential.tokenType) ? "DPoP" : credential.tokenType} ${credential.accessToken}`
      }

const defaultClassify = (response: ApiResponseInfo): ApiResponseClass =>
  response.status === 401 ? "token_invalid" : response.status === 429 ? "rate_limited" : "ok"

/**
 * Validate a provider definition. Throws `ProviderDefinitionError` naming the provider and the field.
 */
export const make = (definition: ProviderDefinition): Provider => {
  const parsed = DefinitionSchema.safeParse(definition)
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!
    const field = issue.path.join(".") || "(definition)"
    const providerId =
      typeof (definition as { id?: unknown } | undefined)?.id === "string"
        ? (definition as { id: string }).id
        : "(unnamed)"
    throw new ProviderDefinitionError({
      providerId,
      field,
      message: `Invalid provider "${providerId}": ${field} ${issue.message}`
    })
  }
  const secret = definition.clientSecret
  return {
    ...definition,
    pkce: definition.pkce ?? "S256",
    scopes: definition.scopes ?? [],
    scopeSeparator: definition.scopeSeparator ?? " ",
    refreshTokenPolicy: definition.refreshTokenPolicy ?? "rotating",
    refreshTokenReuse: {
      graceSeconds: definition.refreshTokenReuse?.graceSeconds ?? 0,
      revokesGrant: definition.refreshTokenReuse?.revokesGrant ?? true
    },
    clientSecretValue:
      secret === undefined ? undefined : Redacted.isRedacted(secret) ? secret : Redacted.make(secret),
    clientSecret: undefined,
    authorizeRequest: definition.authorizeRequest ?? defaultAuthorize,
    classifyResponse: definition.classifyResponse ?? defaultClassify,
    defaultAccessTokenSeconds: definition.lifetimes?.accessTokenSeconds ?? undefined,
    defaultRefreshTokenSeconds: definition.lifetimes?.refreshTokenSeconds ?? undefined,
    clientCredentials:
      definition.clientCredentials === true
        ? {}
        : definition.clientCredentials === false
          ? undefined
          : definition.clientCredentials,
    credentialOrigins: [
      ...new Set(
        [definition.apiBaseUrl, definition.endpoints?.userinfo, ...(definition.apiOrigins ?? [])]
          .filter((u): u is string => u !== undefined)
          .map((u) => new URL(u).origin)
      )
    ]
  }
}

/** All endpoint hosts of a provider are loopback hosts (plain http allowed). */
export const usesLoopbackOnly = (provider: Provider): boolean => {
  const urls = provider.endpoints
    ? [provider.endpoints.authorization, provider.endpoints.token, provider.endpoints.refresh]
    : [provider.discovery!.issuer]
  return urls.every((u) => u === undefined || isLoopbackHost(new URL(u).hostname))
}
