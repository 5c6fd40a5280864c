/**
 * The protocol layer: authorize URL, code exchange, refresh and revocation through openid-client,
 * configured per provider with explicit server metadata (or discovery). A provider with a separate
 * refresh URL gets a second configuration whose token endpoint is that URL.
 *
 * Every call returns either a token response or a `ProtocolFailure`, classified so that the engine
 * can tell a real rejection (`invalid_grant`) from a transient failure (network, 5xx, 429, timeout).
 * Nothing here ever puts a token, code or secret into a message.
 */
import { AsyncLocalStorage } from "node:async_hooks"
import { Data, Effect, Redacted } from "effect"
import * as oidc from "openid-client"
import { defaultFetch } from "./Config.ts"
import * as Dpop from "./internal/dpop.ts"
import * as Transport from "./internal/transport.ts"
import type { Provider } from "./Provider.ts"
import { usesLoopbackOnly } from "./Provider.ts"
import { lifetimeInBounds, type TokenResponse, type TokenSet, unsafeResponse } from "./TokenSet.ts"

export type ProtocolFailureKind =
  | "invalid_grant"
  | "invalid_client"
  | "oauth_error"
  | "rate_limited"
  | "transient"
  | "invalid_response"
  | "unsupported"
  /** The token response is well-formed but unsafe to use (a token that would break an HTTP header). */
  | "unsafe_response"

export interface ProtocolFailureDetails {
  readonly status?: number | undefined
  readonly error?: string | undefined
  readonly description?: string | undefined
  readonly retryAfterMs?: number | undefined
  /** The request may have reached the server (the failure came after sending). */
  readonly maybeProcessed?: boolean | undefined
  /**
   * The server answered, but with tokens unsafe to use: not retried (a refresh would send the same,
   * possibly already rotated, refresh token again).
   */
  readonly unsafe?: boolean | undefined
}

/** Whether the same request can succeed later (an answer flagged `unsafe` never is). */
export const ProtocolFailureRetryable: Readonly<Record<ProtocolFailureKind, boolean>> = {
  invalid_grant: false,
  invalid_client: false,
  oauth_error: false,
  rate_limited: true,
  transient: true,
  invalid_response: true,
  unsupported: false,
  unsafe_response: false
}

/**
 * A token, revocation or metadata request failed, classified (`kind`) from the server's answer — or
 * its absence — by `classify`. A tagged error: yield it in `Effect.gen`, match it with `catchTag`.
 * The engine maps it to its domain's error (`AuthorizationError`, `RefreshError`,
 * `ReauthorizationRequired`).
 */
export class ProtocolFailure extends Data.TaggedError("ProtocolFailure")<{
  readonly kind: ProtocolFailureKind
  readonly message: string
  readonly details: ProtocolFailureDetails
}> {
  constructor(kind: ProtocolFailureKind, message: string, details: ProtocolFailureDetails = {}) {
    super({ kind, message, details })
  }
  /** The same as `kind`, as every Latchkey error has a `reason`. */
  get reason(): ProtocolFailureKind {
    return this.kind
  }
  get isRetryable(): boolean {
    return this.details.unsafe !== true && ProtocolFailureRetryable[this.kind]
  }
  /** @deprecated use `isRetryable`, as on every other Latchkey error. */
  get retryable(): boolean {
    return this.isRetryable
  }
}

export interface ProtocolOptions {
  /** Per-request timeout. */
  readonly timeoutMs: number
  /** The fetch to use (tests and benchmarks may count calls). Default: global fetch. */
  readonly fetch?: typeof fetch | undefined
}

/** Parse `Retry-After` (seconds or HTTP date) into milliseconds. */
export const parseRetryAfter = (value: string | null, now: number): number | undefined => {
  if (value === null || value.trim() === "") return undefined
  const seconds = Number(value)
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000)
  const date = Date.parse(value)
  return Number.isNaN(date) ? undefined : Math.max(0, date - now)
}

const discovered = new WeakMap<Provider, Promise<oidc.ServerMetadata>>()

const serverMetadata = (provider: Provider, fetchImpl: typeof fetch): Promise<oidc.ServerMetadata> => {
  if (provider.endpoints) {
    const e = provider.endpoints
    return Promise.resolve({
      issuer: e.issuer,
      authorization_endpoint: e.authorization,
      token_endpoint: e.token,
      ...(e.revocation ? { revocation_endpoint: e.revocation } : {}),
      ...(e.userinfo ? { userinfo_endpoint: e.userinfo } : {})
    })
  }
  let cached = discovered.get(provider)
  if (cached === undefined) {
    cached = oidc
      .discovery(new URL(provider.discovery!.issuer), provider.clientId, undefined, undefined, {
        execute: usesLoopbackOnly(provider) ? [oidc.allowInsecureRequests] : [],
        [oidc.customFetch]: (url, options) => fetchImpl(url, options as RequestInit)
      })
      .then((config) => ({ ...config.serverMetadata() }))
    cached.catch(() => discovered.delete(provider))
    discovered.set(provider, cached)
  }
  return cached
}

const clientAuth = (provider: Provider): oidc.ClientAuth => {
  const secret = provider.clientSecretValue ? Redacted.value(provider.clientSecretValue) : undefined
  switch (provider.clientAuth) {
    case "none":
      return oidc.None()
    case "client_secret_basic":
      return oidc.ClientSecretBasic(secret)
    case "client_secret_post":
      return oidc.ClientSecretPost(secret)
  }
}

interface Capture {
  response: Response | undefined
  sent: boolean
  /** The server answered HTTP 200 with an `error` field and no `access_token` (GitHub does). */
  errorIn200: boolean
  /** An `expires_in` taken out of the response before openid-client saw it (see `inspectAnswer`). */
  rawExpiresIn?: unknown
  /** The answer was refused by `inspectAnswer` (openid-client wraps what a fetch throws). */
  refused?: ProtocolFailure
}

const newCapture = (): Capture => ({ response: undefined, sent: false, errorIn200: false })

/**
 * The capture of the request being made: a configuration is shared by concurrent requests (see
 * `configure`), so its fetch finds the request's own capture in the async context of the call.
 */
const currentCapture = new AsyncLocalStorage<Capture>()

/**
 * A 200 JSON answer already read and parsed here (by fetch or by the lean transport), as
 * openid-client reads it: what a `Response` offers for reading (status, headers, `json`, `text`,
 * `clone`...) over the text in memory, the parsed object for `json()` (the body is parsed once),
 * without building the stream, body and header objects of a `Response` it never uses.
 * openid-client (oauth4webapi) accepts it as a Response by its `Symbol.toStringTag`, the check it
 * makes for responses from another realm. Its headers are built on first use; `body` and `clone`
 * fall back to a real Response.
 */
class ParsedJsonResponse {
  readonly status: number
  readonly statusText: string
  readonly ok: boolean
  readonly redirected = false
  readonly type = "basic"
  readonly url = ""
  #text: string
  #parsed: unknown
  #pairs: HeadersInit
  #headers: Headers | undefined
  #used = false
  constructor(
    text: string,
    init: { status: number; statusText: string; headers: HeadersInit },
    parsed: unknown
  ) {
    this.status = init.status
    this.statusText = init.statusText
    this.ok = init.status >= 200 && init.status < 300
    this.#text = text
    this.#parsed = parsed
    this.#pairs = init.headers
  }
  get [Symbol.toStringTag]() {
    return "Response"
  }
  get headers(): Headers {
    this.#headers ??= new Headers(this.#pairs)
    return this.#headers
  }
  get bodyUsed(): boolean {
    return this.#used
  }
  get body(): ReadableStream<Uint8Array> | null {
    return this.#used ? null : this.#take(() => this.#real().body)
  }
  #real(): Response {
    return new Response(this.#text, {
      status: this.status,
      statusText: this.statusText,
      headers: this.#pairs
    })
  }
  #take<A>(read: () => A): A {
    if (this.#used) throw new TypeError("Body is unusable: Body has already been read")
    this.#used = true
    return read()
  }
  json(): Promise<any> {
    try {
      return Promise.resolve(this.#take(() => this.#parsed))
    } catch (error) {
      return Promise.reject(error)
    }
  }
  text(): Promise<string> {
    try {
      return Promise.resolve(this.#take(() => this.#text))
    } catch (error) {
      return Promise.reject(error)
    }
  }
  arrayBuffer(): Promise<ArrayBuffer> {
    return this.text().then((text) => new TextEncoder().encode(text).buffer as ArrayBuffer)
  }
  bytes(): Promise<Uint8Array> {
    return this.text().then((text) => new TextEncoder().encode(text))
  }
  clone(): Response {
    if (this.#used) throw new TypeError("Response.clone: Body has already been consumed.")
    return this.#real()
  }
}

/**
 * Look at a 200 JSON answer once, before openid-client parses it (the body is read and parsed
 * once; openid-client gets a response over the same text):
 * - Some providers (GitHub) answer token-endpoint errors with HTTP 200 and an `error` field and no
 *   `access_token`: such an answer is re-exposed as a 400 with the same body, so that it is read as
 *   the RFC 6749 §5.2 error it is (and classified below) rather than as a malformed token response.
 * - A token response with a token that would break an HTTP header is refused (the answer is not
 *   used at all), and an `expires_in` out of bounds (0, negative, not a number, Infinity, beyond ten
 *   years) is taken out and remembered, so that the token set falls back to the provider's default
 *   and keeps the raw value for diagnostics.
 * Other answers pass untouched.
 */
const inspectAnswer = async (
  response: Response,
  capture: Capture,
  endpoint: "token" | "refresh"
): Promise<Response> => {
  if (response.status !== 200 || !(response.headers.get("content-type") ?? "").includes("json")) {
    return response
  }
  const text = await response.text()
  return inspectJson(
    text,
    { status: response.status, statusText: response.statusText, headers: response.headers },
    capture,
    endpoint
  )
}

/** `inspectAnswer` on the text of a 200 JSON answer (read by fetch or by the lean transport). */
const inspectJson = (
  text: string,
  init: { status: number; statusText: string; headers: HeadersInit },
  capture: Capture,
  endpoint: "token" | "refresh"
): Response => {
  const parsedAnswer = (answer: string, parsed: unknown) =>
    new ParsedJsonResponse(answer, init, parsed) as unknown as Response
  let body: unknown
  try {
    body = JSON.parse(text)
  } catch {
    return new Response(text, init)
  }
  if (typeof body !== "object" || body === null || Array.isArray(body)) return new Response(text, init)
  const fields = body as Record<string, unknown>
  if (!("access_token" in fields)) {
    if (typeof fields.error === "string" && fields.error.length > 0) {
      capture.errorIn200 = true
      return new Response(text, { status: 400, headers: init.headers })
    }
    return parsedAnswer(text, fields)
  }
  const problem = unsafeResponse(fields as TokenResponse)
  if (problem !== undefined) {
    capture.refused = new ProtocolFailure(
      endpoint === "refresh" ? "invalid_response" : "unsafe_response",
      `${endpoint === "refresh" ? "refresh" : "code exchange"}: ${problem}`,
      { status: 200, maybeProcessed: true, unsafe: true }
    )
    throw capture.refused
  }
  if (fields.expires_in === undefined || lifetimeInBounds(fields.expires_in)) {
    return parsedAnswer(text, fields)
  }
  capture.rawExpiresIn = fields.expires_in
  delete fields.expires_in
  return parsedAnswer(JSON.stringify(fields), fields)
}

/** Statuses whose response has no body (the Response constructor refuses one). */
const NULL_BODY = new Set([101, 103, 204, 205, 304])

/**
 * The answer of the lean transport as the Response openid-client reads: a 200 JSON answer goes
 * through `inspectJson` (one parse), any other as it came.
 */
const leanAnswer = (answer: Transport.Answer, capture: Capture, endpoint: "token" | "refresh"): Response => {
  const { status, statusText, headers, text } = answer
  if (status < 200 || status > 599) {
    throw new TypeError("fetch failed", { cause: new Error(`the server answered with status ${status}`) })
  }
  if (status === 200) {
    const type = headers.find(([name]) => name.toLowerCase() === "content-type")?.[1] ?? ""
    if (type.includes("json")) {
      const response = inspectJson(text, { status, statusText, headers }, capture, endpoint)
      capture.response = response
      return response
    }
  }
  const response = new Response(NULL_BODY.has(status) ? null : text, { status, statusText, headers })
  capture.response = response
  return response
}

const NOT_CONNECTED = new Set(["ECONNREFUSED", "ENOTFOUND", "EAI_AGAIN", "UND_ERR_CONNECT_TIMEOUT"])

/** A fetch failure that happened before a connection existed, so nothing was sent. */
const neverReached = (error: unknown): boolean => {
  const cause = (error as { cause?: { code?: unknown } } | null)?.cause
  return typeof cause?.code === "string" && NOT_CONNECTED.has(cause.code)
}

/** A configuration shared by the requests of one provider and endpoint with the same options. */
interface Configured {
  readonly fetchImpl: typeof fetch
  readonly timeoutMs: number
  readonly config: Promise<oidc.Configuration>
}

const configured = new WeakMap<Provider, { token?: Configured; refresh?: Configured }>()

/**
 * The openid-client configuration of a provider's token (or refresh) endpoint. Built once per
 * provider, endpoint, fetch and timeout, and shared by every request (openid-client's constructor
 * deep-copies the metadata: it is not per-request work); each request's capture travels in its
 * async context (`currentCapture`).
 */
const configure = (
  provider: Provider,
  options: ProtocolOptions,
  endpoint: "token" | "refresh"
): Promise<oidc.Configuration> => {
  const fetchImpl = options.fetch ?? defaultFetch
  let byEndpoint = configured.get(provider)
  const known = byEndpoint?.[endpoint]
  if (known !== undefined && known.fetchImpl === fetchImpl && known.timeoutMs === options.timeoutMs) {
    return known.config
  }
  const config = build(provider, options, endpoint, fetchImpl)
  if (byEndpoint === undefined) {
    byEndpoint = {}
    configured.set(provider, byEndpoint)
  }
  const entry: Configured = { fetchImpl, timeoutMs: options.timeoutMs, config }
  byEndpoint[endpoint] = entry
  // A failed build (discovery) is not kept.
  config.catch(() => {
    if (byEndpoint[endpoint] === entry) delete byEndpoint[endpoint]
  })
  return config
}

const build = async (
  provider: Provider,
  options: ProtocolOptions,
  endpoint: "token" | "refresh",
  fetchImpl: typeof fetch
): Promise<oidc.Configuration> => {
  const metadata = await serverMetadata(provider, fetchImpl)
  const tokenEndpoint =
    endpoint === "refresh" && provider.endpoints?.refresh
      ? provider.endpoints.refresh
      : metadata.token_endpoint
  const config = new oidc.Configuration(
    { ...metadata, ...(tokenEndpoint ? { token_endpoint: tokenEndpoint } : {}) },
    provider.clientId,
    undefined,
    clientAuth(provider)
  )
  if (usesLoopbackOnly(provider)) oidc.allowInsecureRequests(config)
  config.timeout = Math.max(1, Math.ceil(options.timeoutMs / 1000))
  config[oidc.customFetch] = async (url, init) => {
    // Outside a request's context (never expected): the answer is inspected all the same.
    const capture = currentCapture.getStore() ?? newCapture()
    capture.sent = true
    if (fetchImpl === defaultFetch && Transport.available()) {
      let answer: Transport.Answer
      try {
        answer = await Transport.post(url, init as unknown as Transport.PostInit, options.timeoutMs)
      } catch (error) {
        if (neverReached(error) || Transport.notSent(error)) capture.sent = false
        throw error
      }
      return leanAnswer(answer, capture, endpoint)
    }
    let response: Response
    try {
      response = await fetchImpl(url, {
        ...(init as RequestInit),
        signal: AbortSignal.timeout(options.timeoutMs)
      })
    } catch (error) {
      // Refused or unresolvable: the request never reached the server.
      if (neverReached(error)) capture.sent = false
      throw error
    }
    capture.response = response
    return inspectAnswer(response, capture, endpoint)
  }
  return config
}

/** `now` (the Effect Clock's, read when the failure arrived) dates a `Retry-After` given as an HTTP date. */
const classify = (
  provider: Provider,
  cause: unknown,
  capture: Capture,
  what: string,
  now: number
): ProtocolFailure => {
  const response = capture.response
  const status = response?.status
  const retryAfterMs = response ? parseRetryAfter(response.headers.get("retry-after"), now) : undefined
  const err = cause as {
    code?: string
    error?: string
    error_description?: string
    status?: number
    name?: string
  }
  if (err?.code === "OAUTH_RESPONSE_BODY_ERROR" && typeof err.error === "string") {
    const s = capture.errorIn200 ? 200 : (err.status ?? status)
    // The provider's own code (e.g. GitHub's bad_refresh_token) stands for a standard one.
    const standard =
      provider.classifyTokenError?.({ status: s, error: err.error, description: err.error_description }) ??
      provider.tokenErrorCodes?.[err.error] ??
      err.error
    const detail = {
      status: s,
      error: err.error,
      description: err.error_description,
      retryAfterMs,
      maybeProcessed: true
    }
    const said = `${err.error}${err.error_description ? `: ${err.error_description}` : ""}`
    if (s === 429) return new ProtocolFailure("rate_limited", `${what}: rate limited (${said})`, detail)
    if (s !== undefined && s >= 500) {
      return new ProtocolFailure("transient", `${what}: server error ${s} (${said})`, detail)
    }
    if (standard === "invalid_grant") {
      return new ProtocolFailure("invalid_grant", `${what} rejected: ${said}`, detail)
    }
    if (standard === "invalid_client" || standard === "unauthorized_client" || s === 401) {
      return new ProtocolFailure("invalid_client", `${what} rejected: ${said}`, detail)
    }
    return new ProtocolFailure("oauth_error", `${what} rejected: ${said}`, detail)
  }
  if (err?.code === "OAUTH_WWW_AUTHENTICATE_CHALLENGE") {
    return new ProtocolFailure(
      "invalid_client",
      `${what} rejected: client authentication failed (${status})`,
      {
        status,
        maybeProcessed: true
      }
    )
  }
  if (response !== undefined) {
    if (status === 429) {
      return new ProtocolFailure("rate_limited", `${what}: rate limited (429)`, {
        status,
        retryAfterMs,
        maybeProcessed: false
      })
    }
    if (status !== undefined && status >= 500) {
      return new ProtocolFailure("transient", `${what}: server error ${status}`, {
        status,
        retryAfterMs,
        maybeProcessed: true
      })
    }
    return new ProtocolFailure(
      "invalid_response",
      `${what}: the server answered ${status} with a body that is not a valid token response`,
      { status, maybeProcessed: true }
    )
  }
  const timedOut = err?.name === "TimeoutError" || err?.name === "AbortError" || err?.code === "OAUTH_TIMEOUT"
  return new ProtocolFailure(
    "transient",
    `${what}: ${timedOut ? "timed out" : "network error"} before an answer arrived`,
    { maybeProcessed: capture.sent }
  )
}

const run = <A>(
  provider: Provider,
  options: ProtocolOptions,
  endpoint: "token" | "refresh",
  what: string,
  f: (config: oidc.Configuration) => Promise<A>
): Effect.Effect<A, ProtocolFailure> =>
  Effect.clockWith((clock) =>
    Effect.tryPromise({
      try: () => {
        const capture = newCapture()
        return currentCapture.run(capture, async () => {
          try {
            const result = await f(await configure(provider, options, endpoint))
            if (capture.rawExpiresIn !== undefined && typeof result === "object" && result !== null) {
              // Back to the value as received: the token set replaces it by the default and records it.
              ;(result as Record<string, unknown>).expires_in = capture.rawExpiresIn
            }
            return result
          } catch (cause) {
            if (cause instanceof ProtocolFailure) throw cause
            if (capture.refused !== undefined) throw capture.refused
            throw classify(provider, cause, capture, what, clock.currentTimeMillisUnsafe())
          }
        })
      },
      catch: (e) =>
        e instanceof ProtocolFailure ? e : new ProtocolFailure("transient", `${what}: unexpected failure`, {})
    })
  )

/** The user-info URL: `endpoints.userinfo`, or the discovered `userinfo_endpoint` (undefined when neither). */
export const userinfoEndpoint = (
  provider: Provider,
  options: ProtocolOptions
): Effect.Effect<string | undefined, ProtocolFailure> =>
  run(provider, options, "token", "reading the server metadata", async (config) => {
    const endpoint = config.serverMetadata().userinfo_endpoint
    return typeof endpoint === "string" && endpoint.length > 0 ? endpoint : undefined
  })

export interface AuthorizationUrlInput {
  readonly state: string
  readonly redirectUri: string
  readonly scopes: ReadonlyArray<string>
  readonly codeChallenge: string | undefined
  readonly extraParams?: Readonly<Record<string, string>> | undefined
}

export const authorizationUrl = (
  provider: Provider,
  options: ProtocolOptions,
  input: AuthorizationUrlInput
): Effect.Effect<URL, ProtocolFailure> =>
  run(provider, options, "token", "building the authorization URL", async (config) => {
    // What binds the response to this request comes last, so that no extra parameter replaces it.
    const params: Record<string, string> = {
      ...(input.scopes.length > 0 ? { scope: input.scopes.join(provider.scopeSeparator) } : {}),
      ...provider.authorizationParams,
      ...input.extraParams,
      response_type: "code",
      redirect_uri: input.redirectUri,
      state: input.state,
      ...(input.codeChallenge ? { code_challenge: input.codeChallenge, code_challenge_method: "S256" } : {})
    }
    return oidc.buildAuthorizationUrl(config, params)
  })

/**
 * The issuer a callback's RFC 9207 `iss` must equal, and whether it must be present: when the
 * provider declares `requireIss`, or its server metadata says it sends it
 * (`authorization_response_iss_parameter_supported`).
 */
export const issuerCheck = (
  provider: Provider,
  options: ProtocolOptions
): Effect.Effect<{ readonly issuer: string; readonly required: boolean }, ProtocolFailure> =>
  Effect.tryPromise({
    try: async () => {
      const metadata = await serverMetadata(provider, options.fetch ?? fetch)
      return {
        issuer: provider.endpoints?.issuer ?? metadata.issuer,
        required:
          provider.requireIss === true || metadata.authorization_response_iss_parameter_supported === true
      }
    },
    catch: () => new ProtocolFailure("transient", "reading the provider's metadata failed", {})
  })

export interface ExchangeInput {
  /** The callback URL as received (only its query parameters are used). */
  readonly callbackParams: URLSearchParams
  readonly redirectUri: string
  readonly expectedState: string | undefined
  readonly codeVerifier: string | undefined
  /** The connection's DPoP private key (JWK JSON), for providers with `dpop`. */
  readonly dpopKey?: string | undefined
}

/** openid-client's DPoP option for a key (proofs on token requests, DPoP-Nonce retries included). */
const dpopOption = async (config: oidc.Configuration, key: string | undefined): Promise<oidc.DPoPOptions> =>
  key === undefined ? {} : { DPoP: oidc.getDPoPHandle(config, (await Dpop.keyPair(key)).pair) }

export const exchangeCode = (
  provider: Provider,
  options: ProtocolOptions,
  input: ExchangeInput
): Effect.Effect<TokenResponse, ProtocolFailure> =>
  run(provider, options, "token", "code exchange", async (config) => {
    const current = new URL(input.redirectUri)
    for (const [k, v] of input.callbackParams) current.searchParams.set(k, v)
    const response = await oidc.authorizationCodeGrant(
      config,
      current,
      {
        expectedState: input.expectedState ?? oidc.skipStateCheck,
        ...(input.codeVerifier ? { pkceCodeVerifier: input.codeVerifier } : {})
      },
      { ...provider.tokenParams },
      await dpopOption(config, input.dpopKey)
    )
    return response as unknown as TokenResponse
  })

/**
 * Refresh. For a provider with `dpop`, the proof is made with the connection's key: `dpopKey` when
 * the caller has it, else the key remembered for this refresh token when its connection was opened.
 */
export const refresh = (
  provider: Provider,
  options: ProtocolOptions,
  refreshToken: string,
  dpopKey?: string | undefined
): Effect.Effect<TokenResponse, ProtocolFailure> =>
  run(provider, options, "refresh", "refresh", async (config) => {
    const key = provider.dpop === true ? (dpopKey ?? Dpop.keyOf(refreshToken)) : undefined
    if (provider.dpop === true && key === undefined) {
      throw new ProtocolFailure("unsupported", "refresh: the connection's DPoP key is not loaded", {
        maybeProcessed: false
      })
    }
    const response = (await oidc.refreshTokenGrant(
      config,
      refreshToken,
      { ...provider.tokenParams, ...provider.refreshParams },
      await dpopOption(config, key)
    )) as unknown as TokenResponse
    const problem = unsafeResponse(response)
    if (problem !== undefined) {
      throw new ProtocolFailure("invalid_response", `refresh: ${problem}`, {
        maybeProcessed: true,
        unsafe: true
      })
    }
    return response
  })

/**
 * The client-credentials grant (RFC 6749 §4.4): a token for the client itself. Nothing is spent by
 * it (no refresh token), so a lost answer is simply asked again.
 */
export const clientCredentials = (
  provider: Provider,
  options: ProtocolOptions
): Effect.Effect<TokenResponse, ProtocolFailure> =>
  run(provider, options, "token", "client credentials", async (config) => {
    const source = provider.clientCredentials ?? {}
    const scopes = source.scopes ?? provider.scopes
    const response = (await oidc.clientCredentialsGrant(config, {
      ...provider.tokenParams,
      ...(scopes.length > 0 ? { scope: scopes.join(provider.scopeSeparator) } : {}),
      ...source.params
    })) as unknown as TokenResponse
    const problem = unsafeResponse(response)
    if (problem !== undefined) {
      throw new ProtocolFailure("invalid_response", `client credentials: ${problem}`, {
        maybeProcessed: true
      })
    }
    return response
  })

export const revoke = (
  provider: Provider,
  options: ProtocolOptions,
  token: string,
  hint: "access_token" | "refresh_token"
): Effect.Effect<boolean, ProtocolFailure> =>
  run(provider, options, "token", "revocation", async (config) => {
    if (!config.serverMetadata().revocation_endpoint) return false
    await oidc.tokenRevocation(config, token, { token_type_hint: hint })
    return true
  })

/**
 * Revoke a connection's grant at the provider: the provider's own `revoke` when it has one, else RFC
 * 7009 with the refresh token (which revokes the grant) or, without one, the access token. Succeeds
 * with false when the provider offers no revocation.
 */
export const revokeTokens = (
  provider: Provider,
  options: ProtocolOptions,
  tokens: TokenSet
): Effect.Effect<boolean, ProtocolFailure> => {
  const custom = provider.revoke
  if (custom === undefined) {
    const token = tokens.refreshToken ?? tokens.accessToken
    return revoke(
      provider,
      options,
      Redacted.value(token),
      tokens.refreshToken ? "refresh_token" : "access_token"
    )
  }
  const fetchImpl = options.fetch ?? fetch
  return Effect.tryPromise({
    try: () =>
      custom({
        tokens,
        clientId: provider.clientId,
        clientSecret: provider.clientSecretValue,
        fetch: (input, init) =>
          fetchImpl(input, { ...init, signal: init?.signal ?? AbortSignal.timeout(options.timeoutMs) })
      }),
    catch: () =>
      new ProtocolFailure("transient", "revocation: the provider's revoke failed", { maybeProcessed: true })
  })
}
