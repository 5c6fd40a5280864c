/**
 * Every framework example, served over real HTTP against the HeyGen and HighLevel sandboxes: link
 * HeyGen through the start route and the callback (back to the return path), a replayed callback
 * (the friendly page), a HighLevel marketplace install on HighLevel's redirect URI (each provider has
 * its own: neither sends RFC 9207 `iss`, so one shared URI is refused as a mix-up risk), a signed UNINSTALL
 * webhook (and a forged one), and unlink (someone else's, cross-site, then the owner's).
 *
 * Next.js: the example's route files (`app/oauth/[...latchkey]/route.ts`) are served by a small Node
 * server that calls their exported GET / POST with a Web Request, as Next's runtime does; a full
 * `next build` is too heavy for this suite.
 */
import { createServer } from "node:http"
import type { AddressInfo } from "node:net"
import { type HeyGenSandbox, startHeyGenSandbox } from "@latchkey/provider-heygen/sandbox"
import { type HighLevelSandbox, startSandbox } from "@latchkey/provider-highlevel/sandbox"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { toRequest, writeResponse } from "../src/node.ts"

interface Running {
  readonly url: string
  close(): Promise<void>
}

const freePort = async () => {
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const port = (server.address() as AddressInfo).port
  await new Promise((resolve) => server.close(resolve))
  return port
}

/** Next's runtime, reduced to what a route handler sees: the module's GET/POST called with a Request. */
const startNext = async (port: number): Promise<Running> => {
  const oauth = await import("../examples/next/app/oauth/[...latchkey]/route.ts")
  const connections = await import("../examples/next/app/connections/route.ts")
  const { latchkey } = await import("../examples/next/lib/latchkey.ts")
  const server = createServer(async (req, res) => {
    const request = await toRequest(req)
    const path = new URL(request.url).pathname
    const route = path.startsWith("/oauth/") ? oauth : path === "/connections" ? connections : undefined
    const method = req.method as "GET" | "POST"
    const handler = route && (route as Record<string, unknown>)[method]
    if (typeof handler !== "function") return void res.writeHead(route ? 405 : 404).end()
    await writeResponse(res, await (handler as (r: Request) => Promise<Response>)(request))
  })
  await new Promise<void>((resolve) => server.listen(port, "127.0.0.1", resolve))
  return {
    url: `http://127.0.0.1:${port}`,
    close: async () => {
      server.closeAllConnections()
      await new Promise((resolve) => server.close(resolve))
      await latchkey.close()
    }
  }
}

const frameworks: ReadonlyArray<[string, (port: number) => Promise<Running>]> = [
  ["node:http", async (port) => (await import("../examples/node-http.ts")).start(port)],
  ["Express 5", async (port) => (await import("../examples/express.ts")).start(port)],
  ["Hono", async (port) => (await import("../examples/hono.ts")).start(port)],
  ["Fastify", async (port) => (await import("../examples/fastify.ts")).start(port)],
  ["Next.js App Router (route handlers)", startNext]
]

describe.each(frameworks)("%s example", (_name, start) => {
  let app: Running
  let heygen: HeyGenSandbox
  let highlevel: HighLevelSandbox
  beforeAll(async () => {
    const port = await freePort()
    const appUrl = `http://127.0.0.1:${port}`
    // Each sandbox accepts exactly the redirect URI registered with it.
    heygen = await startHeyGenSandbox({ redirectUris: [`${appUrl}/oauth/heygen/callback`] })
    highlevel = await startSandbox({ redirectUris: [`${appUrl}/oauth/highlevel/callback`] })
    Object.assign(process.env, {
      APP_URL: appUrl,
      HEYGEN_URL: heygen.url,
      HEYGEN_CLIENT_ID: heygen.clientId,
      HIGHLEVEL_URL: highlevel.url,
      HIGHLEVEL_CLIENT_ID: highlevel.clientId,
      HIGHLEVEL_CLIENT_SECRET: highlevel.clientSecret,
      HIGHLEVEL_WEBHOOK_ED25519_KEY: highlevel.webhookKeys.ed25519PublicKey
    })
    app = await start(port)
  })
  afterAll(async () => {
    await app?.close()
    await Promise.all([heygen?.close(), highlevel?.close()])
  })

  const as = (user: string, init: RequestInit = {}): RequestInit => ({
    redirect: "manual",
    ...init,
    headers: { cookie: `session=${user}`, ...(init.headers as Record<string, string> | undefined) }
  })
  const mine = async (user = "user-1") =>
    (await (await fetch(`${app.url}/connections`, as(user))).json()) as Array<{
      id: string
      providerId: string
      accountId: string
      status: string
    }>

  it("links, refuses a replay kindly, installs from the marketplace, takes webhooks, unlinks", async () => {
    // Start: 303 to HeyGen's authorize page.
    const started = await fetch(`${app.url}/oauth/start/heygen?returnTo=/settings%3Ftab%3Dapps`, as("user-1"))
    expect(started.status).toBe(303)
    const authorize = started.headers.get("location")!
    expect(authorize.startsWith(`${heygen.url}/`)).toBe(true)

    // The user approves; the callback completes and returns to the return path.
    const callback = await heygen.approve(authorize, { account: "jane_doe" })
    expect(callback.startsWith(`${app.url}/oauth/heygen/callback?`)).toBe(true)
    const done = await fetch(callback, as("user-1"))
    expect(done.status).toBe(303)
    expect(done.headers.get("location")).toMatch(/^\/settings\?tab=apps&latchkey=linked&connection=conn_/)

    // The same callback again (reload, back button): a friendly page, nothing leaked.
    const replay = await fetch(callback, as("user-1"))
    expect(replay.status).toBe(400)
    expect(replay.headers.get("content-type")).toContain("text/html")
    const page = await replay.text()
    expect(page).toContain("This link was already used")
    expect(page).toContain("reused_state")
    expect(page).not.toMatch(/sbx|Error:|\bat .*\.ts/)

    // A HighLevel marketplace install: code without state on HighLevel's own redirect URI.
    const install = await highlevel.install({ locationId: "sbxLocation002" })
    expect(install.startsWith(`${app.url}/oauth/highlevel/callback?`)).toBe(true)
    expect(new URL(install).searchParams.has("state")).toBe(false)
    const installed = await fetch(install, as("user-1"))
    expect(installed.status).toBe(303)
    expect(installed.headers.get("location")).toMatch(/^\/connections\?latchkey=linked&connection=conn_/)
    const linked = await mine()
    expect(linked.map((c) => [c.providerId, c.accountId, c.status]).sort()).toEqual([
      ["heygen", "jane_doe", "active"],
      ["highlevel", "sbxLocation002", "active"]
    ])
    const location = linked.find((c) => c.providerId === "highlevel")!
    const jane = linked.find((c) => c.providerId === "heygen")!

    // Webhooks: a forged UNINSTALL is refused and changes nothing; the signed one revokes.
    const webhookUrl = `${app.url}/oauth/webhooks/highlevel`
    const forged = await highlevel.sendWebhook(
      webhookUrl,
      "UNINSTALL",
      { locationId: "sbxLocation002" },
      {
        signing: "invalid"
      }
    )
    expect(forged.status).toBe(401)
    expect(JSON.parse(forged.body)).toEqual({ error: "bad_signature" })
    expect((await mine()).find((c) => c.id === location.id)?.status).toBe("active")
    const delivery = await highlevel.uninstall({ locationId: "sbxLocation002" }, { webhookUrl })
    expect(delivery?.status).toBe(200)
    expect((await mine()).find((c) => c.id === location.id)?.status).toBe("revoked")

    // Unlink: another user's connection is "not found"; a cross-site post is refused; the owner's works.
    const unlinkUrl = `${app.url}/oauth/unlink/${jane.id}`
    expect((await fetch(unlinkUrl, as("user-2", { method: "POST" }))).status).toBe(404)
    const crossSite = await fetch(
      unlinkUrl,
      as("user-1", { method: "POST", headers: { origin: "https://evil.example" } })
    )
    expect(crossSite.status).toBe(403)
    expect((await mine()).some((c) => c.id === jane.id)).toBe(true)
    const unlinked = await fetch(
      unlinkUrl,
      as("user-1", {
        method: "POST",
        headers: { origin: app.url, "content-type": "application/x-www-form-urlencoded" },
        body: "returnTo=/settings"
      })
    )
    expect(unlinked.status).toBe(303)
    expect(unlinked.headers.get("location")).toBe(`/settings?latchkey=unlinked&connection=${jane.id}`)
    expect((await mine()).some((c) => c.id === jane.id)).toBe(false)
  })
})
