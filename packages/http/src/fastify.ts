/**
 * Fastify: a plugin serving a handler for every method and path below its prefix. It reads bodies
 * as raw bytes in its own scope (webhook signatures are over the exact body), leaving the app's
 * parsers elsewhere untouched.
 *
 * ```ts
 * await app.register(latchkeyFastify(auth.fetch), { prefix: "/oauth" })
 * ```
 */
import type { FastifyPluginAsync } from "fastify"
import type { Handler } from "./handlers.ts"
import { type NodeAdapterOptions, toRequest, writeResponse } from "./node.ts"

export const latchkeyFastify =
  (handler: Handler, options: NodeAdapterOptions = {}): FastifyPluginAsync =>
  async (fastify) => {
    fastify.removeAllContentTypeParsers()
    fastify.addContentTypeParser(
      "*",
      { parseAs: "buffer", bodyLimit: options.maxBodyBytes ?? 1024 * 1024 },
      (_request, body, done) => done(null, body)
    )
    const serve = async (
      request: { raw: import("node:http").IncomingMessage; body: unknown },
      reply: any
    ) => {
      const raw = request.raw as import("node:http").IncomingMessage & { body?: unknown }
      raw.body = Buffer.isBuffer(request.body) ? request.body : Buffer.alloc(0)
      reply.hijack()
      await writeResponse(reply.raw, await handler(await toRequest(raw, options)))
    }
    fastify.all("/", serve)
    fastify.all("/*", serve)
  }
