/**
 * The lean token-endpoint transport (src/internal/transport.ts), through `OAuth.refresh` against
 * real HTTP servers on 127.0.0.1: what reaches the server, what comes back, and how each failure
 * is classified — above all whether the refresh token may have been spent (`maybeProcessed`).
 * The requests of `fetch` carry `sec-fetch-mode`; the lean transport's do not: that is how each
 * test sees which path a request took.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http"
import { type AddressInfo, createServer as createTcpServer, type Socket } from "node:net"
import { gzipSync } from "node:zlib"
import { Effect, Result } from "effect"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import { defaultFetch } from "../src/Config.ts"
import { OAuth, Provider } from "../src/index.ts"

interface Seen {
  readonly headers: IncomingMessage["headers"]
  readonly body: string
  readonly socket: Socket
}

type Handler = (req: IncomingMessage, res: ServerResponse, body: string) => void

let handler: Handler
let seen: Array<Seen> = []
let server: Server
let base = ""
const sockets = new Set<Socket>()

const tokens = (n: number) => ({
  access_token: `access-${n}`,
  refresh_token: `refresh-${n}`,
  token_type: "Bearer",
  expires_in: 3600
})

beforeAll(async () => {
  server = createServer((req, res) => {
    const chunks: Array<Buffer> = []
    req.on("data", (c: Buffer) => chunks.push(c))
    req.on("end", () => {
      const body = Buffer.concat(chunks).toString()
      seen.push({ headers: req.headers, body, socket: req.socket })
      handler(req, res, body)
    })
  })
  server.on("connection", (socket) => {
    sockets.add(socket)
    socket.on("close", () => sockets.delete(socket))
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
})
afterEach(() => {
  seen = []
})
afterAll(async () => {
  for (const socket of sockets) socket.destroy()
  await new Promise<void>((resolve) => server.close(() => resolve()))
})

const provider = (url = base) =>
  Provider.make({
    id: "lean",
    name: "Lean",
    clientId: "client",
    clientSecret: "client-secret",
    clientAuth: "client_secret_basic",
    endpoints: { issuer: url, authorization: `${url}/authorize`, token: `${url}/token` },
    redirectUri: `${url}/callback`,
    apiBaseUrl: `${url}/api`,
    identify: async () => ({ accountId: "acct", label: "acct" })
  })

const json =
  (status: number, body: unknown, headers: Record<string, string> = {}): Handler =>
  (_, res) => {
    res.writeHead(status, { "content-type": "application/json", ...headers }).end(JSON.stringify(body))
  }

const refresh = (options: OAuth.ProtocolOptions = { timeoutMs: 2_000 }, p = provider()) =>
  Effect.runPromise(Effect.result(OAuth.refresh(p, options, "the-refresh-token")))

const failure = async (options?: OAuth.ProtocolOptions, p?: Provider.Provider) => {
  const result = await refresh(options, p)
  if (!Result.isFailure(result)) throw new Error("expected the refresh to fail")
  return result.failure
}

describe("the lean transport", () => {
  it("carries the refresh grant (form body, client authentication, length) and reads the tokens", async () => {
    handler = json(200, tokens(1))
    const result = await refresh()
    expect(Result.isSuccess(result) && result.success.access_token).toBe("access-1")
    expect(seen).toHaveLength(1)
    const [request] = seen
    expect(request!.headers["sec-fetch-mode"]).toBeUndefined()
    expect(request!.headers["content-type"]).toMatch(/^application\/x-www-form-urlencoded/)
    // RFC 6749 §2.3.1: the client id and secret are form-encoded before Basic.
    const [scheme, credentials] = (request!.headers.authorization ?? "").split(" ")
    expect(scheme).toBe("Basic")
    expect(Buffer.from(credentials!, "base64").toString().split(":").map(decodeURIComponent)).toEqual([
      "client",
      "client-secret"
    ])
    expect(Number(request!.headers["content-length"])).toBe(Buffer.byteLength(request!.body))
    expect(new URLSearchParams(request!.body).get("grant_type")).toBe("refresh_token")
    expect(new URLSearchParams(request!.body).get("refresh_token")).toBe("the-refresh-token")
  })

  it("keeps the connection alive between requests", async () => {
    handler = json(200, tokens(2))
    await refresh()
    await refresh()
    await refresh()
    expect(seen).toHaveLength(3)
    expect(new Set(seen.map((s) => s.socket)).size).toBe(1)
  })

  it("decodes a gzip-compressed answer and drops a byte order mark", async () => {
    handler = (_, res) => {
      res
        .writeHead(200, { "content-type": "application/json", "content-encoding": "gzip" })
        .end(gzipSync(Buffer.from(`\ufeff${JSON.stringify(tokens(3))}`)))
    }
    const result = await refresh()
    expect(Result.isSuccess(result) && result.success.refresh_token).toBe("refresh-3")
  })

  it("classifies the server's answers as fetch did: invalid_grant, 503 with Retry-After, an error in a 200", async () => {
    handler = json(400, { error: "invalid_grant", error_description: "spent" })
    expect((await failure()).kind).toBe("invalid_grant")
    handler = json(503, { error: "temporarily_unavailable" }, { "retry-after": "7" })
    const unavailable = await failure()
    expect(unavailable.kind).toBe("transient")
    expect(unavailable.details.retryAfterMs).toBe(7_000)
    handler = (_, res) => res.writeHead(503, { "retry-after": "3" }).end()
    const bare = await failure()
    expect([bare.kind, bare.details.retryAfterMs, bare.details.maybeProcessed]).toEqual([
      "transient",
      3_000,
      true
    ])
    handler = json(200, { error: "bad_refresh_token" })
    expect((await failure()).details.error).toBe("bad_refresh_token")
  })

  it("a refused connection: nothing was sent, so the refresh token was not spent", async () => {
    const closed = createServer()
    await new Promise<void>((resolve) => closed.listen(0, "127.0.0.1", resolve))
    const port = (closed.address() as AddressInfo).port
    await new Promise<void>((resolve) => closed.close(() => resolve()))
    const failed = await failure(undefined, provider(`http://127.0.0.1:${port}`))
    expect(failed.kind).toBe("transient")
    expect(failed.details.maybeProcessed).toBe(false)
  })

  it("a TLS handshake that fails or never ends: nothing reached the server, the token was not spent", async () => {
    // A TCP listener that speaks no TLS: one that cuts every connection, one that stays silent.
    const held = new Set<Socket>()
    const cutting = createTcpServer((socket) => socket.destroy())
    const silent = createTcpServer((socket) => {
      held.add(socket)
    })
    const listen = async (tcp: typeof cutting) => {
      await new Promise<void>((resolve) => tcp.listen(0, "127.0.0.1", resolve))
      return `https://127.0.0.1:${(tcp.address() as AddressInfo).port}`
    }
    try {
      const cut = await failure(undefined, provider(await listen(cutting)))
      expect([cut.kind, cut.details.maybeProcessed]).toEqual(["transient", false])
      const stalled = await failure({ timeoutMs: 150 }, provider(await listen(silent)))
      expect(stalled.message).toContain("timed out")
      expect([stalled.kind, stalled.details.maybeProcessed]).toEqual(["transient", false])
    } finally {
      for (const socket of held) socket.destroy()
      await Promise.all([cutting, silent].map((tcp) => new Promise((resolve) => tcp.close(resolve))))
    }
  })

  it("no answer within the timeout: transient, and the token may have been spent", async () => {
    handler = () => {
      // never answers
    }
    const failed = await failure({ timeoutMs: 150 })
    expect(failed.kind).toBe("transient")
    expect(failed.message).toContain("timed out")
    expect(failed.details.maybeProcessed).toBe(true)
  })

  it("a connection cut in the middle of the answer: transient, and the token may have been spent", async () => {
    handler = (req, res) => {
      res.writeHead(200, { "content-type": "application/json", "content-length": "400" })
      res.write('{"access_token":"acc')
      setImmediate(() => req.socket.destroy())
    }
    const failed = await failure()
    expect(failed.kind).toBe("transient")
    expect(failed.details.maybeProcessed).toBe(true)
  })

  it("refuses an answer over 1 MiB", async () => {
    handler = (_, res) => {
      res.writeHead(200, { "content-type": "application/json" })
      res.end(JSON.stringify({ ...tokens(4), padding: "x".repeat(2 << 20) }))
    }
    const failed = await failure()
    expect(failed.kind).toBe("transient")
    expect(failed.details.maybeProcessed).toBe(true)
  })

  it("stands aside for a fetch the app configured, and for a global fetch the app replaced", async () => {
    handler = json(200, tokens(5))
    let calls = 0
    const counting: typeof fetch = (input, init) => {
      calls++
      return fetch(input, init)
    }
    await refresh({ timeoutMs: 2_000, fetch: counting })
    expect(calls).toBe(1)
    expect(seen.at(-1)!.headers["sec-fetch-mode"]).toBe("cors")

    const original = globalThis.fetch
    globalThis.fetch = (input, init) => {
      calls++
      return original(input, init)
    }
    try {
      await refresh({ timeoutMs: 2_000, fetch: defaultFetch })
    } finally {
      globalThis.fetch = original
    }
    expect(calls).toBe(2)
    expect(seen.at(-1)!.headers["sec-fetch-mode"]).toBe("cors")

    await refresh({ timeoutMs: 2_000, fetch: defaultFetch })
    expect(calls).toBe(2)
    expect(seen.at(-1)!.headers["sec-fetch-mode"]).toBeUndefined()
  })
})
