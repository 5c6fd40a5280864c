/**
 * The provider conformance suite from `@latchkey/core/testing`, run against the HighLevel provider on
 * its sandbox: a confidential client_secret_post client without PKCE, `user_type` on every token
 * request, single-use refresh tokens, no revocation endpoint, and a location as the account.
 */
import { providerConformance } from "@latchkey/core/testing"
import { startSandbox } from "../src/sandbox.ts"
import { providerFor } from "./support.ts"

providerConformance({
  name: "conformance: HighLevel on its sandbox",
  server: async () => {
    const sandbox = await startSandbox()
    return {
      provider: providerFor(sandbox),
      approve: (url, login) => sandbox.approve(url, login),
      deny: (url) => sandbox.deny(url),
      accounts: [
        { login: "sbxLocation001", accountId: "sbxLocation001", label: "Acme Plumbing" },
        { login: "sbxLocation002", accountId: "sbxLocation002", label: "Bright Dental" }
      ],
      // The who-am-I of a location token is its location (the first account's).
      whoAmI: "/locations/sbxLocation001",
      refreshCount: () => sandbox.countCalls({ endpoint: "token", grantType: "refresh_token" }),
      close: () => sandbox.close()
    }
  }
})
