/**
 * The HTTP layer of a sandbox: a node:http server on 127.0.0.1, a tiny router with named endpoints,
 * body parsing (form and JSON), response helpers, per-endpoint call counters and fault injection.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http"
import type { AddressInfo } from "node:net"

/** A parsed request, as a route handler sees it. */
export interface SandboxRequest {
  readonly method: string
  readonly url: URL
  readonly path: string
  readonly query: URLSearchParams
  /** Header names are lowercase. */
  readonly headers: Readonly<Record<string, string | undefined>>
  /** `:name` segments of the route's path. */
  readonly params: Readonly<Record<string, string>>
  /** The raw body text ("" when there is none). */
  readonly rawBody: string
  /** The body when it was `application/x-www-form-urlencoded`, else undefined. */
  readonly form: URLSearchParams | undefined
  /** The body when it was JSON and parsed, else undefined. */
  readonly json: unknown
  /** `grant_type` of a form body, when present (used by fault filters and counters). */
  readonly grantType: string | undefined
  /** The endpoint name of the matched route. */
  readonly endpoint: string
}

export interface SandboxResponse {
  readonly status: number
  readonly headers?: Readonly<Record<string, string>> | undefined
  readonly body?: string | undefined
}

export type RouteHandler = (request: SandboxRequest) => SandboxResponse | Promise<SandboxResponse>

export interface Route {
  readonly method: string
  /** An exact path, or one with `:name` segments, e.g. `/locations/:locationId`. */
  readonly path: string
  /** The endpoint name counters and faults refer to, e.g. `"token"` or `"users_me"`. */
  readonly endpoint: string
  readonly handler: RouteHandler
}

/** A fault to inject into the next requests of one endpoint. */
export type FaultSpec = {
  /** The endpoint name (as routes were registered), e.g. `"refresh"`. */
  readonly endpoint: string
  /** How many matching requests it applies to (default 1). */
  readonly times?: number | undefined
  /** Only requests whose form `grant_type` is this (e.g. refresh at a shared token endpoint). */
  readonly grantType?: string | undefined
  /** Only requests this predicate accepts. */
  readonly match?: ((request: SandboxRequest) => boolean) | undefined
} & (
  | {
      /** Wait `ms` (default 1000), then answer normally. */
      readonly fault: "delay"
      readonly ms?: number | undefined
    }
  | {
      /** Answer `status` (default 503) without processing the request. */
      readonly fault: "status"
      readonly status?: number | undefined
      /** Default: `{"error":"server_error","error_description":"injected fault"}` (JSON). */
      readonly body?: string | undefined
      readonly headers?: Readonly<Record<string, string>> | undefined
    }
  | {
      /** Answer 429 with `Retry-After` without processing the request. */
      readonly fault: "rate_limit"
      /** Default 1. */
      readonly retryAfterSeconds?: number | undefined
      readonly body?: string | undefined
    }
  | {
      /** Answer 200 `application/json` with a body that is not JSON, without processing the request. */
      readonly fault: "malformed"
      readonly body?: string | undefined
    }
  | {
      /** Close the connection without processing the request or answering (a network failure). */
      readonly fault: "drop"
    }
  | {
      /**
       * Process the request fully (a refresh rotates: the old refresh token is consumed and a new one
       * issued), then close the connection without answering: the answer is lost in transit.
       */
      readonly fault: "drop_after_rotate"
    }
  | {
      /** Keep the request open without processing it or answering, until the client goes away. */
      readonly fault: "hold"
    }
  | {
      /** Process the request fully (a refresh rotates), then keep it open without answering. */
      readonly fault: "hold_after_rotate"
    }
)

export type FaultKind = FaultSpec["fault"]

/** One request as the sandbox saw it (no bodies, no tokens). */
export interface CallRecord {
  readonly endpoint: string
  readonly method: string
  readonly path: string
  readonly grantType: string | undefined
  /** The status answered, or undefined when the connection was dropped. */
  readonly status: number | undefined
  readonly fault: FaultKind | undefined
}

export interface SandboxServer {
  /** `http://127.0.0.1:<port>` */
  readonly url: string
  readonly port: number
  /** Requests seen per endpoint name (faulted ones included). A live view; see also `resetCalls`. */
  readonly calls: Readonly<Record<string, number>>
  /** Count requests matching an endpoint and, optionally, a grant type, a status or a path. */
  countCalls(filter: {
    readonly endpoint?: string
    readonly grantType?: string
    readonly status?: number
  }): number
  /** The last requests (at most 1,000), oldest first. */
  readonly log: ReadonlyArray<CallRecord>
  resetCalls(): void
  /** Add a route (before or after start). */
  route(route: Route): void
  /** Queue a fault; faults of an endpoint apply in the order they were injected. */
  inject(fault: FaultSpec): void
  /** Faults not yet used up. */
  pendingFaults(): ReadonlyArray<FaultSpec & { readonly remaining: number }>
  clearFaults(): void
  close(): Promise<void>
}

export interface SandboxServerOptions {
  /** Port on 127.0.0.1 (default: a free one). */
  readonly port?: number | undefined
  readonly routes?: ReadonlyArray<Route> | undefined
  /** Largest accepted body (default 1 MiB); larger ones get 413. */
  readonly maxBodyBytes?: number | undefined
}

// ---------------------------------------------------------------------------------------------
// Response helpers

export const json = (
  status: number,
  value: unknown,
  headers?: Readonly<Record<string, string>>
): SandboxResponse => ({
  status,
  headers: { "content-type": "application/json; charset=utf-8", ...headers },
  body: JSON.stringify(value)
})

export const html = (status: number, page: string): SandboxResponse => ({
  status,
  headers: { "content-type": "text/html; charset=utf-8", "cache-control": "no-store" },
  body: page
})

export const text = (status: number, body: string): SandboxResponse => ({
  status,
  headers: { "content-type": "text/plain; charset=utf-8" },
  body
})

export const empty = (status = 204, headers?: Readonly<Record<string, string>>): SandboxResponse => ({
  status,
  headers: headers ?? {}
})

export const redirect = (location: string, status = 302): SandboxResponse => ({
  status,
  headers: { location, "cache-control": "no-store" }
})

/** Escape text for HTML element content and attribute values. */
export const escapeHtml = (value: string): string =>
  value
    .replaceAll("&", "&amp;")
    .replaceAll("<", "&lt;")
    .replaceAll(">", "&gt;")
    .replaceAll('"', "&quot;")
    .replaceAll("'", "&#39;")

// ---------------------------------------------------------------------------------------------
// Server

interface CompiledRoute extends Route {
  readonly segments: ReadonlyArray<string>
}

const compile = (route: Route): CompiledRoute => ({ ...route, segments: route.path.split("/") })

const matchRoute = (
  routes: ReadonlyArray<CompiledRoute>,
  method: string,
  path: string
): { route: CompiledRoute; params: Record<string, string> } | "method_not_allowed" | undefined => {
  const parts = path.split("/")
  let wrongMethod = false
  for (const route of routes) {
    if (route.segments.length !== parts.length) continue
    const params: Record<string, string> = {}
    let ok = true
    for (let i = 0; i < parts.length; i++) {
      const seg = route.segments[i]!
      const part = parts[i]!
      if (seg.startsWith(":") && part.length > 0) params[seg.slice(1)] = decodeURIComponent(part)
      else if (seg !== part) {
        ok = false
        break
      }
    }
    if (!ok) continue
    if (route.method !== method && !(route.method === "GET" && method === "HEAD")) {
      wrongMethod = true
      continue
    }
    return { route, params }
  }
  return wrongMethod ? "method_not_allowed" : undefined
}

class BodyTooLarge extends Error {}

const readBody = (req: IncomingMessage, limit: number): Promise<string> =>
  new Promise((resolve, reject) => {
    const chunks: Array<Buffer> = []
    let size = 0
    req.on("data", (chunk: Buffer) => {
      size += chunk.length
      if (size > limit) {
        reject(new BodyTooLarge())
        req.resume()
        return
      }
      chunks.push(chunk)
    })
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")))
    req.on("error", reject)
  })

const DEFAULT_MALFORMED = '{"access_token": "tr'

interface QueuedFault {
  readonly spec: FaultSpec
  remaining: number
}

/** Start a sandbox HTTP server on 127.0.0.1. */
export const startSandboxServer = async (options: SandboxServerOptions = {}): Promise<SandboxServer> => {
  const routes: Array<CompiledRoute> = (options.routes ?? []).map(compile)
  const maxBody = options.maxBodyBytes ?? 1024 * 1024
  const calls: Record<string, number> = {}
  const log: Array<CallRecord> = []
  let faults: Array<QueuedFault> = []
  const timers = new Set<{ timer: NodeJS.Timeout; resolve: () => void }>()
  let closing = false

  const sleep = (ms: number) =>
    new Promise<void>((resolve) => {
      const entry = {
        timer: setTimeout(() => {
          timers.delete(entry)
          resolve()
        }, ms),
        resolve
      }
      timers.add(entry)
    })

  const record = (entry: CallRecord) => {
    log.push(entry)
    if (log.length > 1000) log.splice(0, log.length - 1000)
  }

  const takeFault = (request: SandboxRequest): FaultSpec | undefined => {
    const index = faults.findIndex(
      (f) =>
        f.remaining > 0 &&
        f.spec.endpoint === request.endpoint &&
        (f.spec.grantType === undefined || f.spec.grantType === request.grantType) &&
        (f.spec.match === undefined || f.spec.match(request))
    )
    if (index < 0) return undefined
    const queued = faults[index]!
    queued.remaining--
    if (queued.remaining <= 0) faults.splice(index, 1)
    return queued.spec
  }

  const send = (res: ServerResponse, response: SandboxResponse, head: boolean) => {
    res.writeHead(response.status, response.headers as Record<string, string> | undefined)
    res.end(head ? undefined : response.body)
  }

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const method = (req.method ?? "GET").toUpperCase()
    const url = new URL(req.url ?? "/", "http://127.0.0.1")
    const matched = matchRoute(routes, method, url.pathname)
    if (matched === undefined || matched === "method_not_allowed") {
      req.resume()
      const status = matched === undefined ? 404 : 405
      record({ endpoint: "", method, path: url.pathname, grantType: undefined, status, fault: undefined })
      send(res, json(status, { error: matched === undefined ? "not_found" : "method_not_allowed" }), false)
      return
    }
    const { route, params } = matched
    let rawBody: string
    try {
      rawBody = await readBody(req, maxBody)
    } catch (e) {
      const status = e instanceof BodyTooLarge ? 413 : 400
      send(res, json(status, { error: "invalid_request", error_description: "unreadable body" }), false)
      return
    }
    const headers: Record<string, string | undefined> = {}
    for (const [k, v] of Object.entries(req.headers)) headers[k] = Array.isArray(v) ? v.join(", ") : v
    const contentType = (headers["content-type"] ?? "").toLowerCase()
    const form = contentType.startsWith("application/x-www-form-urlencoded")
      ? new URLSearchParams(rawBody)
      : undefined
    let parsedJson: unknown
    if (contentType.includes("json") && rawBody.length > 0) {
      try {
        parsedJson = JSON.parse(rawBody)
      } catch {
        parsedJson = undefined
      }
    }
    const request: SandboxRequest = {
      method,
      url,
      path: url.pathname,
      query: url.searchParams,
      headers,
      params,
      rawBody,
      form,
      json: parsedJson,
      grantType: form?.get("grant_type") ?? undefined,
      endpoint: route.endpoint
    }
    calls[route.endpoint] = (calls[route.endpoint] ?? 0) + 1
    const fault = takeFault(request)
    const base = { endpoint: route.endpoint, method, path: url.pathname, grantType: request.grantType }
    const answer = (response: SandboxResponse) => {
      record({ ...base, status: response.status, fault: fault?.fault })
      send(res, response, method === "HEAD")
    }
    const run = async (): Promise<SandboxResponse> => {
      try {
        return await route.handler(request)
      } catch {
        return json(500, { error: "server_error", error_description: "sandbox handler failed" })
      }
    }
    switch (fault?.fault) {
      case undefined:
        return answer(await run())
      case "delay":
        await sleep(fault.ms ?? 1000)
        if (closing) return
        return answer(await run())
      case "status":
        return answer({
          status: fault.status ?? 503,
          headers: fault.headers ?? { "content-type": "application/json; charset=utf-8" },
          body: fault.body ?? JSON.stringify({ error: "server_error", error_description: "injected fault" })
        })
      case "rate_limit":
        return answer({
          status: 429,
          headers: {
            "content-type": "application/json; charset=utf-8",
            "retry-after": String(fault.retryAfterSeconds ?? 1)
          },
          body: fault.body ?? JSON.stringify({ error: "rate_limit_exceeded", error_description: "slow down" })
        })
      case "malformed":
        return answer({
          status: 200,
          headers: { "content-type": "application/json; charset=utf-8" },
          body: fault.body ?? DEFAULT_MALFORMED
        })
      case "drop":
        record({ ...base, status: undefined, fault: "drop" })
        res.socket?.destroy()
        return
      case "drop_after_rotate":
        await run()
        record({ ...base, status: undefined, fault: "drop_after_rotate" })
        res.socket?.destroy()
        return
      case "hold":
        record({ ...base, status: undefined, fault: "hold" })
        return
      case "hold_after_rotate":
        await run()
        record({ ...base, status: undefined, fault: "hold_after_rotate" })
        return
    }
  }

  const server: Server = createServer((req, res) => {
    handle(req, res).catch(() => {
      if (!res.headersSent) send(res, json(500, { error: "server_error" }), false)
      else res.destroy()
    })
  })
  server.keepAliveTimeout = 1000
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject)
    server.listen(options.port ?? 0, "127.0.0.1", () => {
      server.off("error", reject)
      resolve()
    })
  })
  const port = (server.address() as AddressInfo).port

  return {
    url: `http://127.0.0.1:${port}`,
    port,
    calls,
    log,
    countCalls: (filter) =>
      log.filter(
        (c) =>
          (filter.endpoint === undefined || c.endpoint === filter.endpoint) &&
          (filter.grantType === undefined || c.grantType === filter.grantType) &&
          (filter.status === undefined || c.status === filter.status)
      ).length,
    resetCalls: () => {
      for (const k of Object.keys(calls)) delete calls[k]
      log.length = 0
    },
    route: (route) => {
      routes.push(compile(route))
    },
    inject: (spec) => {
      const times = spec.times ?? 1
      if (!Number.isInteger(times) || times < 1)
        throw new RangeError("inject: times must be a positive integer")
      faults.push({ spec, remaining: times })
    },
    pendingFaults: () => faults.map((f) => ({ ...f.spec, remaining: f.remaining })),
    clearFaults: () => {
      faults = []
    },
    close: async () => {
      closing = true
      for (const t of timers) {
        clearTimeout(t.timer)
        t.resolve()
      }
      timers.clear()
      await new Promise<void>((resolve) => {
        server.close(() => resolve())
        server.closeAllConnections()
      })
    }
  }
}
