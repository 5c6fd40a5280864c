/**
 * HTTP requests bound to a connection: the provider's auth headers are added, a token the API
 * rejects (401, or what the provider classifies as an invalid token) is refreshed once and the
 * request retried once, and a 429 waits for `Retry-After` (bounded) before retrying. Responses are
 * returned as they are; only a request that could not be completed fails, with an `ApiError` that
 * never contains a token.
 */
import { Clock, Context, Effect, Layer, Metric, Redacted } from "effect"
import * as HttpClient from "effect/http/HttpClient"
import * as HttpClientError from "effect/http/HttpClientError"
import * as HttpClientRequest from "effect/http/HttpClientRequest"
import * as HttpClientResponse from "effect/http/HttpClientResponse"
import { LatchkeyConfig } from "./Config.ts"
import { ConnectionStore } from "./ConnectionStore.ts"
import { ApiError } from "./Errors.ts"
import { allowsCredentials, proofsFor, sendScoped } from "./internal/credentialScope.ts"
import { awaitPacedTurn, jitterOf, localBudget, paceWindowMs } from "./internal/pace.ts"
import { metrics, refreshSpan, tagged, traceparent } from "./internal/telemetry.ts"
import { parseRetryAfter } from "./OAuth.ts"
import type { ApiResponseInfo, Credential, Provider } from "./Provider.ts"
import { Providers } from "./Providers.ts"
import { type TokenError, TokenManager } from "./TokenManager.ts"

export interface ApiClientShape {
  /** `fetch` for a connection. A relative URL resolves against the provider's `apiBaseUrl`. */
  readonly fetch: (
    connectionId: string,
    input: string | URL,
    init?: RequestInit
  ) => Effect.Effect<Response, ApiError | TokenError>
  /**
   * An Effect `HttpClient` bound to the connection, with the same behaviour as `fetch`. Relative
   * request URLs resolve against the provider's `apiBaseUrl`. Failures are `HttpClientError`s whose
   * `cause` is the Latchkey error (e.g. `ReauthorizationRequired`).
   */
  readonly httpClient: (connectionId: string) => Effect.Effect<HttpClient.HttpClient, TokenError>
}

const bodyInit = (request: HttpClientRequest.HttpClientRequest): BodyInit | undefined => {
  const body = request.body
  switch (body._tag) {
    case "Empty":
      return undefined
    case "Uint8Array":
      return body.body as Uint8Array<ArrayBuffer>
    case "FormData":
      return body.formData
    case "Raw":
      return body.body as BodyInit
    case "Stream":
      throw new TypeError("streaming request bodies cannot be retried after a refresh; send a buffered body")
  }
}

/** How many times a 429 answer is waited out and retried. */
const RATE_LIMIT_RETRIES = 2

const readBody = async (response: Response): Promise<unknown> => {
  const type = response.headers.get("content-type") ?? ""
  if (!type.includes("json")) return undefined
  try {
    return await response.clone().json()
  } catch {
    return undefined
  }
}

const credentialValue = (c: Credential) => (c.kind === "oauth" ? c.accessToken : c.apiKey)

/**
 * How long the provider says its budget stays spent: `X-RateLimit-Remaining: 0` with
 * `X-RateLimit-Reset` (seconds from now, or an epoch in seconds) or `X-RateLimit-Interval-Milliseconds`.
 * `undefined` when the answer does not say the budget is spent.
 */
export const rateLimitResetMs = (headers: Headers, now: number): number | undefined => {
  const remaining = headers.get("x-ratelimit-remaining")
  if (remaining === null || Number(remaining.trim()) !== 0 || remaining.trim() === "") return undefined
  const reset = Number(headers.get("x-ratelimit-reset") ?? Number.NaN)
  if (Number.isFinite(reset) && reset >= 0) {
    const ms = reset > 1e9 ? reset * 1000 - now : reset * 1000
    return Math.max(0, Math.min(ms, 3_600_000))
  }
  const interval = Number(headers.get("x-ratelimit-interval-milliseconds") ?? Number.NaN)
  return Number.isFinite(interval) && interval > 0 ? Math.min(interval, 3_600_000) : undefined
}

export class ApiClient extends Context.Service<ApiClient, ApiClientShape>()("@latchkey/core/ApiClient") {
  static readonly layer = Layer.effect(
    ApiClient,
    Effect.gen(function* () {
      const tokens = yield* TokenManager
      const config = yield* LatchkeyConfig
      const store = yield* ConnectionStore
      /** Per-process budgets, for stores without `takeRateBudget`. */
      const local = localBudget()
      const budgetKey = (providerId: string, accountId: string) =>
        config.apiRateLimits?.[providerId]?.per === "account"
          ? `api:${providerId}:${accountId}`
          : `api:${providerId}`
      /** Take `cost` slots of the budget (shared through the store when it can); the wait before ours. */
      const takeBudget = (key: string, limit: number, windowMs: number, cost = 1) =>
        store.takeRateBudget !== undefined
          ? store.takeRateBudget(key, limit, windowMs, cost)
          : local(key, limit, windowMs, cost)
      /**
       * Wait for this request's slot of the provider's budget (when one is configured), leaving
       * within the limit's `jitterMs` of it or taking the next one (see `internal/pace.ts`): every
       * window then holds at most `limit` requests.
       */
      const awaitBudget = (providerId: string, accountId: string) => {
        const limit = config.apiRateLimits?.[providerId]
        if (limit === undefined) return Effect.void
        const jitterMs = jitterOf(limit.jitterMs)
        const key = budgetKey(providerId, accountId)
        const windowMs = paceWindowMs(limit.windowMs, jitterMs)
        return awaitPacedTurn(
          () =>
            takeBudget(key, limit.limit, windowMs).pipe(
              // A budget the store cannot keep does not stop requests: the provider's own 429 still applies.
              Effect.catch(() => Effect.succeed(0))
            ),
          jitterMs
        ).pipe(Effect.asVoid)
      }
      /** The provider says the budget is spent until a reset: hold it there for every instance. */
      const holdBudget = (providerId: string, accountId: string, headers: Headers) =>
        Effect.clockWith((clock) => {
          const limit = config.apiRateLimits?.[providerId]
          const resetMs = rateLimitResetMs(headers, clock.currentTimeMillisUnsafe())
          if (limit === undefined || resetMs === undefined || resetMs <= 0) return Effect.void
          const windowMs = paceWindowMs(limit.windowMs, jitterOf(limit.jitterMs))
          const cost = Math.ceil(resetMs / (windowMs / limit.limit))
          return takeBudget(budgetKey(providerId, accountId), limit.limit, windowMs, cost).pipe(
            Effect.catch(() => Effect.succeed(0)),
            Effect.asVoid
          )
        })
      const registered = (yield* Providers).all
      const providersBase = new Map(registered.map((p) => [p.id, p.apiBaseUrl] as const))
      // Each provider's API fetch, wrapped once (e.g. HighLevel's rate limiter).
      const apiFetches = new Map(
        registered.map((p) => [p.id, p.apiFetch ? p.apiFetch(config.fetch) : config.fetch])
      )

      const send = (
        connectionId: string,
        url: URL,
        init: RequestInit | undefined,
        credential: Credential,
        provider: Provider
      ) =>
        Effect.gen(function* () {
          // With telemetry on, the provider request carries this span's trace context (W3C).
          const parent = yield* traceparent
          const started = yield* Clock.currentTimeMillis
          const response = yield* sendOnce(connectionId, url, init, credential, provider, parent).pipe(
            Effect.tapError(() =>
              Metric.update(tagged(metrics.apiRequests, { provider: provider.id, status: "error" }), 1)
            )
          )
          const elapsed = (yield* Clock.currentTimeMillis) - started
          yield* Metric.update(
            tagged(metrics.apiRequests, {
              provider: provider.id,
              status: String(response.status)
            }),
            1
          )
          yield* Metric.update(tagged(metrics.apiDuration, { provider: provider.id }), elapsed)
          yield* Effect.annotateCurrentSpan({ "http.response.status_code": response.status })
          return response
        })

      const sendOnce = (
        connectionId: string,
        url: URL,
        init: RequestInit | undefined,
        credential: Credential,
        provider: Provider,
        parent: string | undefined
      ) =>
        Effect.tryPromise({
          try: () => {
            let headers = init?.headers
            if (parent !== undefined) {
              const withTrace = new Headers(init?.headers)
              withTrace.set("traceparent", parent)
              headers = withTrace
            }
            return sendScoped(
              provider,
              apiFetches.get(provider.id) ?? config.fetch,
              url,
              {
                ...init,
                ...(headers !== undefined ? { headers } : {}),
                signal: init?.signal ?? AbortSignal.timeout(config.requestTimeoutMs)
              },
              provider.authorizeRequest(credential),
              proofsFor(credential)
            )
          },
          catch: (cause) => {
            const name = (cause as { name?: string } | undefined)?.name
            const timeout = name === "TimeoutError" || name === "AbortError"
            return new ApiError({
              reason: timeout ? "timeout" : "network",
              connectionId,
              message: `${init?.method ?? "GET"} ${url.origin}${url.pathname} ${timeout ? "timed out" : "failed: network error"}`
            })
          }
        })

      const fetchFor = Effect.fn("ApiClient.fetch")(function* (
        connectionId: string,
        input: string | URL,
        init?: RequestInit
      ) {
        yield* Effect.annotateCurrentSpan({ "latchkey.connection_id": connectionId })
        let { credential, provider, connection } = yield* tokens.credential(connectionId)
        // The request's method, origin and path only: a query string may hold a secret.
        yield* Effect.annotateCurrentSpan({
          "latchkey.provider": provider.id,
          "latchkey.credential_kind": credential.kind,
          "http.request.method": (init?.method ?? "GET").toUpperCase()
        })
        const url = yield* Effect.try({
          try: () => new URL(input, provider.apiBaseUrl),
          catch: () =>
            new ApiError({
              reason: "forbidden_origin",
              connectionId,
              message: `${provider.name}: the request URL is not absolute and the provider has no apiBaseUrl`
            })
        })
        yield* Effect.annotateCurrentSpan({ "server.address": url.host, "url.path": url.pathname })
        if (!allowsCredentials(provider, url)) {
          return yield* new ApiError({
            reason: "forbidden_origin",
            connectionId,
            message: `${provider.name}: ${url.protocol}//${url.host} is not one of the provider's API origins (${provider.credentialOrigins.join(", ") || "none declared"}); its credentials are not sent there`
          })
        }
        let refreshed = false
        let rateLimitedRetries = 0
        for (;;) {
          yield* awaitBudget(provider.id, connection.accountId)
          const response = yield* send(connectionId, url, init, credential, provider)
          yield* holdBudget(provider.id, connection.accountId, response.headers)
          if (response.ok) return response
          const info: ApiResponseInfo = {
            status: response.status,
            headers: response.headers,
            body: yield* Effect.promise(() => readBody(response))
          }
          const verdict = provider.classifyResponse(info)
          if (verdict === "token_invalid" && credential.kind === "oauth" && !refreshed) {
            refreshed = true
            const used = credentialValue(credential)
            // Refresh only if the stored token is still the one that was refused.
            const fresh = yield* refreshSpan(
              "api",
              connectionId,
              provider.id,
              tokens.refreshIf(connectionId, (c) => Redacted.value(c.tokens.accessToken) === used)
            )
            yield* Effect.promise(() => response.body?.cancel() ?? Promise.resolve())
            credential = {
              kind: "oauth",
              accessToken: Redacted.value(fresh.tokens.accessToken),
              tokenType: fresh.tokens.tokenType
            }
            continue
          }
          if (verdict === "rate_limited" && rateLimitedRetries < RATE_LIMIT_RETRIES) {
            const now = yield* Clock.currentTimeMillis
            const wait = parseRetryAfter(response.headers.get("retry-after"), now) ?? 1_000
            if (wait <= config.apiMaxRetryAfterMs) {
              rateLimitedRetries++
              yield* Effect.promise(() => response.body?.cancel() ?? Promise.resolve())
              yield* Effect.sleep(wait)
              continue
            }
          }
          return response
        }
      })

      const httpClient = (connectionId: string) =>
        Effect.map(tokens.get(connectionId), (connection) => {
          const base = providersBase.get(connection.providerId) ?? undefined
          return HttpClient.make((request, url, signal) =>
            Effect.try({
              try: () => {
                const headers = new Headers(request.headers as Record<string, string>)
                const body = bodyInit(request)
                if (request.body._tag === "Uint8Array" || request.body._tag === "Raw") {
                  const type = request.body.contentType
                  if (type && !headers.has("content-type")) headers.set("content-type", type)
                }
                return { headers, body }
              },
              catch: (cause) =>
                new HttpClientError.HttpClientError({
                  reason: new HttpClientError.EncodeError({ request, cause, description: String(cause) })
                })
            }).pipe(
              Effect.flatMap(({ headers, body }) =>
                fetchFor(connectionId, url, {
                  method: request.method,
                  headers,
                  ...(body !== undefined ? { body } : {}),
                  signal
                })
              ),
              Effect.map((response) => HttpClientResponse.fromWeb(request, response)),
              Effect.mapError((cause) =>
                cause instanceof HttpClientError.HttpClientError
                  ? cause
                  : new HttpClientError.HttpClientError({
                      reason: new HttpClientError.TransportError({
                        request,
                        cause,
                        description: cause.message
                      })
                    })
              )
            )
          ).pipe(
            HttpClient.mapRequest((request) =>
              base !== undefined && !/^[a-z][a-z0-9+.-]*:/i.test(request.url)
                ? HttpClientRequest.setUrl(request, new URL(request.url, base).href)
                : request
            )
          )
        })

      return ApiClient.of({ fetch: fetchFor, httpClient })
    })
  )
}
