/**
 * The provider conformance suite from `@latchkey/core/testing`, run against the HeyGen provider on its
 * sandbox: a public PKCE client with a separate refresh URL and rotating refresh tokens.
 */
import { providerConformance } from "@latchkey/core/testing"
import { HeyGen } from "../src/index.ts"
import { startHeyGenSandbox } from "../src/sandbox.ts"

const REDIRECT = "http://127.0.0.1:9/heygen/callback"

providerConformance({
  name: "conformance: HeyGen on its sandbox",
  server: async () => {
    const sandbox = await startHeyGenSandbox({ redirectUris: [REDIRECT] })
    return {
      provider: HeyGen.provider({ clientId: sandbox.clientId, redirectUri: REDIRECT, urls: sandbox.urls }),
      approve: (url, login) => sandbox.approve(url, { account: login }),
      deny: (url) => sandbox.approve(url, { deny: true }),
      accounts: [
        { login: "jane_doe", accountId: "jane_doe", label: "jane@example.com" },
        { login: "walt_wallet", accountId: "walt_wallet", label: "walt@example.com" }
      ],
      whoAmI: "/v3/users/me",
      refreshCount: () => sandbox.countCalls({ endpoint: "refresh" }),
      close: () => sandbox.close()
    }
  }
})
