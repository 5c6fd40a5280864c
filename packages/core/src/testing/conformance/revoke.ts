/** The `revoke` check: unlink revokes at the provider where it can, and the server then refuses the tokens. */
import assert from "node:assert/strict"
import { Redacted } from "effect"
import {
  countingRefreshes,
  decoded,
  link,
  OWNER,
  probe,
  refreshOutOfBand,
  revocable,
  withHarness
} from "./harness.ts"
import type { ConformanceCheck } from "./types.ts"

export const revoke: ConformanceCheck = {
  name: "revoke",
  title: "unlink revokes at the provider where it can, and the server then refuses the tokens",
  notApplicable: () => undefined,
  run: (server) =>
    withHarness(server, async (h) => {
      const { connection } = await link(h, server.accounts[0])
      const c = await decoded(h, connection.id)
      const result = await h.lk.unlink(connection.id)
      assert.equal(
        result.revokedAtProvider,
        revocable(server),
        revocable(server) ? "the provider revokes at the server" : "the provider has no revocation"
      )
      assert.deepEqual(await h.lk.connections(OWNER), [])
      assert.ok(h.events.some((e) => e.type === "unlinked" && e.connectionId === connection.id))
      if (!revocable(server)) return
      if (server.revocationEndsAccessTokens ?? true) {
        const me = await probe(h, Redacted.value(c.tokens.accessToken), c.tokens.tokenType)
        assert.equal(
          me.verdict,
          "token_invalid",
          `the revoked access token is refused (answered ${me.status})`
        )
      }
      if (c.tokens.refreshToken) {
        const counted = await countingRefreshes(h, () =>
          refreshOutOfBand(h, Redacted.value(c.tokens.refreshToken!))
        )
        assert.equal(counted.value.ok, false, "the server refuses the revoked refresh token")
        if (!counted.value.ok) assert.equal(counted.value.failure.kind, "invalid_grant")
      }
    })
}
