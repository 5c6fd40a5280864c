/**
 * Route handlers over the Web platform's `Request` and `Response`: start linking, the callback,
 * provider-initiated installs, webhooks and unlink. They fit any framework that speaks `Request`
 * (Hono, Next.js route handlers, Bun, Deno, workers) directly, and Node's http, Express and Fastify
 * through the adapters in `@latchkey/http/node` and `@latchkey/http/fastify`.
 *
 * The app says who is signed in (`owner`), so the handlers fit any session system. Failures become
 * responses: a small page (or JSON, or a redirect to the app's own error page) with a machine-readable
 * code; never a stack, a token, or text the provider sent.
 */
import type { LatchkeyClient } from "@latchkey/core"
import { safeReturnPath, withQuery } from "./returnPath.ts"

/** A Web-standard request handler. */
export type Handler = (request: Request) => Promise<Response>

export interface HandlersOptions {
  readonly latchkey: LatchkeyClient
  /** The signed-in user of a request (from your session), or undefined when nobody is signed in. */
  readonly owner: (request: Request) => Promise<string | undefined> | string | undefined
  /** Where the routes live (default `"/oauth"`): `<basePath>/start/<providerId>`, `<basePath>/callback`, … */
  readonly basePath?: string | undefined
  /** Where users land after linking or unlinking when the request named no safe return path. Default `"/"`. */
  readonly defaultReturnTo?: string | undefined
  /**
   * Send failures to this same-origin path of yours, with `?latchkey_error=<code>` (and
   * `&provider=<id>` when known), instead of the built-in page.
   */
  readonly errorPath?: string | undefined
  /**
   * Who owns a provider-initiated install (a code with no state, e.g. a HighLevel marketplace install).
   * Default: `owner` — the user signed in to your app when the provider sends them back.
   */
  readonly installOwner?:
    | ((request: Request, providerId: string) => Promise<string | undefined> | string | undefined)
    | undefined
  /** Webhook receivers, served at `POST <basePath>/webhooks/<name>` (e.g. `highlevelWebhook(...)`). */
  readonly webhooks?: Readonly<Record<string, Handler>> | undefined
  /**
   * The app's public origin (`https://app.example.com`) when it runs behind a proxy that changes the
   * host or scheme; unlink's cross-site check compares the `Origin` header with it. Default: the
   * request URL's origin.
   */
  readonly origin?: string | undefined
  /** Told about every failure (to log it); the response never carries it. */
  readonly onError?: ((error: unknown, request: Request) => void) | undefined
}

export interface Handlers {
  /** `GET|POST <basePath>/start/<providerId>?returnTo=/path`: redirects to the provider. */
  readonly start: Handler
  /**
   * The redirect URI: completes the link and redirects to the return path with
   * `?latchkey=linked&connection=<id>`. A code without state on the redirect URI of a provider that
   * starts installs itself (HighLevel) is handled as an install.
   */
  readonly callback: Handler
  /** `GET <basePath>/install/<providerId>?code=…`: a provider-initiated install. */
  readonly install: Handler
  /** `POST <basePath>/unlink/<connectionId>` (or a `connectionId` form field): revoke and remove. */
  readonly unlink: Handler
  /** Every route above, and the webhooks, dispatched by path; 404 for anything else. */
  readonly fetch: Handler
  /** The paths served, for links in your pages. */
  readonly paths: {
    readonly start: (providerId: string, returnTo?: string) => string
    readonly callback: string
    readonly install: (providerId: string) => string
    readonly unlink: (connectionId: string) => string
    readonly webhook: (name: string) => string
  }
}

/** The codes a failed request reports (`latchkey_error`). */
export type FailureCode =
  | "missing_state"
  | "unknown_state"
  | "expired_state"
  | "reused_state"
  | "foreign_state"
  | "missing_code"
  | "iss_mismatch"
  | "access_denied"
  | "provider_error"
  | "invalid_grant"
  | "invalid_client"
  | "exchange_failed"
  | "identity_failed"
  | "transient"
  | "unknown_provider"
  | "sign_in_required"
  | "not_found"
  | "cross_site"
  | "method_not_allowed"
  | "unavailable"
  | "internal"

interface Failure {
  readonly status: number
  readonly title: string
  readonly detail: string
  /** Whether starting the link again is the way out. */
  readonly retry: boolean
}

const FAILURES: Record<FailureCode, Failure> = {
  missing_state: {
    status: 400,
    title: "This link is not valid",
    detail: "The address you arrived at was not started from this app.",
    retry: true
  },
  unknown_state: {
    status: 400,
    title: "This link is not valid any more",
    detail: "It may be old, or it was opened in another browser. Start again to connect your account.",
    retry: true
  },
  expired_state: {
    status: 400,
    title: "This link has expired",
    detail: "Connecting took too long. Start again to connect your account.",
    retry: true
  },
  reused_state: {
    status: 400,
    title: "This link was already used",
    detail: "Each link works once (a reload or the back button opens it again). Start again if needed.",
    retry: true
  },
  foreign_state: {
    status: 403,
    title: "This link belongs to someone else",
    detail: "It was started by another signed-in user. Start again from your own account.",
    retry: true
  },
  missing_code: {
    status: 400,
    title: "The provider sent no authorization",
    detail: "Start again to connect your account.",
    retry: true
  },
  iss_mismatch: {
    status: 400,
    title: "The answer came from the wrong server",
    detail: "For your safety nothing was connected. Start again.",
    retry: true
  },
  access_denied: {
    status: 400,
    title: "Access was not granted",
    detail: "The account was not connected because access was declined.",
    retry: true
  },
  provider_error: {
    status: 502,
    title: "The provider reported an error",
    detail: "Nothing was connected. Try again in a moment.",
    retry: true
  },
  invalid_grant: {
    status: 502,
    title: "The provider refused the authorization",
    detail: "Nothing was connected. Start again.",
    retry: true
  },
  invalid_client: {
    status: 502,
    title: "This app's connection to the provider is misconfigured",
    detail: "Nothing was connected. The app's operators have to fix its credentials.",
    retry: false
  },
  exchange_failed: {
    status: 502,
    title: "The provider's answer could not be used",
    detail: "Nothing was connected. Try again in a moment.",
    retry: true
  },
  identity_failed: {
    status: 502,
    title: "The account could not be identified",
    detail: "Nothing was connected. Try again in a moment.",
    retry: true
  },
  transient: {
    status: 503,
    title: "The provider did not answer in time",
    detail: "Nothing was connected. Try again in a moment.",
    retry: true
  },
  unknown_provider: {
    status: 404,
    title: "Unknown provider",
    detail: "This app does not connect to that provider.",
    retry: false
  },
  sign_in_required: {
    status: 401,
    title: "Please sign in",
    detail: "Sign in to this app first, then connect your account.",
    retry: false
  },
  not_found: {
    status: 404,
    title: "Not found",
    detail: "There is no such connection in your account.",
    retry: false
  },
  cross_site: {
    status: 403,
    title: "Refused",
    detail: "This request came from another site.",
    retry: false
  },
  method_not_allowed: {
    status: 405,
    title: "Method not allowed",
    detail: "This address does not accept that kind of request.",
    retry: false
  },
  unavailable: {
    status: 503,
    title: "Temporarily unavailable",
    detail: "Try again in a moment.",
    retry: false
  },
  internal: {
    status: 500,
    title: "Something went wrong",
    detail: "Nothing was changed. Try again in a moment.",
    retry: false
  }
}

const isFailureCode = (code: unknown): code is FailureCode => typeof code === "string" && code in FAILURES

/** The failure code and provider of a thrown error; unknown errors are `internal`. */
export const classify = (error: unknown): { code: FailureCode; providerId: string | undefined } => {
  const e = error as { _tag?: unknown; reason?: unknown; providerId?: unknown; isRetryable?: unknown } | null
  const providerId =
    typeof e?.providerId === "string" && /^[a-z0-9][a-z0-9_-]*$/.test(e.providerId) ? e.providerId : undefined
  switch (e?._tag) {
    case "AuthorizationError":
      return { code: isFailureCode(e.reason) ? e.reason : "internal", providerId }
    case "ConnectionNotFound":
      return { code: "not_found", providerId }
    case "InstanceClosed":
      // The instance is shutting down (a restart): another one, or this server once restarted, answers.
      return { code: "unavailable", providerId }
    case "StoreError":
      // Try again later only when it can help (not for corrupt data or invalid store options).
      return { code: e.isRetryable === true ? "unavailable" : "internal", providerId }
    default:
      return { code: "internal", providerId }
  }
}

const escapeHtml = (s: string) =>
  s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]!)

const NO_STORE = { "cache-control": "no-store" }

const redirect = (location: string, status = 303) =>
  new Response(null, { status, headers: { location, ...NO_STORE } })

const json = (status: number, body: unknown) =>
  new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json; charset=utf-8", ...NO_STORE }
  })

const wantsJson = (request: Request) => {
  const accept = request.headers.get("accept") ?? ""
  return accept.includes("application/json") && !accept.includes("text/html")
}

const trimSlash = (p: string) => (p.length > 1 && p.endsWith("/") ? p.slice(0, -1) : p)

/** The path segment after `marker` (e.g. the provider id after `start`). */
const segmentAfter = (pathname: string, marker: string): string | undefined => {
  const parts = pathname.split("/").filter((p) => p.length > 0)
  const i = parts.lastIndexOf(marker)
  const value = i >= 0 ? parts[i + 1] : undefined
  if (value === undefined) return undefined
  try {
    return decodeURIComponent(value)
  } catch {
    return undefined
  }
}

/** Form fields or JSON members of a POST body (empty when there is none). */
const readFields = async (request: Request): Promise<URLSearchParams> => {
  const type = request.headers.get("content-type") ?? ""
  try {
    if (type.includes("application/x-www-form-urlencoded")) return new URLSearchParams(await request.text())
    if (type.includes("application/json")) {
      const body = (await request.json()) as unknown
      const fields = new URLSearchParams()
      if (typeof body === "object" && body !== null) {
        for (const [k, v] of Object.entries(body)) if (typeof v === "string") fields.set(k, v)
      }
      return fields
    }
    if (type.includes("multipart/form-data")) {
      const form = await request.formData()
      const fields = new URLSearchParams()
      for (const [k, v] of form) if (typeof v === "string") fields.set(k, v)
      return fields
    }
  } catch {
    // an unreadable body has no fields
  }
  return new URLSearchParams()
}

export const handlers = (options: HandlersOptions): Handlers => {
  const { latchkey } = options
  const base = trimSlash(options.basePath ?? "/oauth")
  const root = base === "/" ? "" : base
  const defaultReturnTo = safeReturnPath(options.defaultReturnTo ?? "/") ?? "/"
  const errorPath = options.errorPath === undefined ? undefined : safeReturnPath(options.errorPath)
  if (options.errorPath !== undefined && errorPath === undefined) {
    throw new TypeError(`@latchkey/http: errorPath must be a same-origin path like "/settings"`)
  }
  const known = (providerId: string | undefined) =>
    providerId !== undefined && latchkey.providers.some((p) => p.id === providerId)

  const paths: Handlers["paths"] = {
    start: (providerId, returnTo) =>
      `${root}/start/${encodeURIComponent(providerId)}${returnTo === undefined ? "" : `?${new URLSearchParams({ returnTo })}`}`,
    callback: `${root}/callback`,
    install: (providerId) => `${root}/install/${encodeURIComponent(providerId)}`,
    unlink: (connectionId) => `${root}/unlink/${encodeURIComponent(connectionId)}`,
    webhook: (name) => `${root}/webhooks/${encodeURIComponent(name)}`
  }

  /** The response for a failure: a redirect to the app's error page, JSON, or a small HTML page. */
  const fail = (request: Request, code: FailureCode, providerId: string | undefined): Response => {
    const failure = FAILURES[code]
    const provider = known(providerId) ? providerId : undefined
    if (errorPath !== undefined && !wantsJson(request)) {
      return redirect(withQuery(errorPath, { latchkey_error: code, ...(provider ? { provider } : {}) }))
    }
    if (wantsJson(request)) {
      return json(failure.status, {
        error: code,
        message: `${failure.title}. ${failure.detail}`,
        ...(provider ? { provider } : {})
      })
    }
    const retry =
      failure.retry && provider !== undefined
        ? `<p><a href="${escapeHtml(paths.start(provider))}">Start again</a></p>`
        : ""
    const body = `<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>${escapeHtml(failure.title)}</title></head><body><main><h1>${escapeHtml(failure.title)}</h1><p>${escapeHtml(failure.detail)}</p>${retry}<p><a href="${escapeHtml(defaultReturnTo)}">Back to the app</a></p><p><small>Error code: ${code}</small></p></main></body></html>`
    return new Response(body, {
      status: failure.status,
      headers: { "content-type": "text/html; charset=utf-8", ...NO_STORE }
    })
  }

  const failWith = (request: Request, error: unknown, providerId?: string): Response => {
    options.onError?.(error, request)
    const { code, providerId: fromError } = classify(error)
    return fail(request, code, fromError ?? providerId)
  }

  const ownerOf = async (request: Request) => {
    const id = await options.owner(request)
    return typeof id === "string" && id.length > 0 ? id : undefined
  }

  const linked = (returnTo: string, connectionId: string) =>
    redirect(withQuery(returnTo, { latchkey: "linked", connection: connectionId }))

  const start: Handler = async (request) => {
    if (request.method !== "GET" && request.method !== "POST")
      return fail(request, "method_not_allowed", undefined)
    const url = new URL(request.url)
    const fields = request.method === "POST" ? await readFields(request) : new URLSearchParams()
    const providerId =
      fields.get("provider") ?? url.searchParams.get("provider") ?? segmentAfter(url.pathname, "start")
    if (!known(providerId ?? undefined)) return fail(request, "unknown_provider", undefined)
    try {
      const ownerId = await ownerOf(request)
      if (ownerId === undefined) return fail(request, "sign_in_required", providerId!)
      const returnTo = safeReturnPath(fields.get("returnTo") ?? url.searchParams.get("returnTo"))
      const { url: authorizeUrl } = await latchkey.startAuthorization({
        providerId: providerId!,
        ownerId,
        ...(returnTo !== undefined ? { metadata: { returnTo } } : {})
      })
      return redirect(authorizeUrl)
    } catch (error) {
      return failWith(request, error, providerId!)
    }
  }

  const installFor = async (request: Request, providerId: string): Promise<Response> => {
    try {
      const ownerId =
        options.installOwner !== undefined
          ? await options.installOwner(request, providerId)
          : await ownerOf(request)
      if (ownerId === undefined || ownerId === "") return fail(request, "sign_in_required", providerId)
      const { connection } = await latchkey.completeProviderInitiated({
        providerId,
        ownerId,
        callback: new URL(request.url)
      })
      return linked(defaultReturnTo, connection.id)
    } catch (error) {
      return failWith(request, error, providerId)
    }
  }

  /** Providers that start installs themselves, by the path of their redirect URI. */
  const initiatedAt = (pathname: string) => {
    const matches = latchkey.providers.filter(
      (p) =>
        p.providerInitiated === true && trimSlash(new URL(p.redirectUri).pathname) === trimSlash(pathname)
    )
    return matches.length === 1 ? matches[0] : undefined
  }

  const callback: Handler = async (request) => {
    if (request.method !== "GET") return fail(request, "method_not_allowed", undefined)
    const url = new URL(request.url)
    const state = url.searchParams.get("state")
    if (state === null || state === "") {
      const provider = initiatedAt(url.pathname)
      if (provider !== undefined && (url.searchParams.has("code") || url.searchParams.has("error"))) {
        return installFor(request, provider.id)
      }
    }
    try {
      const ownerId = await ownerOf(request)
      if (ownerId === undefined) return fail(request, "sign_in_required", undefined)
      const result = await latchkey.completeAuthorization({ callback: url, ownerId })
      const returnTo = safeReturnPath(result.metadata?.returnTo) ?? defaultReturnTo
      return linked(returnTo, result.connection.id)
    } catch (error) {
      return failWith(request, error)
    }
  }

  const install: Handler = async (request) => {
    if (request.method !== "GET") return fail(request, "method_not_allowed", undefined)
    const url = new URL(request.url)
    const providerId = url.searchParams.get("provider") ?? segmentAfter(url.pathname, "install")
    const provider = latchkey.providers.find((p) => p.id === providerId)
    if (provider === undefined || provider.providerInitiated !== true) {
      return fail(request, "unknown_provider", undefined)
    }
    return installFor(request, provider.id)
  }

  const sameSite = (request: Request) => {
    const site = request.headers.get("sec-fetch-site")
    if (site !== null && site !== "same-origin" && site !== "none") return false
    const origin = request.headers.get("origin")
    if (origin === null) return true
    return origin === (options.origin ?? new URL(request.url).origin)
  }

  const unlink: Handler = async (request) => {
    if (request.method !== "POST") return fail(request, "method_not_allowed", undefined)
    if (!sameSite(request)) return fail(request, "cross_site", undefined)
    const url = new URL(request.url)
    const fields = await readFields(request)
    const connectionId = fields.get("connectionId") ?? segmentAfter(url.pathname, "unlink")
    try {
      const ownerId = await ownerOf(request)
      if (ownerId === undefined) return fail(request, "sign_in_required", undefined)
      if (connectionId === undefined || connectionId === null) return fail(request, "not_found", undefined)
      const connection = await latchkey.connection(connectionId)
      // Another user's connection is reported exactly like a missing one.
      if (connection.ownerId !== ownerId) return fail(request, "not_found", undefined)
      const { revokedAtProvider } = await latchkey.unlink(connectionId)
      if (wantsJson(request)) return json(200, { unlinked: connectionId, revokedAtProvider })
      const returnTo =
        safeReturnPath(fields.get("returnTo") ?? url.searchParams.get("returnTo")) ?? defaultReturnTo
      return redirect(withQuery(returnTo, { latchkey: "unlinked", connection: connectionId }))
    } catch (error) {
      return failWith(request, error)
    }
  }

  const callbackPaths = () =>
    new Set([
      paths.callback,
      ...latchkey.providers.flatMap((p) => {
        try {
          return [trimSlash(new URL(p.redirectUri).pathname)]
        } catch {
          return []
        }
      })
    ])

  const route: Handler = async (request) => {
    const pathname = trimSlash(new URL(request.url).pathname)
    if (callbackPaths().has(pathname)) return callback(request)
    if (pathname.startsWith(`${root}/`)) {
      const rest = pathname.slice(root.length + 1).split("/")
      const [action, arg] = rest
      if (rest.length <= 2) {
        if (action === "start") return start(request)
        if (action === "install") return install(request)
        if (action === "unlink") return unlink(request)
        if (action === "webhooks" && arg !== undefined) {
          const webhook = options.webhooks?.[arg]
          if (webhook !== undefined) return webhook(request)
        }
      }
    }
    return new Response("Not found", {
      status: 404,
      headers: { "content-type": "text/plain; charset=utf-8" }
    })
  }

  return { start, callback, install, unlink, fetch: route, paths }
}
