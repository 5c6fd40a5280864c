/**
 * The provider conformance suite from `@latchkey/core/testing`, run against the generic provider on a
 * real authorization server (oidc-provider on 127.0.0.1): once per client authentication method.
 */
import { providerConformance } from "@latchkey/core/testing"
import { consent, startOidcServer } from "@latchkey/testkit-oidc"
import { Generic } from "../src/index.ts"

const REDIRECT = "http://127.0.0.1:9/callback"

for (const [clientId, auth] of [
  ["basic-client", "client_secret_basic"],
  ["post-client", "client_secret_post"],
  ["public-client", "none"]
] as const) {
  providerConformance({
    name: `conformance: the generic provider (${auth}) on oidc-provider`,
    server: async () => {
      const server = await startOidcServer({ redirectUris: [REDIRECT] })
      const secret = server.clients.find((c) => c.client_id === clientId)?.client_secret
      return {
        provider: Generic.provider({
          id: "example",
          name: "Example Corp",
          clientId,
          ...(secret !== undefined ? { clientSecret: secret } : {}),
          auth,
          redirectUri: REDIRECT,
          endpoints: server.endpoints,
          scopes: ["openid", "offline_access", "email", "read", "write"],
          authorizationParams: { prompt: "consent" }
        }),
        approve: (url, login) => consent(url, { login, redirectUri: REDIRECT }),
        deny: (url) => consent(url, { login: "alice", redirectUri: REDIRECT, deny: true }),
        accounts: [
          { login: "alice", accountId: "alice", label: "alice@example.com" },
          { login: "carol", accountId: "carol", label: "carol@example.com" }
        ],
        whoAmI: server.endpoints.userinfo,
        refreshCount: () => server.grants.refresh_token,
        close: () => server.close()
      }
    }
  })
}
