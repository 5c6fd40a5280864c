/**
 * The token server of the store conformance suite's cross-process checks: oidc-provider (a certified
 * OpenID Provider) through @latchkey/testkit-oidc, with rotating single-use refresh tokens, linked
 * through its real login and consent forms.
 */
import type { ConformanceTokenServer } from "@latchkey/core/testing"
import { consent, startOidcServer } from "@latchkey/testkit-oidc"

const REDIRECT = "http://127.0.0.1:9/callback"

export const oidcTokenServer = async (): Promise<ConformanceTokenServer> => {
  const server = await startOidcServer({ redirectUris: [REDIRECT], rotateRefreshToken: true })
  const client = server.clients.find((c) => c.client_id === "basic-client")!
  return {
    provider: {
      clientId: client.client_id,
      clientSecret: client.client_secret,
      clientAuth: "client_secret_basic",
      endpoints: server.endpoints,
      redirectUri: REDIRECT,
      scopes: ["openid", "offline_access", "email", "read"],
      authorizationParams: { prompt: "consent" }
    },
    identify: async ({ fetch }) => {
      const res = await fetch(server.endpoints.userinfo)
      if (!res.ok) throw new Error(`userinfo ${res.status}`)
      const body = (await res.json()) as { sub: string; email?: string }
      return { accountId: body.sub, label: body.email ?? body.sub }
    },
    approve: (url, login) => consent(url, { login, redirectUri: REDIRECT }),
    refreshCount: () => server.grants.refresh_token,
    refreshErrors: () => server.grants.refreshErrors,
    close: () => server.close()
  }
}
