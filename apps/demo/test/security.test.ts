/**
 * The demo app's own security, over plain HTTP: cookie flags, CSRF on every state-changing request,
 * no open redirect, Referrer-Policy on callbacks, other users' connections out of reach, and no
 * token value in anything the app sends to a browser (pages, partials, JSON, the event stream) or
 * writes unsealed to its SQLite file.
 */
import { readFileSync } from "node:fs"
import { request } from "node:http"
import { TokenManager } from "@latchkey/core"
import { Hostile } from "@latchkey/core/testing"
import { consent } from "@latchkey/testkit-oidc"
import { Redacted } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { safeLocalPath } from "../src/app.ts"
import { Client, type Started, startTestDemo } from "./support.ts"

let started: Started
const logs: Array<string> = []
const url = () => started.demo.url
const sandboxes = () => started.demo.providers.sandboxes

beforeAll(async () => {
  started = await startTestDemo({ log: (line) => logs.push(line) })
})
afterAll(async () => {
  await started?.close()
  console.info(Hostile.report("apps/demo/test/security.test.ts"))
})

/** Link an account for the client's user through the real redirect flow; returns the callback response. */
const link = async (
  client: Client,
  providerId: "heygen" | "highlevel" | "example",
  account: string,
  deny = false
) => {
  const start = await client.post(`/link/${providerId}`, { _csrf: await client.csrf() })
  expect(start.status).toBe(303)
  const authorize = start.headers.get("location")!
  let callback: string
  if (providerId === "heygen") callback = await sandboxes().heygen!.approve(authorize, { account, deny })
  else if (providerId === "highlevel")
    callback = deny
      ? await sandboxes().highlevel!.deny(authorize)
      : await sandboxes().highlevel!.approve(authorize, account)
  else
    callback = await consent(authorize, {
      login: account,
      deny,
      redirectUri: `${url()}/oauth/example/callback`
    })
  expect(callback.startsWith(`${url()}/oauth/${providerId}/callback?`)).toBe(true)
  const response = await client.fetch(new URL(callback).pathname + new URL(callback).search)
  return { response, callback }
}

/** A request with a Host header of our choosing (fetch does not let one set it). */
const raw = (method: string, path: string, headers: Record<string, string>) =>
  new Promise<{ status: number; location: string | undefined }>((resolve, reject) => {
    const req = request(`${url()}${path}`, { method, headers }, (res) => {
      res.resume()
      resolve({ status: res.statusCode ?? 0, location: res.headers.location })
    })
    req.on("error", reject)
    req.end()
  })

/** Every token value of a connection, opened from the store. */
const tokensOf = async (connectionId: string): Promise<Array<string>> => {
  const c = await started.demo.latchkey.run(TokenManager.TokenManager.use((t) => t.get(connectionId)))
  return [c.tokens.accessToken, c.tokens.refreshToken]
    .filter((t) => t !== undefined)
    .map((t) => Redacted.value(t!))
}

describe("session cookie", () => {
  it("is HttpOnly, SameSite=Lax, scoped to / and not readable by scripts", async () => {
    const response = await fetch(`${url()}/`)
    const cookie = response.headers.getSetCookie().find((c) => c.startsWith("latchkey_demo_session="))
    expect(cookie).toBeDefined()
    const attributes = cookie!.split(";").map((a) => a.trim().toLowerCase())
    expect(attributes).toContain("httponly")
    expect(attributes).toContain("samesite=lax")
    expect(attributes).toContain("path=/")
    expect(cookie!.split(";")[0]!.split("=")[1]).toMatch(/^[A-Za-z0-9_-]{43}$/)
  })

  it("a switch of demo user starts a new session (new id and CSRF token)", async () => {
    const client = new Client(url())
    const csrf = await client.csrf()
    const before = client.jar.get("latchkey_demo_session")
    const response = await client.post("/session/user", { _csrf: csrf, user: "grace" })
    expect(response.status).toBe(303)
    expect(client.jar.get("latchkey_demo_session")).not.toBe(before)
    const page = await (await client.fetch("/")).text()
    expect(page).toContain("Grace’s linked accounts")
    expect(await client.csrf()).not.toBe(csrf)
    // The old session is gone.
    const old = await fetch(`${url()}/partials/accounts`, {
      headers: { cookie: `latchkey_demo_session=${before}` }
    })
    expect(old.status).toBe(401)
  })

  it("sends the security headers on every page", async () => {
    const response = await fetch(`${url()}/`)
    const csp = response.headers.get("content-security-policy")!
    expect(csp).toContain("script-src 'self'")
    expect(csp).toContain("frame-ancestors 'none'")
    expect(csp).not.toContain("unsafe-inline")
    expect(response.headers.get("x-content-type-options")).toBe("nosniff")
    expect(response.headers.get("x-frame-options")).toBe("DENY")
    expect(response.headers.get("cache-control")).toBe("no-store")
  })
})

describe("CSRF protection on every state-changing request", () => {
  it("refuses POSTs without the session's token with 403, and changes nothing", async () => {
    const ada = new Client(url())
    await link(ada, "heygen", "jane_doe")
    const [c] = await started.demo.latchkey.connections("ada")
    const other = new Client(url())
    const foreign = await other.csrf()
    const posts: Array<[string, Record<string, string>]> = [
      ["/session/user", { user: "grace" }],
      ["/link/heygen", {}],
      [`/connections/${c!.id}/call`, {}],
      [`/connections/${c!.id}/refresh`, {}],
      [`/connections/${c!.id}/unlink`, {}],
      [`/connections/${c!.id}/revoke-at-provider`, {}]
    ]
    for (const [path, form] of posts) {
      expect((await ada.post(path, form)).status, `${path} without a token`).toBe(403)
      expect(
        (await ada.post(path, { ...form, _csrf: "x".repeat(43) })).status,
        `${path} with a wrong token`
      ).toBe(403)
      expect(
        (await ada.post(path, { ...form, _csrf: foreign })).status,
        `${path} with another session's token`
      ).toBe(403)
      expect(
        (await ada.post(path, { ...form }, { "x-csrf-token": foreign })).status,
        `${path} with another session's token in the header`
      ).toBe(403)
    }
    // A cross-site form carrying a valid token (e.g. leaked) is still refused by its Origin.
    const token = await ada.csrf()
    expect(
      (await ada.post(`/connections/${c!.id}/refresh`, { _csrf: token }, { origin: "http://evil.example" }))
        .status
    ).toBe(403)
    expect(
      (await ada.post(`/connections/${c!.id}/refresh`, { _csrf: token }, { "sec-fetch-site": "cross-site" }))
        .status
    ).toBe(403)
    // No session at all.
    expect((await fetch(`${url()}/link/heygen`, { method: "POST", redirect: "manual" })).status).toBe(403)

    const after = await started.demo.latchkey.connection(c!.id)
    expect(after.version).toBe(c!.version)
    expect(sandboxes().heygen!.calls.refresh ?? 0).toBe(0)

    // With the token, the same requests work.
    const ok = await ada.post(
      `/connections/${c!.id}/refresh`,
      { _csrf: token },
      { accept: "application/json", origin: url() }
    )
    expect(ok.status).toBe(200)
    expect((await started.demo.latchkey.connection(c!.id)).version).toBeGreaterThan(c!.version)
    await ada.post(`/connections/${c!.id}/unlink`, { _csrf: token })
  })

  it("keeps one user's connections out of another's reach (404, nothing changes)", async () => {
    const ada = new Client(url())
    await link(ada, "highlevel", "sbxLocation003")
    const c = (await started.demo.latchkey.connections("ada")).find((x) => x.accountId === "sbxLocation003")!
    const grace = new Client(url())
    await grace.post("/session/user", { _csrf: await grace.csrf(), user: "grace" })
    const token = await grace.csrf()
    for (const action of ["call", "refresh", "unlink", "revoke-at-provider"]) {
      const response = await grace.post(
        `/connections/${c.id}/${action}`,
        { _csrf: token },
        { accept: "application/json" }
      )
      expect(response.status, action).toBe(404)
    }
    const partial = await (await grace.fetch("/partials/accounts")).text()
    expect(partial).not.toContain(c.id)
    expect((await started.demo.latchkey.connection(c.id)).version).toBe(c.version)
    await ada.post(`/connections/${c.id}/unlink`, { _csrf: await ada.csrf() })
  })
})

describe("redirects", () => {
  it("never leave the site for a user-given target", async () => {
    for (const next of [
      "https://evil.example/",
      "//evil.example/x",
      "/\\evil.example",
      "\\\\evil.example",
      "http:evil.example",
      "javascript:alert(1)",
      " /x",
      "/%0d%0aSet-Cookie:x=y"
    ]) {
      const client = new Client(url())
      const response = await client.post("/session/user", { _csrf: await client.csrf(), user: "ada", next })
      expect(response.status).toBe(303)
      const location = response.headers.get("location")!
      expect(new URL(location, url()).origin, next).toBe(url())
      expect(
        location.startsWith("/") && !location.startsWith("//") && !location.startsWith("/\\"),
        next
      ).toBe(true)
    }
    const client = new Client(url())
    const kept = await client.post("/session/user", {
      _csrf: await client.csrf(),
      user: "ada",
      next: "/?tab=1"
    })
    expect(kept.headers.get("location")).toBe("/?tab=1")
  })

  it("safeLocalPath accepts only paths on this site", () => {
    expect(safeLocalPath("/")).toBe("/")
    expect(safeLocalPath("/a/b?c=1#d")).toBe("/a/b?c=1#d")
    for (const bad of [
      "",
      "a",
      "//x.example",
      "/\\x.example",
      "https://x.example",
      "/\t/x.example",
      undefined,
      null
    ]) {
      expect(safeLocalPath(bad), String(bad)).toBe("/")
    }
  })

  it("sends requests for another host name to this one (no DNS rebinding, no foreign Location)", async () => {
    const response = await raw("GET", "/partials/accounts?x=1", { host: "evil.example" })
    expect(response.status).toBe(303)
    expect(response.location).toBe(`${url()}/partials/accounts?x=1`)
    const localhost = await raw("GET", "/", { host: `localhost:${started.demo.port}` })
    expect(localhost.location).toBe(`${url()}/`)
    const post = await raw("POST", "/link/heygen", { host: "evil.example" })
    expect(post.status).toBe(421)
  })

  it("the link action redirects only to the provider's authorize page Latchkey built", async () => {
    const client = new Client(url())
    const response = await client.post("/link/example", {
      _csrf: await client.csrf(),
      next: "https://evil.example"
    })
    const location = new URL(response.headers.get("location")!)
    expect(location.origin).toBe(new URL(sandboxes().example.endpoints.authorization).origin)
    expect(location.searchParams.get("redirect_uri")).toBe(`${url()}/oauth/example/callback`)
    expect((await client.post("/link/nope", { _csrf: await client.csrf() })).status).toBe(404)
  })
})

describe("callbacks", () => {
  it("send Referrer-Policy: no-referrer and redirect home without the code, on success and on failure", async () => {
    const client = new Client(url())
    const ok = await link(client, "example", "bob")
    expect(ok.response.status).toBe(303)
    expect(ok.response.headers.get("referrer-policy")).toBe("no-referrer")
    expect(ok.response.headers.get("location")).toBe("/")
    expect(ok.response.headers.get("cache-control")).toBe("no-store")
    expect(await (await client.fetch("/")).text()).toContain("Example Corp account linked")

    const denied = await link(client, "highlevel", "sbxLocation001", true)
    expect(new URL(denied.callback).searchParams.get("error")).toBe("access_denied")
    expect(denied.response.headers.get("referrer-policy")).toBe("no-referrer")
    expect(denied.response.headers.get("location")).toBe("/")
    const page = await (await client.fetch("/")).text()
    expect(page).toContain("You declined on HighLevel’s consent page, so nothing was linked")

    // The server log says what failed, without the code or the state.
    expect(logs.join("\n")).toContain("linking highlevel failed: AuthorizationError (access_denied)")
    const okCode = new URL(ok.callback).searchParams.get("code")!
    expect(logs.join("\n")).not.toContain(okCode)
    expect(logs.join("\n")).not.toContain(new URL(denied.callback).searchParams.get("state")!)

    // Without a session (cookie gone): refused, same header.
    const stranger = await fetch(`${url()}/oauth/heygen/callback?code=abc&state=def`, { redirect: "manual" })
    expect(stranger.status).toBe(400)
    expect(stranger.headers.get("referrer-policy")).toBe("no-referrer")
    const bob = (await started.demo.latchkey.connections("ada")).find((c) => c.accountId === "bob")!
    await client.post(`/connections/${bob.id}/unlink`, { _csrf: await client.csrf() })
  })

  it("refuses a callback finished in another user's session (the state belongs to Ada)", async () => {
    const ada = new Client(url())
    const start = await ada.post("/link/heygen", { _csrf: await ada.csrf() })
    const callback = await sandboxes().heygen!.approve(start.headers.get("location")!, {
      account: "uma_metered"
    })
    const grace = new Client(url())
    await grace.post("/session/user", { _csrf: await grace.csrf(), user: "grace" })
    const response = await grace.fetch(new URL(callback).pathname + new URL(callback).search)
    expect(response.status).toBe(303)
    expect(await (await grace.fetch("/")).text()).toContain("started by another demo user")
    expect(await started.demo.latchkey.connections("grace")).toEqual([])
    expect((await started.demo.latchkey.connections("ada")).some((c) => c.accountId === "uma_metered")).toBe(
      false
    )
  })
})

describe("tokens never reach the browser", () => {
  it("no token value in pages, partials, action answers, the event stream, the log or the SQLite file", async () => {
    const client = new Client(url())
    await client.post("/session/user", { _csrf: await client.csrf(), user: "grace" })
    await link(client, "heygen", "walt_wallet")
    await link(client, "highlevel", "sbxLocation002")
    await link(client, "example", "carol")
    const connections = await started.demo.latchkey.connections("grace")
    expect(connections.map((c) => c.providerId).sort()).toEqual(["example", "heygen", "highlevel"])

    // The event stream, read while everything below happens.
    const controller = new AbortController()
    const events = await client.fetch("/events", { signal: controller.signal })
    expect(events.headers.get("content-type")).toContain("text/event-stream")
    let streamed = ""
    const reading = (async () => {
      const decoder = new TextDecoder()
      try {
        for await (const chunk of events.body!)
          streamed += decoder.decode(chunk as Uint8Array, { stream: true })
      } catch {
        // aborted
      }
    })()

    const seen: Array<string> = []
    const secrets = new Set<string>()
    const collect = async () => {
      for (const c of connections) for (const t of await tokensOf(c.id)) secrets.add(t)
    }
    await collect()
    const token = await client.csrf()
    seen.push(await (await client.fetch("/")).text())
    seen.push(await (await client.fetch("/partials/accounts")).text())
    for (const c of connections) {
      for (const action of ["call", "refresh", "call"]) {
        const response = await client.post(
          `/connections/${c.id}/${action}`,
          { _csrf: token },
          { accept: "application/json" }
        )
        expect(response.status, `${c.providerId} ${action}`).toBe(200)
        seen.push(await response.text())
      }
      // The no-script path: a flash message with the API body on the next page.
      await client.post(`/connections/${c.id}/call`, { _csrf: token })
      seen.push(await (await client.fetch("/")).text())
      await collect()
    }
    seen.push(await (await client.fetch("/partials/accounts")).text())
    await expect.poll(() => (streamed.match(/"type":"refreshed"/g) ?? []).length).toBeGreaterThanOrEqual(3)
    controller.abort()
    await reading
    seen.push(streamed)

    // Old and new tokens of all three connections: ten or more distinct values.
    expect(secrets.size).toBeGreaterThanOrEqual(10)
    const everything = seen.join("\n")
    expect(everything).toContain("walt@example.com")
    expect(everything).toContain("Bright Dental")
    for (const secret of secrets) expect(everything.includes(secret)).toBe(false)
    // Nothing shaped like a sandbox token or code either.
    expect(everything).not.toMatch(/\b(hg|sbxhl)_(at|rt|code)_/)

    // At rest: sealed by the vault (the file and its write-ahead log).
    const files = [started.demo.databasePath, `${started.demo.databasePath}-wal`]
      .map((p) => {
        try {
          return readFileSync(p).toString("latin1")
        } catch {
          return ""
        }
      })
      .join("")
    expect(files).toContain("lk1.")
    for (const secret of secrets) expect(files.includes(secret)).toBe(false)
    for (const secret of secrets) expect(logs.join("\n").includes(secret)).toBe(false)
    for (const c of connections) await client.post(`/connections/${c.id}/unlink`, { _csrf: token })
  })
})

describe("issue 12: open redirect through dot segments, and forged log lines", () => {
  it("safeLocalPath never yields a //host after resolving dot segments", async () => {
    const table = [
      "/.//evil.example",
      "/./\\evil.example",
      "/a/..//evil.example",
      "/..//evil.example",
      "/.//evil.example/path?x=1",
      "/%2e//evil.example",
      "/%2e%2e//evil.example",
      "/././/evil.example",
      "/a/b/../..//evil.example"
    ]
    for (const next of table) {
      const path = safeLocalPath(next)
      expect(path.startsWith("//") || path.startsWith("/\\"), `${next} -> ${path}`).toBe(false)
      expect(new URL(path, "http://local.invalid").origin).toBe("http://local.invalid")
      const client = new Client(url())
      const response = await client.post("/session/user", { _csrf: await client.csrf(), user: "ada", next })
      const location = response.headers.get("location")!
      expect(location.startsWith("//"), next).toBe(false)
      expect(new URL(location, url()).origin, next).toBe(url())
      Hostile.record("open redirect through dot segments", "neutralised")
    }
  })

  it("a provider's error_description cannot forge lines in the server log", async () => {
    const client = new Client(url())
    const forged = [
      "nope\n[demo] linking example succeeded for admin",
      "nope\r\n[demo] forged",
      "nope\u2028[demo] forged",
      "nope\r[demo] forged",
      "nope\u0085[demo] forged"
    ]
    for (const description of forged) {
      const start = await client.post("/link/example", { _csrf: await client.csrf() })
      const state = new URL(start.headers.get("location")!).searchParams.get("state")!
      const before = logs.length
      const query = new URLSearchParams({ state, error: "access_denied", error_description: description })
      await client.fetch(`/oauth/example/callback?${query}`)
      const written = logs.slice(before)
      expect(written.length).toBeGreaterThan(0)
      for (const line of written) {
        expect(line, JSON.stringify(line)).not.toMatch(/[\r\n\u0085\u2028\u2029]/)
      }
      expect(written.join("\n")).toContain("[demo] ")
      Hostile.record("forged log line", "neutralised")
    }
  })
})
