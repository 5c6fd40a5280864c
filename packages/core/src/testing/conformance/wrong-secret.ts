/** The `wrong-secret` check: wrong client credentials are refused as invalid_client, nothing stored, no secret in the error. */
import assert from "node:assert/strict"
import { randomBytes } from "node:crypto"
import * as Provider from "../../Provider.ts"
import { assertNoSecrets, confidential, OWNER, rejection, secretsOf, withHarness } from "./harness.ts"
import type { ConformanceCheck } from "./types.ts"

export const wrongSecret: ConformanceCheck = {
  name: "wrong-secret",
  title: "wrong client credentials are refused as invalid_client, nothing stored, no secret in the error",
  notApplicable: (s) => (confidential(s) ? undefined : "a public client has no secret"),
  run: (server) => {
    const wrong = `wrong-${randomBytes(16).toString("hex")}`
    const provider = Provider.make({ ...server.provider, clientSecret: wrong })
    return withHarness({ ...server, provider }, async (h) => {
      const { url } = await h.lk.startAuthorization({ providerId: provider.id, ownerId: OWNER })
      const callback = await server.approve(url, server.accounts[0].login)
      const error = await rejection(
        h.lk.completeAuthorization({ callback }),
        "exchanging with a wrong secret"
      )
      assert.equal(error._tag, "AuthorizationError")
      assert.equal(
        error.reason,
        "invalid_client",
        `wrong client credentials are invalid_client, not "${error.reason}"`
      )
      assertNoSecrets(error, [wrong, ...secretsOf({ ...h, provider: server.provider })], "wrong secret")
      assert.deepEqual(await h.lk.connections(OWNER), [])
    })
  }
}
