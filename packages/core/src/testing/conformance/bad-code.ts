/** The `bad-code` check: a code the server does not know is refused for good (not retryable), nothing stored. */
import assert from "node:assert/strict"
import { randomBytes } from "node:crypto"
import { assertNoSecrets, OWNER, rejection, secretsOf, withHarness } from "./harness.ts"
import type { ConformanceCheck } from "./types.ts"

export const badCode: ConformanceCheck = {
  name: "bad-code",
  title: "a code the server does not know is refused for good (not retryable), nothing stored",
  notApplicable: () => undefined,
  run: (server) =>
    withHarness(server, async (h) => {
      const { url } = await h.lk.startAuthorization({ providerId: h.provider.id, ownerId: OWNER })
      const callback = new URL(await server.approve(url, server.accounts[0].login))
      const code = callback.searchParams.get("code")
      assert.ok(code, "the server redirects with a code")
      callback.searchParams.set("code", `conformance-${randomBytes(12).toString("hex")}`)
      const error = await rejection(
        h.lk.completeAuthorization({ callback: callback.href }),
        "exchanging an unknown code"
      )
      assert.equal(error._tag, "AuthorizationError")
      assert.ok(
        ["invalid_grant", "invalid_client", "exchange_failed"].includes(error.reason),
        `an unknown code is a rejection, not "${error.reason}" (a retryable reason means the server's error answer was not read as one)`
      )
      assert.equal(error.isRetryable, false)
      assert.ok(error.providerError, "the provider's own error code is kept")
      assertNoSecrets(error, [...secretsOf(h), code], "bad code")
      assert.deepEqual(await h.lk.connections(OWNER), [])
    })
}
