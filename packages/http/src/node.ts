/**
 * Node's http (and Express, whose requests and responses are Node's): a handler as a request
 * listener. Mount it before any body parser, so that webhook bodies reach it exactly as sent.
 *
 * ```ts
 * createServer(toNodeListener(auth.fetch)).listen(3000)          // node:http
 * app.use("/oauth", toNodeListener(auth.fetch))                  // Express: before express.json()
 * ```
 */
import type { IncomingMessage, ServerResponse } from "node:http"
import type { Handler } from "./handlers.ts"

export interface NodeAdapterOptions {
  /**
   * The app's public origin (`https://app.example.com`) behind a proxy; the request URL is built on
   * it. Default: `http(s)://<Host header>` of the connection.
   */
  readonly origin?: string | undefined
  /** Largest body read (default 1 MiB); a larger one is answered 413. */
  readonly maxBodyBytes?: number | undefined
}

class TooLarge extends Error {}

const readBody = async (req: IncomingMessage, limit: number): Promise<Buffer> => {
  // A framework that already read the body (Express with a raw parser) leaves it on req.body.
  const parsed = (req as { body?: unknown }).body
  if (Buffer.isBuffer(parsed)) return parsed
  if (typeof parsed === "string") return Buffer.from(parsed)
  const chunks: Array<Buffer> = []
  let size = 0
  for await (const chunk of req) {
    size += (chunk as Buffer).length
    if (size > limit) throw new TooLarge()
    chunks.push(chunk as Buffer)
  }
  return Buffer.concat(chunks)
}

/** The Web `Request` for a Node request. */
export const toRequest = async (req: IncomingMessage, options: NodeAdapterOptions = {}): Promise<Request> => {
  const encrypted = (req.socket as { encrypted?: boolean }).encrypted === true
  const origin = options.origin ?? `${encrypted ? "https" : "http"}://${req.headers.host ?? "localhost"}`
  // Express rewrites req.url below a mount point; originalUrl is what the client asked for.
  const path = (req as { originalUrl?: string }).originalUrl ?? req.url ?? "/"
  const headers = new Headers()
  for (const [name, value] of Object.entries(req.headers)) {
    if (value === undefined) continue
    if (Array.isArray(value)) for (const v of value) headers.append(name, v)
    else headers.set(name, value)
  }
  const method = req.method ?? "GET"
  const hasBody = method !== "GET" && method !== "HEAD"
  const body = hasBody ? await readBody(req, options.maxBodyBytes ?? 1024 * 1024) : undefined
  return new Request(new URL(path, origin), {
    method,
    headers,
    ...(body !== undefined ? { body: new Uint8Array(body) } : {})
  })
}

/** Write a Web `Response` to a Node response. */
export const writeResponse = async (res: ServerResponse, response: Response): Promise<void> => {
  res.statusCode = response.status
  for (const [name, value] of response.headers) {
    if (name === "set-cookie") continue
    res.setHeader(name, value)
  }
  const cookies = response.headers.getSetCookie()
  if (cookies.length > 0) res.setHeader("set-cookie", cookies)
  const body = response.body === null ? undefined : Buffer.from(await response.arrayBuffer())
  res.end(body)
}

/** A Node request listener (also an Express middleware: errors go to `next`). */
export const toNodeListener =
  (handler: Handler, options: NodeAdapterOptions = {}) =>
  async (req: IncomingMessage, res: ServerResponse, next?: (error?: unknown) => void): Promise<void> => {
    try {
      const request = await toRequest(req, options)
      await writeResponse(res, await handler(request))
    } catch (error) {
      if (error instanceof TooLarge) {
        res.statusCode = 413
        res.end()
        return
      }
      if (next !== undefined) return next(error)
      res.statusCode = 500
      res.end()
    }
  }
