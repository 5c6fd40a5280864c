/** The `api-401` check: the API's answer to a bad token is recognized: refresh once and retry, or ask for a new link. */
import assert from "node:assert/strict"
import { randomBytes } from "node:crypto"
import { Redacted } from "effect"
import {
  countingRefreshes,
  decoded,
  expectRefreshes,
  link,
  patchTokens,
  probe,
  refreshTokens,
  rejection,
  withHarness
} from "./harness.ts"
import type { ConformanceCheck } from "./types.ts"

export const apiUnauthorized: ConformanceCheck = {
  name: "api-401",
  title: "the API's answer to a bad token is recognized: refresh once and retry, or ask for a new link",
  notApplicable: () => undefined,
  run: (server) =>
    withHarness(server, async (h) => {
      // The provider classifies the server's real answer to a made-up token as token_invalid.
      const madeUp = await probe(h, `conformance-${randomBytes(16).toString("hex")}`)
      assert.equal(
        madeUp.verdict,
        "token_invalid",
        `the who-am-I endpoint answered ${madeUp.status} to a made-up token; the provider must classify it token_invalid`
      )
      const { connection } = await link(h, server.accounts[0])
      const bogus = `conformance-${randomBytes(16).toString("hex")}`
      await patchTokens(h, connection.id, () => ({ accessToken: Redacted.make(bogus) }))
      if (refreshTokens(server)) {
        const counted = await countingRefreshes(h, () => h.lk.fetch(connection.id, server.whoAmI))
        expectRefreshes(counted, 1, "one refresh after the API refused the token")
        await counted.value.body?.cancel()
        assert.ok(
          counted.value.ok,
          `the request is retried with the refreshed token (answered ${counted.value.status})`
        )
        assert.notEqual(Redacted.value((await decoded(h, connection.id)).tokens.accessToken), bogus)
      } else {
        const error = await rejection(
          h.lk.fetch(connection.id, server.whoAmI),
          "an API call with a refused token"
        )
        assert.equal(error._tag, "ReauthorizationRequired")
        assert.equal(error.reason, "no_refresh_token")
        assert.equal((await h.lk.connection(connection.id)).status, "needs_reauth")
      }
    })
}
