/**
 * The test kit's oidc-provider is configured so that it has nothing to warn about: starting it,
 * linking, refreshing, denying, introspecting and revoking print no oidc-provider WARNING or NOTICE.
 */
import { createLatchkey } from "@latchkey/core"
import { consent, startOidcServer } from "@latchkey/testkit-oidc"
import { afterEach, describe, expect, it, vi } from "vitest"
import { Generic } from "../src/index.ts"

afterEach(() => {
  vi.restoreAllMocks()
})

describe("the test kit's oidc-provider", () => {
  it("prints nothing while it serves a whole lifecycle", async () => {
    const printed: Array<string> = []
    for (const method of ["log", "info", "warn", "error", "debug"] as const) {
      vi.spyOn(console, method).mockImplementation((...args: Array<unknown>) => {
        printed.push(args.map(String).join(" "))
      })
    }
    const redirectUri = "http://127.0.0.1:9/callback"
    const server = await startOidcServer({ redirectUris: [redirectUri] })
    const lk = createLatchkey({
      providers: [
        Generic.provider({
          id: "example",
          clientId: "basic-client",
          clientSecret: server.clients.find((c) => c.client_id === "basic-client")!.client_secret!,
          redirectUri,
          endpoints: server.endpoints,
          scopes: ["openid", "offline_access", "email"],
          authorizationParams: { prompt: "consent" }
        })
      ]
    })
    const { url } = await lk.startAuthorization({ providerId: "example", ownerId: "u1" })
    const { connection } = await lk.completeAuthorization({
      callback: await consent(url, { login: "alice", redirectUri })
    })
    await lk.refresh(connection.id)
    const introspection = await fetch(server.endpoints.introspection, {
      method: "POST",
      headers: {
        authorization: `Basic ${Buffer.from("basic-client:basic-secret-0123456789").toString("base64")}`,
        "content-type": "application/x-www-form-urlencoded"
      },
      body: new URLSearchParams({ token: await lk.accessToken(connection.id) })
    })
    expect(((await introspection.json()) as { active: boolean }).active).toBe(true)
    const denied = await lk.startAuthorization({ providerId: "example", ownerId: "u1" })
    const refused = await consent(denied.url, { login: "alice", redirectUri, deny: true })
    expect(new URL(refused).searchParams.get("error")).toBe("access_denied")
    expect((await lk.unlink(connection.id)).revokedAtProvider).toBe(true)
    await lk.close()
    await server.close()
    expect(printed.filter((line) => line.includes("oidc-provider"))).toEqual([])
  })
})
