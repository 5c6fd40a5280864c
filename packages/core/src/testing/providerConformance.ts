/**
 * The provider conformance suite. Given a provider and a server that behaves like the provider (its
 * sandbox, a real authorization server, or the provider itself), it checks what an app relies on:
 * linking (the authorize URL, the code exchange, the account's identity), refresh (one request per
 * refresh, rotation as declared, expiry), revocation, and the error mapping (a rejected refresh token
 * ends in `needs_reauth`, transient failures never do, the API's "bad token" answer is recognized,
 * wrong client credentials and bad codes are refused without storing anything, and no secret ever
 * shows in an error).
 *
 * ```ts
 * import { providerConformance } from "@latchkey/core/testing"
 *
 * providerConformance({
 *   name: "GitHub on its sandbox",
 *   server: async () => {
 *     const sandbox = await startSandbox()
 *     return {
 *       provider: GitHub.provider({ ...sandbox.credentials, baseUrl: sandbox.url }),
 *       approve: (url, login) => sandbox.approve(url, { account: login }),
 *       accounts: [{ login: "octocat" }, { login: "hubot" }],
 *       whoAmI: "/user",
 *       close: () => sandbox.close()
 *     }
 *   }
 * })
 * ```
 *
 * Every check uses its own Latchkey instance and in-memory store; all traffic goes through a fetch
 * the suite controls, which counts the refresh requests that reach the server and injects transient
 * failures in front of it (so no server needs a fault-injection feature). The checks are also
 * exported one by one (`checks`, `runCheck`) to run them outside vitest.
 */
export * from "./conformance/index.ts"
