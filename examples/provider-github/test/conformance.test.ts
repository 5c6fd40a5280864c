/**
 * The GitHub provider passes the provider conformance suite from `@latchkey/core/testing`, against
 * the GitHub sandbox in both of GitHub's modes: user-token expiration on (GitHub Apps: 8-hour access
 * tokens, rotating 6-month refresh tokens) and off (OAuth apps: tokens that do not expire).
 */
import { providerConformance } from "@latchkey/core/testing"
import { GitHub } from "../src/index.ts"
import { startSandbox } from "../src/sandbox.ts"

const REDIRECT = "http://127.0.0.1:9/github/callback"

for (const tokenExpiration of [true, false]) {
  providerConformance({
    name: `conformance: GitHub on its sandbox, token expiration ${tokenExpiration ? "on" : "off"}`,
    server: async () => {
      const sandbox = await startSandbox({ redirectUris: [REDIRECT], tokenExpiration })
      return {
        provider: GitHub.provider({
          clientId: sandbox.clientId,
          clientSecret: sandbox.clientSecret,
          redirectUri: REDIRECT,
          webUrl: sandbox.url,
          apiUrl: sandbox.url
        }),
        approve: (url, login) => sandbox.approve(url, login),
        deny: (url) => sandbox.deny(url),
        accounts: [
          { login: "octocat", accountId: "583231", label: "octocat" },
          { login: "hubot", accountId: "480938", label: "hubot" }
        ],
        whoAmI: "/user",
        issuesRefreshTokens: tokenExpiration,
        accessTokensExpire: tokenExpiration,
        refreshCount: () => sandbox.refreshes(),
        close: () => sandbox.close()
      }
    }
  })
}
