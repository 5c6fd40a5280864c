/**
 * The token-endpoint transport: one HTTP/1.1 POST over `node:http` / `node:https` with keep-alive
 * agents, read whole into memory. Token requests are small, one-shot and never streamed, so the
 * WHATWG machinery of `fetch` (Request, Headers, ReadableStream, an AbortSignal per request) is pure
 * cost there: this path spends about half the CPU of `fetch` per request on this machine (the
 * background bench prints the main thread's CPU per refresh).
 *
 * It keeps what the protocol layer relies on from `fetch`:
 * - a failure rejects with `TypeError("fetch failed")` whose `cause` carries the socket's code
 *   (`ECONNREFUSED`, `ENOTFOUND`, ...), as fetch's does; it is marked `requestSent: false` when it
 *   came before the whole request was handed to the operating system (a refused or unresolvable
 *   connection, a TLS handshake that failed or never ended, a timeout while connecting): the server
 *   cannot have processed a request it never received whole, so "nothing was sent" is told apart
 *   from "the server may have processed it" more often than fetch allows;
 * - the timeout rejects with a `DOMException` named `TimeoutError`, an aborted signal with its reason;
 * - redirects are not followed (token endpoints are called with `redirect: "manual"`);
 * - a compressed body (gzip, deflate, br) is decoded, a UTF-8 byte order mark is dropped.
 * It adds a bound: a body over 1 MiB is refused (no token response is that large).
 *
 * The protocol layer uses it only where `fetch` would have been the global one with nothing
 * installed around it (see `available`): an app that configures its own `fetch`, replaces the
 * global one, installs a global undici dispatcher (a proxy, a mock) or asks Node for proxies from
 * the environment keeps `fetch`.
 */
import * as http from "node:http"
import * as https from "node:https"
import { urlToHttpOptions } from "node:url"
import { brotliDecompressSync, gunzipSync, inflateSync } from "node:zlib"

/** What came back: the status line, the headers as pairs, the body as text. */
export interface Answer {
  readonly status: number
  readonly statusText: string
  readonly headers: Array<[string, string]>
  readonly text: string
}

export interface PostInit {
  readonly headers?: Record<string, string> | undefined
  readonly body?: string | URLSearchParams | undefined
  readonly signal?: AbortSignal | null | undefined
}

/** The largest response body read (a token response is a few kilobytes at most). */
export const MAX_BODY_BYTES = 1 << 20

// Idle sockets are closed after 4 s, before the usual server keep-alive timeouts (5 s in Node,
// 60-75 s elsewhere); a server's `Keep-Alive: timeout=N` is honoured by the agent as well.
const agents = {
  "http:": new http.Agent({ keepAlive: true, timeout: 4_000 }),
  "https:": new https.Agent({ keepAlive: true, timeout: 4_000 })
} as const

const nativeFetch = globalThis.fetch
const dispatcherKey = Symbol.for("undici.globalDispatcher.1")

/**
 * Whether the lean path may stand in for the global `fetch`: the global `fetch` is still the one
 * Node started with, no global dispatcher other than undici's plain `Agent` is installed, and
 * Node was not asked to use proxies from the environment.
 */
// Read once: the environment and the flags of a process do not change under it.
const envProxies =
  (process.env.NODE_USE_ENV_PROXY !== undefined && process.env.NODE_USE_ENV_PROXY !== "0") ||
  process.execArgv.includes("--use-env-proxy")

export const available = (): boolean => {
  if (envProxies || globalThis.fetch !== nativeFetch) return false
  const dispatcher = (globalThis as Record<symbol, unknown>)[dispatcherKey] as
    | { constructor?: { name?: string } }
    | undefined
  return dispatcher === undefined || dispatcher.constructor?.name === "Agent"
}

const timeoutError = () => new DOMException("The operation was aborted due to timeout", "TimeoutError")

const fetchFailed = (cause: unknown) => new TypeError("fetch failed", { cause })

/** A failure of a request the server never received whole (see `post`). */
export const notSent = (error: unknown): boolean =>
  typeof error === "object" && error !== null && (error as { requestSent?: unknown }).requestSent === false

const decode = (body: Buffer, encoding: string | undefined): Buffer => {
  switch (encoding?.trim().toLowerCase()) {
    case undefined:
    case "":
    case "identity":
      return body
    case "gzip":
    case "x-gzip":
      return gunzipSync(body, { maxOutputLength: MAX_BODY_BYTES })
    case "deflate":
      return inflateSync(body, { maxOutputLength: MAX_BODY_BYTES })
    case "br":
      return brotliDecompressSync(body, { maxOutputLength: MAX_BODY_BYTES })
    default:
      throw new Error(`unsupported content-encoding "${encoding}"`)
  }
}

type Target = ReturnType<typeof urlToHttpOptions>

/**
 * The request options of a URL (what `http.request(url)` derives from it: host, port, path, auth),
 * kept per URL: a process calls the token endpoints of a few providers, over and over.
 */
const targets = new Map<string, Target>()
const MAX_TARGETS = 256
const targetOf = (url: string): Target => {
  let target = targets.get(url)
  if (target === undefined) {
    target = urlToHttpOptions(new URL(url))
    if (targets.size >= MAX_TARGETS) targets.clear()
    targets.set(url, target)
  }
  return target
}

/** POST `init.body` to `url`; resolves with the whole answer, whatever its status. */
export const post = (url: string, init: PostInit, timeoutMs: number): Promise<Answer> =>
  new Promise<Answer>((resolve, reject) => {
    const signal = init.signal ?? undefined
    if (signal?.aborted) {
      reject(signal.reason)
      return
    }
    let target: Target
    try {
      target = targetOf(url)
    } catch (error) {
      reject(fetchFailed(error))
      return
    }
    const agent =
      target.protocol === "https:"
        ? agents["https:"]
        : target.protocol === "http:"
          ? agents["http:"]
          : undefined
    if (agent === undefined) {
      reject(fetchFailed(new Error(`unsupported protocol ${target.protocol}`)))
      return
    }
    const body =
      init.body === undefined ? "" : typeof init.body === "string" ? init.body : init.body.toString()
    const headers: Record<string, string | number> = {
      ...init.headers,
      "content-length": Buffer.byteLength(body)
    }
    let settled = false
    // The whole request is in the operating system's hands ("finish"): before that, no server can
    // have processed it.
    let flushed = false
    const done = (error: unknown, answer?: Answer) => {
      if (settled) return
      settled = true
      if (!flushed && error !== null && typeof error === "object") {
        ;(error as { requestSent?: boolean }).requestSent = false
      }
      clearTimeout(timer)
      signal?.removeEventListener("abort", onAbort)
      if (answer !== undefined) resolve(answer)
      else reject(error)
    }
    const request = (target.protocol === "https:" ? https : http).request({
      ...target,
      method: "POST",
      agent,
      headers
    })
    const onAbort = () => {
      const reason = signal?.reason
      request.destroy(reason instanceof Error ? reason : undefined)
      done(reason)
    }
    const timer = setTimeout(() => {
      const error = timeoutError()
      request.destroy(error)
      done(error)
    }, timeoutMs)
    signal?.addEventListener("abort", onAbort, { once: true })
    request.on("finish", () => {
      flushed = true
    })
    request.on("error", (error) => done(fetchFailed(error)))
    request.on("response", (response) => {
      const chunks: Array<Buffer> = []
      let size = 0
      response.on("data", (chunk: Buffer) => {
        size += chunk.length
        if (size > MAX_BODY_BYTES) {
          const error = fetchFailed(new Error(`response body over ${MAX_BODY_BYTES} bytes`))
          response.destroy()
          request.destroy()
          done(error)
          return
        }
        chunks.push(chunk)
      })
      response.on("error", (error) => done(fetchFailed(error)))
      response.on("end", () => {
        try {
          const raw = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size)
          let text = decode(raw, response.headers["content-encoding"]).toString("utf8")
          if (text.charCodeAt(0) === 0xfeff) text = text.slice(1)
          const pairs: Array<[string, string]> = []
          const rawHeaders = response.rawHeaders
          for (let i = 0; i + 1 < rawHeaders.length; i += 2) pairs.push([rawHeaders[i]!, rawHeaders[i + 1]!])
          done(undefined, {
            status: response.statusCode ?? 0,
            statusText: response.statusMessage ?? "",
            headers: pairs,
            text
          })
        } catch (error) {
          done(fetchFailed(error))
        }
      })
    })
    request.end(body)
  })
