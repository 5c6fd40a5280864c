/**
 * The handlers called with Web Requests against the HeyGen sandbox: return paths (no open redirect),
 * each failure as a page, as JSON and as a redirect to the app's error page, and nothing leaked.
 */
import {
  ConnectionStore,
  createLatchkey,
  InstanceClosed,
  type LatchkeyClient,
  StoreError
} from "@latchkey/core"
import { HeyGen } from "@latchkey/provider-heygen"
import { type HeyGenSandbox, startHeyGenSandbox } from "@latchkey/provider-heygen/sandbox"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { classify } from "../src/handlers.ts"
import { type Handlers, handlers, safeReturnPath } from "../src/index.ts"

const APP = "http://127.0.0.1:4999"
const redirectUri = `${APP}/oauth/callback`

let sandbox: HeyGenSandbox
const instances: Array<LatchkeyClient> = []
beforeAll(async () => {
  sandbox = await startHeyGenSandbox({ redirectUris: [redirectUri] })
})
afterAll(async () => {
  await Promise.all(instances.map((l) => l.close()))
  await sandbox.close()
})

const setup = (options: { pendingTtlMs?: number; errorPath?: string } = {}) => {
  const latchkey = createLatchkey({
    providers: [HeyGen.provider({ clientId: sandbox.clientId, redirectUri, urls: sandbox.urls })],
    store: ConnectionStore.makeMemory(),
    ...(options.pendingTtlMs !== undefined ? { config: { pendingTtlMs: options.pendingTtlMs } } : {})
  })
  instances.push(latchkey)
  const errors: Array<unknown> = []
  const auth = handlers({
    latchkey,
    owner: (request) => request.headers.get("x-user") ?? undefined,
    ...(options.errorPath !== undefined ? { errorPath: options.errorPath } : {}),
    onError: (e) => errors.push(e)
  })
  return { latchkey, auth, errors }
}

const get = (auth: Handlers, path: string, user?: string, headers: Record<string, string> = {}) =>
  auth.fetch(
    new Request(new URL(path, APP), { headers: { ...(user ? { "x-user": user } : {}), ...headers } })
  )

/** Start as `user`, approve at the sandbox, return the callback URL (path and query). */
const approved = async (auth: Handlers, user: string, returnTo?: string, deny = false) => {
  const started = await get(auth, auth.paths.start("heygen", returnTo), user)
  expect(started.status).toBe(303)
  const callback = await sandbox.approve(started.headers.get("location")!, { account: "jane_doe", deny })
  return new URL(callback).pathname + new URL(callback).search
}

describe("safeReturnPath", () => {
  it.each([
    ["/settings", "/settings"],
    ["/settings?tab=apps#x", "/settings?tab=apps#x"],
    ["/a/../b", "/b"],
    ["/%2F%2Fevil.example", "/%2F%2Fevil.example"]
  ])("keeps %s as %s", (input, output) => {
    expect(safeReturnPath(input)).toBe(output)
  })
  it.each([
    "//evil.example",
    "/.//evil.example",
    "/./..//evil.example",
    "/\\evil.example",
    "/\\/evil.example",
    "\\\\evil.example",
    "https://evil.example/",
    "javascript:alert(1)",
    "/\tevil",
    " /settings",
    "settings",
    ""
  ])("refuses %j", (input) => {
    expect(safeReturnPath(input)).toBeUndefined()
  })
})

describe("callback", () => {
  it("returns to a safe return path, and to the default for an unsafe one", async () => {
    const { auth } = setup()
    const ok = await get(auth, await approved(auth, "u1", "/settings?tab=apps"), "u1")
    expect(ok.headers.get("location")).toMatch(/^\/settings\?tab=apps&latchkey=linked&connection=conn_/)
    for (const evil of ["/.//evil.example", "/\\evil.example", "//evil.example", "https://evil.example"]) {
      const res = await get(auth, await approved(auth, "u1", evil), "u1")
      expect(res.status).toBe(303)
      expect(res.headers.get("location")).toMatch(/^\/\?latchkey=linked&connection=conn_/)
    }
  })

  it("an expired state: a retry page with a Start again link", async () => {
    const { auth } = setup({ pendingTtlMs: 0 })
    const res = await get(auth, await approved(auth, "u1"), "u1")
    expect(res.status).toBe(400)
    const page = await res.text()
    expect(page).toContain("This link has expired")
    expect(page).toContain(`<a href="/oauth/start/heygen">Start again</a>`)
    expect(page).toContain("expired_state")
  })

  it("a reused state as JSON, and as a redirect to the app's error page", async () => {
    const { auth } = setup()
    const callback = await approved(auth, "u1")
    expect((await get(auth, callback, "u1")).status).toBe(303)
    const asJson = await get(auth, callback, "u1", { accept: "application/json" })
    expect(asJson.status).toBe(400)
    expect(await asJson.json()).toMatchObject({ error: "reused_state" })

    const { auth: withPage } = setup({ errorPath: "/settings?panel=connections" })
    const again = await approved(withPage, "u1")
    await get(withPage, again, "u1")
    const redirected = await get(withPage, again, "u1")
    expect(redirected.status).toBe(303)
    expect(redirected.headers.get("location")).toBe("/settings?panel=connections&latchkey_error=reused_state")
  })

  it("another signed-in user, nobody signed in, a denial: refused and nothing stored", async () => {
    const { auth, latchkey } = setup()
    const foreign = await get(auth, await approved(auth, "u1"), "u2")
    expect(foreign.status).toBe(403)
    expect(await foreign.text()).toContain("foreign_state")
    expect((await get(auth, await approved(auth, "u1"), undefined)).status).toBe(401)
    const denied = await get(auth, await approved(auth, "u1", undefined, true), "u1", {
      accept: "application/json"
    })
    expect(denied.status).toBe(400)
    const body = (await denied.json()) as Record<string, unknown>
    expect(body).toMatchObject({ error: "access_denied", provider: "heygen" })
    // The provider's own error_description is not echoed.
    expect(JSON.stringify(body)).not.toMatch(/denied the request|error_description/)
    expect(await latchkey.connections("u1")).toEqual([])
    expect(await latchkey.connections("u2")).toEqual([])
  })

  it("an unexpected failure is a plain 500 page; the error goes to onError only", async () => {
    const { auth, errors } = setup()
    const broken = handlers({
      latchkey: {
        ...(auth as unknown as object),
        providers: [],
        completeAuthorization: async () => {
          throw new Error("db password is hunter2 at Object.<anonymous> (/srv/app.ts:1:1)")
        }
      } as unknown as LatchkeyClient,
      owner: () => "u1",
      onError: (e) => errors.push(e)
    })
    const res = await broken.callback(new Request(`${APP}/oauth/callback?state=x&code=y`))
    expect(res.status).toBe(500)
    const page = await res.text()
    expect(page).toContain("Something went wrong")
    expect(page).not.toContain("hunter2")
    expect(page).not.toContain("app.ts")
    expect(errors).toHaveLength(1)
  })
})

describe("start and routing", () => {
  it("an unknown provider is 404, a signed-out user 401, other methods 405, other paths 404", async () => {
    const { auth } = setup()
    expect((await get(auth, "/oauth/start/nope", "u1")).status).toBe(404)
    expect((await get(auth, "/oauth/start/heygen")).status).toBe(401)
    expect((await auth.fetch(new Request(`${APP}/oauth/unlink/x`))).status).toBe(405)
    expect((await auth.fetch(new Request(`${APP}/oauth/callback`, { method: "POST" }))).status).toBe(405)
    expect((await get(auth, "/oauth/elsewhere", "u1")).status).toBe(404)
    expect((await get(auth, "/other", "u1")).status).toBe(404)
  })

  it("a cross-site unlink is refused by Sec-Fetch-Site as well as Origin", async () => {
    const { auth, latchkey } = setup()
    const res = await get(auth, await approved(auth, "u1"), "u1")
    const id = new URL(res.headers.get("location")!, APP).searchParams.get("connection")!
    const post = (headers: Record<string, string>) =>
      auth.fetch(
        new Request(`${APP}${auth.paths.unlink(id)}`, {
          method: "POST",
          headers: { "x-user": "u1", ...headers }
        })
      )
    expect((await post({ "sec-fetch-site": "cross-site" })).status).toBe(403)
    expect((await post({ origin: "http://127.0.0.1:5000" })).status).toBe(403)
    expect(await latchkey.connections("u1")).toHaveLength(1)
    const ok = await post({ "sec-fetch-site": "same-origin", origin: APP, accept: "application/json" })
    expect(ok.status).toBe(200)
    expect(await ok.json()).toMatchObject({ unlinked: id })
    expect(await latchkey.connections("u1")).toEqual([])
  })
})

describe("a store failure as a page", () => {
  it("says try again later only when the StoreError is retryable", () => {
    const codes = Object.fromEntries(
      (["conflict", "unavailable", "timeout", "corrupt", "invalid_options"] as const).map((reason) => [
        reason,
        classify(new StoreError({ reason, message: "m" })).code
      ])
    )
    expect(codes).toEqual({
      conflict: "unavailable",
      unavailable: "unavailable",
      timeout: "unavailable",
      corrupt: "internal",
      invalid_options: "internal"
    })
  })

  it("a closed instance (a restart under way) is a try-again-later page, not an internal error", () => {
    expect(classify(new InstanceClosed({ message: "m" })).code).toBe("unavailable")
  })
})
