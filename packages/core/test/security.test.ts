/**
 * RFC 9700 client rules and issue 12, one describe per rule, each table-driven with the malformed or
 * hostile inputs that exercise it, against the real oidc-provider (and small local servers standing
 * in for an attacker). Every input is counted in the hostile-input tally printed at the end.
 */
import { createServer, type IncomingHttpHeaders, type Server } from "node:http"
import type { AddressInfo } from "node:net"
import { consent, type OidcServer } from "@latchkey/testkit-oidc"
import { Effect, Exit, Layer, Redacted } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as ConnectionModule from "../src/Connection.ts"
import {
  ApiError,
  AuthorizationError,
  createLatchkey,
  type Events,
  Latchkey,
  Provider,
  ProviderDefinitionError,
  RefreshError,
  TokenSet,
  Vault,
  VaultError
} from "../src/index.ts"
import { Hostile } from "../src/testing/index.ts"
import { exampleProvider, expire, link, memoryStore, REDIRECT, startServer, stored } from "./support.ts"

let server: OidcServer
beforeAll(async () => {
  server = await startServer()
})
afterAll(async () => {
  await server.close()
  console.info(Hostile.report("core/test/security.test.ts"))
})

const vault = { plaintext: true } as const

const rejection = async (p: Promise<unknown>): Promise<unknown> => {
  try {
    await p
  } catch (e) {
    return e
  }
  throw new Error("expected a rejection")
}

const thrown = (f: () => unknown): unknown => {
  try {
    f()
  } catch (e) {
    return e
  }
  throw new Error("expected a throw")
}

/** A small HTTP server that records every request and answers with `answer`. */
const listen = async (
  answer: (
    url: URL,
    headers: IncomingHttpHeaders
  ) => { status: number; headers?: Record<string, string>; body?: string }
) => {
  const seen: Array<{ url: URL; headers: IncomingHttpHeaders }> = []
  const http: Server = createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://127.0.0.1")
    seen.push({ url, headers: req.headers })
    const a = answer(url, req.headers)
    res.writeHead(a.status, a.headers ?? {})
    res.end(a.body ?? "")
  })
  await new Promise<void>((resolve) => http.listen(0, "127.0.0.1", resolve))
  const origin = `http://127.0.0.1:${(http.address() as AddressInfo).port}`
  return {
    origin,
    seen,
    close: () =>
      new Promise<void>((resolve) => {
        http.closeAllConnections()
        http.close(() => resolve())
      })
  }
}

/** A fetch in front of the real server that rewrites token-endpoint JSON answers. */
const rewritingFetch =
  (rewrite: (body: Record<string, unknown>) => Record<string, unknown>): typeof fetch =>
  async (input, init) => {
    const response = await fetch(input, init)
    const url = typeof input === "string" ? input : input instanceof URL ? input.href : input.url
    if (!url.endsWith("/token") || response.status !== 200) return response
    // The rewritten answer has no id_token: one bound to the original access token would not match.
    const { id_token: _, ...original } = (await response.json()) as Record<string, unknown>
    const body = rewrite(original)
    return new Response(JSON.stringify(body), {
      status: 200,
      headers: { "content-type": "application/json" }
    })
  }

describe("rule: mix-up defence (RFC 9700 §4.4, RFC 9207 iss)", () => {
  it("refuses at construction two providers sharing a redirect URI unless both require iss", () => {
    const table: Array<[boolean | undefined, boolean | undefined, "refused" | "accepted"]> = [
      [undefined, undefined, "refused"],
      [true, undefined, "refused"],
      [undefined, true, "refused"],
      [false, true, "refused"],
      [true, true, "accepted"]
    ]
    for (const [a, b, expected] of table) {
      const providers = [
        exampleProvider(server, { id: "one", ...(a !== undefined ? { requireIss: a } : {}) }),
        exampleProvider(server, { id: "two", ...(b !== undefined ? { requireIss: b } : {}) })
      ]
      if (expected === "refused") {
        const e = thrown(() => createLatchkey({ providers, vault }))
        expect(e).toBeInstanceOf(ProviderDefinitionError)
        expect((e as ProviderDefinitionError).field).toBe("redirectUri")
        Hostile.record("shared redirect URI", "refused")
      } else {
        void createLatchkey({ providers, vault }).close()
      }
    }
  })

  it("the honest server's code and verifier never reach the attacker's token endpoint", async () => {
    const attacker = await listen(() => ({
      status: 200,
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ access_token: "stolen", token_type: "Bearer" })
    }))
    try {
      const honest = exampleProvider(server, { id: "honest", requireIss: true })
      const evil = Provider.make({
        id: "evil",
        name: "Evil",
        clientId: "basic-client",
        clientSecret: "whatever-secret",
        clientAuth: "client_secret_basic",
        requireIss: true,
        endpoints: {
          issuer: attacker.origin,
          authorization: `${attacker.origin}/authorize`,
          token: `${attacker.origin}/token`
        },
        redirectUri: REDIRECT,
        identify: async () => ({ accountId: "x", label: "x" })
      })
      const lk = createLatchkey({ providers: [honest, evil], vault })
      // The user picks the attacker's provider; the attacker sends the browser on to the honest
      // server with the client's own parameters (its state and PKCE challenge).
      const cases: Array<[string, (callback: URL) => void, string]> = [
        ["iss of the honest server", () => {}, "iss_mismatch"],
        ["iss removed", (u) => u.searchParams.delete("iss"), "missing_iss"],
        [
          "iss with a trailing slash",
          (u) => u.searchParams.set("iss", `${attacker.origin}/`),
          "iss_mismatch"
        ],
        ["iss upper-cased", (u) => u.searchParams.set("iss", attacker.origin.toUpperCase()), "iss_mismatch"],
        ["iss empty", (u) => u.searchParams.set("iss", ""), "iss_mismatch"]
      ]
      for (const [, tamper, reason] of cases) {
        const start = new URL((await lk.startAuthorization({ providerId: "evil", ownerId: "victim" })).url)
        const forwarded = new URL(server.endpoints.authorization)
        for (const [k, v] of start.searchParams) forwarded.searchParams.set(k, v)
        forwarded.searchParams.set("scope", "openid offline_access")
        forwarded.searchParams.set("prompt", "consent")
        const callback = new URL(await consent(forwarded.href, { login: "victim", redirectUri: REDIRECT }))
        expect(callback.searchParams.get("iss")).toBe(server.issuer) // oidc-provider sends RFC 9207 iss
        tamper(callback)
        const e = await rejection(lk.completeAuthorization({ callback: callback.href, ownerId: "victim" }))
        expect(e).toBeInstanceOf(AuthorizationError)
        expect((e as AuthorizationError).reason).toBe(reason)
        Hostile.record("mix-up callback", "refused")
      }
      expect(attacker.seen.filter((r) => r.url.pathname === "/token")).toHaveLength(0)
      await lk.close()
    } finally {
      await attacker.close()
    }
  })

  it("requires iss when the server's metadata says it sends it, even without requireIss", async () => {
    const discovered = Provider.make({
      id: "discovered",
      name: "Discovered",
      clientId: "basic-client",
      clientSecret: server.clients[0]!.client_secret!,
      clientAuth: "client_secret_basic",
      discovery: { issuer: server.issuer },
      redirectUri: REDIRECT,
      scopes: ["openid", "offline_access"],
      authorizationParams: { prompt: "consent" },
      apiBaseUrl: server.issuer,
      identify: async () => ({ accountId: "a", label: "a" })
    })
    const lk = createLatchkey({ providers: [discovered], vault })
    const { url } = await lk.startAuthorization({ providerId: "discovered", ownerId: "u" })
    const callback = new URL(await consent(url, { login: "u", redirectUri: REDIRECT }))
    callback.searchParams.delete("iss")
    const e = await rejection(lk.completeAuthorization({ callback: callback.href }))
    expect((e as AuthorizationError).reason).toBe("missing_iss")
    Hostile.record("mix-up callback", "refused")
    await lk.close()
  })
})

describe("rule: extra authorize params cannot override the binding parameters (RFC 9700 §2.1, §4.5)", () => {
  it("refuses state, response_type, redirect_uri, client_id, code_challenge(_method) and the like", async () => {
    const lk = createLatchkey({ providers: [exampleProvider(server)], vault })
    const table: Array<Record<string, string>> = [
      { state: "attacker-state" },
      { response_type: "token" },
      { redirect_uri: "https://evil.example/cb" },
      { client_id: "other-client" },
      { code_challenge: "A".repeat(43) },
      { code_challenge_method: "plain" },
      { STATE: "upper" },
      { Redirect_URI: "https://evil.example/cb" },
      { scope: "admin" },
      { response_mode: "form_post" },
      { request_uri: "https://evil.example/req" },
      { request: "eyJhbGciOiJub25lIn0.e30." },
      { login_hint: "ok", state: "mixed" }
    ]
    for (const params of table) {
      const e = await rejection(lk.startAuthorization({ providerId: "example", ownerId: "u", params }))
      expect(e).toBeInstanceOf(AuthorizationError)
      expect((e as AuthorizationError).reason).toBe("invalid_request")
      expect((e as AuthorizationError).isRetryable).toBe(false)
      Hostile.record("authorize param override", "refused")
    }
    const ok = new URL(
      (await lk.startAuthorization({ providerId: "example", ownerId: "u", params: { login_hint: "a@b" } }))
        .url
    )
    expect(ok.searchParams.get("login_hint")).toBe("a@b")
    expect(ok.searchParams.getAll("state")).toHaveLength(1)
    await lk.close()
  })

  it("refuses a provider definition whose authorizationParams set them", () => {
    for (const key of [
      "state",
      "response_type",
      "redirect_uri",
      "client_id",
      "code_challenge",
      "Code_Challenge_Method"
    ]) {
      const e = thrown(() => exampleProvider(server, { authorizationParams: { [key]: "x" } }))
      expect(e).toBeInstanceOf(ProviderDefinitionError)
      expect((e as ProviderDefinitionError).field).toBe("authorizationParams")
      Hostile.record("authorize param override", "refused")
    }
  })
})

describe("rule: another owner's callback does not consume the state (RFC 9700 §4.7 CSRF)", () => {
  it("a foreign owner is refused and the owner's own callback still completes", async () => {
    const lk = createLatchkey({ providers: [exampleProvider(server)], store: memoryStore(), vault })
    const { url } = await lk.startAuthorization({ providerId: "example", ownerId: "victim" })
    const callback = await consent(url, { login: "victim", redirectUri: REDIRECT })
    for (const attackerId of ["attacker", "victim ", "VICTIM", "", "victim\u0000"]) {
      const e = await rejection(lk.completeAuthorization({ callback, ownerId: attackerId }))
      expect((e as AuthorizationError).reason).toBe("foreign_state")
      Hostile.record("foreign-owner callback", "refused")
    }
    const { connection } = await lk.completeAuthorization({ callback, ownerId: "victim" })
    expect(connection.ownerId).toBe("victim")
    await lk.close()
  })
})

describe("rule: repeated callback parameters are an invalid request, not a network error", () => {
  it("refuses a duplicated state, iss, code or error as invalid_request, and leaves the state usable", async () => {
    const lk = createLatchkey({ providers: [exampleProvider(server)], vault })
    const { url } = await lk.startAuthorization({ providerId: "example", ownerId: "u" })
    const callback = new URL(await consent(url, { login: "u", redirectUri: REDIRECT }))
    const p = callback.searchParams
    const table = [
      `state=${p.get("state")}&state=${p.get("state")}&code=${p.get("code")}&iss=${p.get("iss")}`,
      `state=${p.get("state")}&state=other&code=${p.get("code")}`,
      `state=${p.get("state")}&code=${p.get("code")}&iss=${p.get("iss")}&iss=${p.get("iss")}`,
      `state=${p.get("state")}&code=${p.get("code")}&code=forged&iss=${p.get("iss")}`,
      `state=${p.get("state")}&error=access_denied&error=server_error`,
      `state=${p.get("state")}&code=${p.get("code")}&error_description=a&error_description=b`
    ]
    for (const query of table) {
      const e = await rejection(lk.completeAuthorization({ callback: `${REDIRECT}?${query}`, ownerId: "u" }))
      expect(e).toBeInstanceOf(AuthorizationError)
      expect((e as AuthorizationError).reason).toBe("invalid_request")
      expect((e as AuthorizationError).isRetryable).toBe(false)
      Hostile.record("repeated callback parameter", "refused")
    }
    const { connection } = await lk.completeAuthorization({ callback: callback.href, ownerId: "u" })
    expect(connection.ownerId).toBe("u")
    await lk.close()
  })
})

describe("rule: token responses are normalised before they are stored", () => {
  const DEFAULT = 1800
  const withResponse = async (
    rewrite: (b: Record<string, unknown>) => Record<string, unknown>,
    lifetimes = true
  ) => {
    const store = memoryStore()
    const events: Array<Events.LatchkeyEvent> = []
    const lk = createLatchkey({
      providers: [exampleProvider(server, lifetimes ? { lifetimes: { accessTokenSeconds: DEFAULT } } : {})],
      store,
      vault,
      config: { fetch: rewritingFetch(rewrite) }
    })
    lk.on((e) => events.push(e))
    return { lk, store, events }
  }

  it("out-of-bounds expires_in falls back to the provider's default (or an hour), never to 'no expiry'", async () => {
    const table: Array<[unknown, number]> = [
      [0, DEFAULT],
      [-5, DEFAULT],
      [1e308, DEFAULT],
      [1e16, DEFAULT],
      ["Infinity", DEFAULT],
      ["NaN", DEFAULT],
      ["3600abc", DEFAULT],
      [Number.MAX_SAFE_INTEGER, DEFAULT],
      [TokenSet.MAX_LIFETIME_SECONDS + 1, DEFAULT],
      [{ seconds: 60 }, DEFAULT],
      [true, DEFAULT],
      ["7200", 7200],
      [59.6, 59.6]
    ]
    for (const [raw, seconds] of table) {
      const { lk, store } = await withResponse((b) => ({ ...b, expires_in: raw }))
      const c = await link(lk)
      const r = await stored(store, c.id)
      expect(r.expiresAt! - r.obtainedAt, `expires_in ${String(raw)}`).toBe(Math.round(seconds * 1000))
      expect(Number.isSafeInteger(r.expiresAt)).toBe(true)
      if (seconds === DEFAULT) Hostile.record("token lifetime", "neutralised")
      await lk.close()
    }
    const { lk, store } = await withResponse((b) => ({ ...b, expires_in: 0 }), false)
    const c = await link(lk)
    const r = await stored(store, c.id)
    expect(r.expiresAt! - r.obtainedAt).toBe(TokenSet.FALLBACK_LIFETIME_SECONDS * 1000)
    Hostile.record("token lifetime", "neutralised")
    await lk.close()
  })

  it("keeps the raw value for diagnostics", () => {
    const provider = exampleProvider(server, { lifetimes: { accessTokenSeconds: DEFAULT } })
    const tokens = TokenSet.fromResponse(provider, { access_token: "a", expires_in: 1e308 }, 0)
    expect(tokens.expiresAt).toBe(DEFAULT * 1000)
    expect(tokens.adjustments).toEqual([{ field: "expires_in", raw: "1e+308", action: "default_lifetime" }])
  })

  it("refuses tokens that would break or smuggle into an HTTP header, at link and at refresh", async () => {
    const bad = [
      "abc\r\nX-Injected: 1",
      "abc\nSet-Cookie: a=b",
      "abc\r",
      "abc\u0000def",
      "two words",
      "caf\u00e9",
      "tab\tbed",
      "x".repeat(TokenSet.MAX_TOKEN_LENGTH + 1),
      ""
    ]
    for (const token of bad) {
      const { lk, store } = await withResponse((b) => ({ ...b, access_token: token }))
      const e = await rejection(link(lk))
      expect(e).toBeInstanceOf(AuthorizationError)
      expect(
        (e as AuthorizationError).reason,
        `${JSON.stringify(token.slice(0, 20))}: ${(e as Error).message}`
      ).toBe("exchange_failed")
      expect((e as AuthorizationError).isRetryable).toBe(false)
      expect(await lk.connections("user-1")).toHaveLength(0)
      void store
      Hostile.record("header-breaking token", "refused")
      await lk.close()
    }
    for (const field of ["refresh_token", "token_type"] as const) {
      const { lk } = await withResponse((b) => ({ ...b, [field]: "ok\r\nX-Injected: 1" }))
      expect(((await rejection(link(lk))) as AuthorizationError).reason).toBe("exchange_failed")
      Hostile.record("header-breaking token", "refused")
      await lk.close()
    }
    // At refresh: the refresh answer carries a CR/LF token; the stored tokens stay as they were.
    let poison = false
    let refreshes = 0
    const store = memoryStore()
    const lk = createLatchkey({
      providers: [exampleProvider(server)],
      store,
      vault,
      config: {
        maxAttempts: 4,
        baseBackoffMs: 1,
        fetch: rewritingFetch((b) => {
          if (!poison) return b
          refreshes++
          return { ...b, access_token: "new\r\nX-Injected: 1" }
        })
      }
    })
    const c = await link(lk)
    await expire(store, c.id)
    const before = await stored(store, c.id)
    poison = true
    const e = await rejection(lk.refresh(c.id))
    expect(e).toBeInstanceOf(RefreshError)
    expect((e as RefreshError).message).toContain("not allowed in an HTTP header")
    expect((e as RefreshError).reason).toBe("invalid_response")
    // Not retried: another attempt would send the refresh token the server may have rotated already.
    expect(refreshes).toBe(1)
    expect((await stored(store, c.id)).accessToken).toBe(before.accessToken)
    Hostile.record("header-breaking token", "refused")
    await lk.close()
  })

  it("drops oversized extra fields and bounds the stored extras", async () => {
    const table: Array<[string, Record<string, unknown>, ReadonlyArray<string>]> = [
      ["one 8 MB field", { huge: "x".repeat(8 * 1024 * 1024) }, []],
      ["a 17 KiB field next to a small one", { big: "y".repeat(17 * 1024), small: "kept" }, ["small"]],
      [
        "many 15 KiB fields",
        Object.fromEntries(Array.from({ length: 8 }, (_, i) => [`f${i}`, "z".repeat(15 * 1024)])),
        ["f0", "f1", "f2", "f3"]
      ],
      ["just over the per-field bound", { edge: "e".repeat(TokenSet.MAX_EXTRA_FIELD_BYTES) }, []],
      [
        "deeply nested but small (kept)",
        { nested: JSON.parse(`${"[".repeat(500)}${"]".repeat(500)}`) },
        ["nested"]
      ]
    ]
    for (const [label, extra, kept] of table) {
      const { lk, store } = await withResponse((b) => ({ ...b, ...extra }))
      const c = await link(lk)
      const r = await stored(store, c.id)
      const extras = JSON.parse(r.extras.replace(/^plain\./, "")) as Record<string, unknown>
      expect(Object.keys(extras).sort(), label).toEqual([...kept].sort())
      expect(r.extras.length).toBeLessThanOrEqual(TokenSet.MAX_EXTRAS_BYTES + 16)
      if (Object.keys(extra).length > kept.length) Hostile.record("oversized extras", "neutralised")
      await lk.close()
    }
  })

  it("reports widened scopes in the linked event", async () => {
    const table: Array<[string, ReadonlyArray<string> | undefined]> = [
      ["openid offline_access email read admin", ["admin"]],
      ["openid offline_access email read admin write", ["admin", "write"]],
      ["openid,offline_access,email,read,admin", ["admin"]],
      ["openid offline_access email read", undefined],
      ["read", undefined]
    ]
    for (const [scope, widened] of table) {
      const { lk, store, events } = await withResponse((b) => ({ ...b, scope }))
      const c = await link(lk)
      const linked = events.find((e) => e.type === "linked")
      expect(linked?.type === "linked" ? linked.widenedScopes : "none", scope).toEqual(widened)
      expect((await stored(store, c.id)).scopes).toEqual(scope.split(/[\s,]+/))
      if (widened !== undefined) Hostile.record("widened scope", "neutralised")
      await lk.close()
    }
  })
})

describe("rule: credentials go only to the provider's API origins (RFC 9700 §4.9)", () => {
  it("refuses requests to any other origin before sending anything", async () => {
    const elsewhere = await listen(() => ({ status: 200 }))
    const sent: Array<string> = []
    const lk = createLatchkey({
      providers: [exampleProvider(server)],
      vault,
      config: {
        fetch: (input, init) => {
          sent.push(String(input instanceof Request ? input.url : input))
          return fetch(input, init)
        }
      }
    })
    const c = await link(lk)
    const port = new URL(server.issuer).port
    const table = [
      "http://evil.example/steal",
      "https://evil.example/steal",
      elsewhere.origin,
      `http://localhost:${port}/me`,
      `https://127.0.0.1:${port}/me`,
      "//evil.example/x",
      `http://127.0.0.1:${port}@evil.example/`,
      `http://127.0.0.1.evil.example:${port}/`,
      "file:///etc/passwd",
      "data:text/plain,hi",
      "javascript:alert(1)",
      `ftp://127.0.0.1:${port}/`
    ]
    for (const target of table) {
      sent.length = 0
      const e = await rejection(lk.fetch(c.id, target))
      expect(e, target).toBeInstanceOf(ApiError)
      expect((e as ApiError).reason).toBe("forbidden_origin")
      expect((e as ApiError).isRetryable).toBe(false)
      expect(sent).toEqual([])
      Hostile.record("credential to a foreign origin", "refused")
    }
    expect(elsewhere.seen).toHaveLength(0)
    for (const allowed of ["/me", `${server.issuer}/me`, `HTTP://127.0.0.1:${port}/me`]) {
      expect((await lk.fetch(c.id, allowed)).status).toBe(200)
    }
    await lk.close()
    await elsewhere.close()
  })

  it("strips the credentials on a redirect that leaves the API origins", async () => {
    const sink = await listen(() => ({ status: 200, body: "sink" }))
    const api = await listen((url) => {
      const to = url.searchParams.get("to")
      const status = Number(url.searchParams.get("status") ?? 302)
      return to === null ? { status: 200, body: "api" } : { status, headers: { location: to } }
    })
    try {
      const keyed = Provider.make({
        id: "keyed",
        name: "Keyed",
        clientId: "c",
        clientAuth: "none",
        endpoints: {
          issuer: api.origin,
          authorization: `${api.origin}/authorize`,
          token: `${api.origin}/token`
        },
        redirectUri: "http://127.0.0.1:9/keyed",
        apiKeys: true,
        apiBaseUrl: api.origin,
        identify: async () => ({ accountId: "k", label: "k" })
      })
      const bearer = exampleProvider(server, { apiOrigins: [api.origin] })
      const lk = createLatchkey({ providers: [keyed, bearer], vault })
      const keyedId = (
        await lk.linkApiKey({ providerId: "keyed", ownerId: "u", apiKey: "secret-api-key-123" })
      ).connection.id
      const bearerId = (await link(lk)).id
      const hop = (to: string, status = 302) =>
        `${api.origin}/hop?status=${status}&to=${encodeURIComponent(to)}`
      const table: Array<[string, string, boolean]> = [
        ["302 to another origin", hop(`${sink.origin}/a`), false],
        ["307 to another origin", hop(`${sink.origin}/b`, 307), false],
        ["308 to another origin", hop(`${sink.origin}/c`, 308), false],
        ["303 to another origin", hop(`${sink.origin}/d`, 303), false],
        ["same origin, then away", hop(hop(`${sink.origin}/e`)), false],
        ["to another origin, with a query", hop(`${sink.origin}/f?x=1`), false],
        ["relative Location on the API", hop("/final"), true]
      ]
      for (const [id, header] of [
        [keyedId, "x-api-key"],
        [bearerId, "authorization"]
      ] as const) {
        for (const [label, url, credentialed] of table) {
          sink.seen.length = 0
          api.seen.length = 0
          const res = await lk.fetch(id, url, {
            method: label.startsWith("307") ? "POST" : "GET",
            body: label.startsWith("307") ? "x" : null
          })
          expect(res.status, label).toBe(200)
          const last = [...sink.seen, ...api.seen].at(-1)!
          if (credentialed) {
            expect(last.headers[header], label).toBeDefined()
          } else {
            expect(sink.seen.length, label).toBeGreaterThan(0)
            for (const r of sink.seen) expect(r.headers[header], label).toBeUndefined()
            Hostile.record("credential across a redirect", "neutralised")
          }
        }
      }
      await lk.close()
    } finally {
      await Promise.all([sink.close(), api.close()])
    }
  })
})

describe("rule: vault keys are validated at construction, plain values refused under keys", () => {
  it("names the problem and the environment variable of a bad key", () => {
    const table: Array<[string, unknown, string]> = [
      ["unset", undefined, "is not set"],
      ["empty", "", "is empty"],
      ["blank", "   ", "is empty"],
      ["short", "abc", "got 3 characters"],
      ["31 bytes", Buffer.alloc(31, 1).toString("base64url"), "must be 32 bytes"],
      ["33 bytes hex", "ab".repeat(33), "must be 32 bytes"],
      ["not base64", `${"!".repeat(43)}`, "must be 32 bytes"],
      ["a number", 42, "must be a string"]
    ]
    for (const [label, key, problem] of table) {
      const e = thrown(() =>
        createLatchkey({
          providers: [exampleProvider(server)],
          vault: { keys: [{ id: "2026-11", key: key as string, variable: "LATCHKEY_KEY" }] }
        })
      )
      expect(e, label).toBeInstanceOf(VaultError)
      expect((e as VaultError).reason).toBe("invalid_key")
      expect((e as VaultError).variable).toBe("LATCHKEY_KEY")
      expect((e as VaultError).message).toContain("LATCHKEY_KEY")
      expect((e as VaultError).message).toContain(problem)
      Hostile.record("invalid vault key", "refused")
    }
    const fromEnv = Vault.keyFromEnv("k", "LATCHKEY_TEST_UNSET_KEY", {})
    const e = thrown(() => Vault.make({ keys: [fromEnv] }))
    expect((e as VaultError).message).toContain("LATCHKEY_TEST_UNSET_KEY")
    Hostile.record("invalid vault key", "refused")
  })

  it("the Effect layer fails with the same VaultError when it is built", async () => {
    const program = Effect.void.pipe(
      Effect.provide(
        Latchkey.layer({ providers: [exampleProvider(server)], vault: { keys: [{ id: "k", key: "short" }] } })
      )
    )
    const exit = await Effect.runPromiseExit(program as Effect.Effect<void, unknown>)
    expect(Exit.isFailure(exit)).toBe(true)
    expect(String(exit)).toContain("VaultError")
    void Layer
  })

  it("refuses a plain value planted in the store while keys are configured", async () => {
    const store = memoryStore()
    const key = { id: "k1", key: Redacted.make(Vault.generateKey()) }
    const lk = createLatchkey({ providers: [exampleProvider(server)], store, vault: { keys: [key] } })
    const c = await link(lk)
    const planted = ["plain.attacker-token", "plain.", "plain.a.b.c"]
    for (const value of planted) {
      const r = await stored(store, c.id)
      await Effect.runPromise(store.update({ ...r, accessToken: value, version: r.version + 1 }, r.version))
      const e = await rejection(lk.accessToken(c.id))
      expect(e).toBeInstanceOf(VaultError)
      expect((e as VaultError).reason).toBe("plaintext_refused")
      Hostile.record("planted plain token", "refused")
    }
    await lk.close()
    // A migration accepts them explicitly.
    const migrating = Vault.make({ keys: [key], acceptPlaintext: true })
    expect(
      await Effect.runPromise(migrating.open("plain.old", { connectionId: "c", field: "accessToken" }))
    ).toBe("old")
  })

  it("seals and opens empty and unusual values", async () => {
    const v = Vault.make({ keys: [{ id: "k", key: Vault.generateKey() }] })
    for (const value of ["", " ", "\u0000", "é", "x".repeat(100_000)]) {
      const ctx = { connectionId: "c", field: "accessToken" }
      expect(await Effect.runPromise(v.open(v.seal(value, ctx), ctx))).toBe(value)
    }
    // An empty API key links and is read back.
    const lk = createLatchkey({
      providers: [
        Provider.make({
          id: "keyed",
          name: "Keyed",
          clientId: "c",
          clientAuth: "none",
          endpoints: {
            issuer: server.issuer,
            authorization: server.endpoints.authorization,
            token: server.endpoints.token
          },
          redirectUri: "http://127.0.0.1:9/keyed",
          apiKeys: true,
          identify: async () => ({ accountId: "k", label: "k" })
        })
      ],
      vault: { keys: [{ id: "k", key: Vault.generateKey() }] }
    })
    const { connection } = await lk.linkApiKey({ providerId: "keyed", ownerId: "u", apiKey: "" })
    expect(await lk.accessToken(connection.id)).toBe("")
    await lk.close()
  })
})

describe("rule: no plain-text tokens at rest without the app saying so", () => {
  it("warns once outside production, refuses in production unless vault.plaintext", async () => {
    const warnings: Array<string> = []
    const onWarning = (w: Error & { code?: string }) => {
      if (w.code === "LATCHKEY_PLAINTEXT") warnings.push(w.message)
    }
    process.on("warning", onWarning)
    try {
      for (let i = 0; i < 3; i++) Vault.make(undefined, { NODE_ENV: "test" })
      Vault.make({}, { NODE_ENV: "development" })
      await new Promise((r) => setTimeout(r, 10))
      expect(warnings.length).toBeLessThanOrEqual(1)
      const production = { NODE_ENV: "production" }
      for (const options of [undefined, {}, { keys: [] }, { plaintext: false }]) {
        const e = thrown(() => Vault.make(options, production))
        expect(e).toBeInstanceOf(VaultError)
        expect((e as VaultError).reason).toBe("no_key")
        Hostile.record("plain tokens in production", "refused")
      }
      expect(Vault.make({ plaintext: true }, production).encrypts).toBe(false)
      expect(Vault.make({ keys: [{ id: "k", key: Vault.generateKey() }] }, production).encrypts).toBe(true)
    } finally {
      process.off("warning", onWarning)
    }
  })

  it("createLatchkey refuses to start in production without a key", () => {
    const before = process.env.NODE_ENV
    process.env.NODE_ENV = "production"
    try {
      const e = thrown(() => createLatchkey({ providers: [exampleProvider(server)] }))
      expect((e as VaultError).reason).toBe("no_key")
      void createLatchkey({ providers: [exampleProvider(server)], vault: { plaintext: true } }).close()
    } finally {
      process.env.NODE_ENV = before
    }
  })
})

void ConnectionModule

describe("rule: credentials scoped on every path (HttpClient, identify)", () => {
  it("the Effect HttpClient and identify's fetch refuse foreign origins too", async () => {
    const elsewhere = await listen(() => ({ status: 200, body: "{}" }))
    try {
      const lk = createLatchkey({ providers: [exampleProvider(server)], vault })
      const c = await link(lk)
      const { ApiClient } = await import("../src/index.ts")
      const failure = await lk.run(
        Effect.flip(
          Effect.flatMap(
            ApiClient.ApiClient.use((api) => api.httpClient(c.id)),
            (client) => client.get(`${elsewhere.origin}/steal`)
          )
        )
      )
      const cause = (failure as { cause?: unknown }).cause ?? failure
      expect(cause).toBeInstanceOf(ApiError)
      expect((cause as ApiError).reason).toBe("forbidden_origin")
      Hostile.record("credential to a foreign origin", "refused")
      await lk.close()

      // identify reaching for another origin gets no credentials and the link fails.
      const greedy = createLatchkey({
        providers: [
          exampleProvider(server, {
            identify: async ({ fetch }) => {
              await fetch(`${elsewhere.origin}/whoami`)
              return { accountId: "x", label: "x" }
            }
          })
        ],
        vault
      })
      const e = await rejection(link(greedy))
      expect((e as AuthorizationError).reason).toBe("identity_failed")
      expect(elsewhere.seen).toHaveLength(0)
      Hostile.record("credential to a foreign origin", "refused")
      await greedy.close()
    } finally {
      await elsewhere.close()
    }
  })
})

describe("rule: app inputs that cannot be stored or sent are refused up front", () => {
  it("refuses unusable owner ids and header-breaking API keys with invalid_request", async () => {
    const keyed = Provider.make({
      id: "keyed",
      name: "Keyed",
      clientId: "c",
      clientAuth: "none",
      endpoints: {
        issuer: server.issuer,
        authorization: server.endpoints.authorization,
        token: server.endpoints.token
      },
      redirectUri: "http://127.0.0.1:9/keyed",
      apiKeys: true,
      apiBaseUrl: server.issuer,
      identify: async () => ({ accountId: "k", label: "k" })
    })
    const lk = createLatchkey({ providers: [exampleProvider(server), keyed], vault })
    for (const ownerId of ["", "user\u0000admin", 42 as unknown as string]) {
      for (const attempt of [
        lk.startAuthorization({ providerId: "example", ownerId }),
        lk.linkApiKey({ providerId: "keyed", ownerId, apiKey: "k" })
      ]) {
        expect(((await rejection(attempt)) as AuthorizationError).reason).toBe("invalid_request")
        Hostile.record("unusable owner id", "refused")
      }
    }
    for (const apiKey of ["key\r\nX-Injected: 1", "key\n", "k\u0000", "kéy", "key\u2028"]) {
      const e = await rejection(lk.linkApiKey({ providerId: "keyed", ownerId: "u", apiKey }))
      expect((e as AuthorizationError).reason).toBe("invalid_request")
      expect((e as AuthorizationError).message).not.toContain(apiKey)
      Hostile.record("header-breaking API key", "refused")
    }
    expect(await lk.connections("u")).toHaveLength(0)
    await lk.close()
  })
})
