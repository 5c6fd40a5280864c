/** Shared helpers for core tests: a real oidc-provider, a provider definition for it, linking. */
import { consent, type OidcServer, startOidcServer } from "@latchkey/testkit-oidc"
import { Effect } from "effect"
import { ConnectionStore, type LatchkeyClient, Provider, type Vault } from "../src/index.ts"
import { modifyStored } from "../src/testing/modifyStored.ts"

export const REDIRECT = "http://127.0.0.1:9/callback"

export const startServer = (options: { accessTokenTtl?: number; dpopNonce?: boolean } = {}) =>
  startOidcServer({ redirectUris: [REDIRECT], ...options })

/** A client_secret_basic provider for the test server, identified through its userinfo endpoint. */
export const exampleProvider = (server: OidcServer, overrides: Partial<Provider.ProviderDefinition> = {}) =>
  Provider.make({
    id: "example",
    name: "Example Corp",
    clientId: "basic-client",
    clientSecret: server.clients.find((c) => c.client_id === "basic-client")!.client_secret!,
    clientAuth: "client_secret_basic",
    endpoints: server.endpoints,
    redirectUri: REDIRECT,
    scopes: ["openid", "offline_access", "email", "read"],
    authorizationParams: { prompt: "consent" },
    apiBaseUrl: server.issuer,
    identify: async ({ fetch }) => {
      const res = await fetch(server.endpoints.userinfo)
      if (!res.ok) throw new Error(`userinfo ${res.status}`)
      const body = (await res.json()) as { sub: string; email?: string }
      return { accountId: body.sub, label: body.email ?? body.sub }
    },
    ...overrides
  })

export const link = async (lk: LatchkeyClient, login = "alice", ownerId = "user-1") => {
  const { url } = await lk.startAuthorization({ providerId: "example", ownerId })
  const callback = await consent(url, { login, redirectUri: REDIRECT })
  const { connection } = await lk.completeAuthorization({ callback })
  return connection
}

/** Make the stored access token expired an hour after it was issued (so the connection is due). */
export const expire = (
  store: ConnectionStore.ConnectionStoreShape,
  id: string,
  now = Date.now(),
  vault?: Vault.VaultOptions
) =>
  modifyStored(
    store,
    id,
    (c) => ({ ...c, tokens: { ...c.tokens, obtainedAt: now - 3_600_000, expiresAt: now - 1_000 } }),
    vault
  )

export const stored = (store: ConnectionStore.ConnectionStoreShape, id: string) =>
  Effect.runPromise(store.get(id)).then((r) => r!)

export const plain = (sealed: string | null) => (sealed ?? "").replace(/^plain\./, "")

/** A fetch in front of the real server that fails some requests first, as a flaky network would. */
export const faultyFetch = (
  faults: Array<"503" | "429" | "401" | "network" | "garbage">,
  match: (url: string) => boolean = (u) => u.endsWith("/token"),
  retryAfter = "1"
) => {
  const queue = [...faults]
  const sent: Array<number> = []
  const f: typeof fetch = async (input, init) => {
    const url = typeof input === "string" ? input : input instanceof URL ? input.href : input.url
    if (!match(url)) return fetch(input, init)
    sent.push(Date.now())
    const fault = queue.shift()
    if (fault === undefined) return fetch(input, init)
    if (fault === "network") throw new TypeError("fetch failed")
    if (fault === "garbage")
      return new Response("<html>oops", { status: 200, headers: { "content-type": "text/html" } })
    if (fault === "401") {
      return new Response(JSON.stringify({ error: "invalid_token" }), {
        status: 401,
        headers: { "content-type": "application/json" }
      })
    }
    if (fault === "429") {
      return new Response(JSON.stringify({ error: "slow_down" }), {
        status: 429,
        headers: { "content-type": "application/json", "retry-after": retryAfter }
      })
    }
    return new Response("upstream unavailable", { status: 503 })
  }
  return {
    fetch: f,
    sent,
    remaining: () => queue.length,
    inject: (...more: Array<"503" | "429" | "401" | "network" | "garbage">) => {
      queue.push(...more)
      sent.length = 0
    }
  }
}

export const memoryStore = () => ConnectionStore.makeMemory()

export { modifyStored }
