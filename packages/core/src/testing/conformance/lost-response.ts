/** The `lost-response` check: a refresh whose answer is lost in transit: resent once, and the outcome matches the declared policy. */
import assert from "node:assert/strict"
import {
  countingRefreshes,
  expectRefreshes,
  link,
  noRefreshTokens,
  rejection,
  withHarness
} from "./harness.ts"
import type { ConformanceCheck } from "./types.ts"

export const lostResponse: ConformanceCheck = {
  name: "lost-response",
  title:
    "a refresh whose answer is lost in transit: resent once, and the outcome matches the declared policy",
  notApplicable: noRefreshTokens,
  run: (server) =>
    withHarness(server, async (h) => {
      const { connection } = await link(h, server.accounts[0])
      h.inject("lose_response")
      if (h.provider.refreshTokenPolicy === "rotating") {
        // The server rotated the token but the answer never arrived: the one resend presents a spent
        // token, the server refuses it, and the user is asked to link again (not silently broken),
        // with a reason and a message that say what happened.
        const counted = await countingRefreshes(h, () =>
          rejection(h.lk.refresh(connection.id), "refreshing after a lost answer")
        )
        expectRefreshes(counted, 2, "the lost request and one resend")
        assert.equal(counted.value._tag, "ReauthorizationRequired")
        assert.equal(counted.value.reason, "refresh_interrupted")
        assert.match(String(counted.value.message), /answer was lost/, "the message says the answer was lost")
        assert.doesNotMatch(String(counted.value.message), /already used|already been used/i)
        assert.equal((await h.lk.connection(connection.id)).status, "needs_reauth")
      } else {
        const counted = await countingRefreshes(h, () => h.lk.refresh(connection.id))
        expectRefreshes(counted, 2, "the lost request and one retry")
        assert.equal(counted.value.status, "active", "a reusable refresh token survives a lost answer")
      }
    })
}
