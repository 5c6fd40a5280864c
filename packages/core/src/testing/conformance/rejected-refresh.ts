/** The `rejected-refresh` check: a refresh token the server rejects ends in needs_reauth with the provider's error, without retries. */
import assert from "node:assert/strict"
import { Effect, Redacted } from "effect"
import * as OAuth from "../../OAuth.ts"
import {
  assertNoSecrets,
  countingRefreshes,
  decoded,
  expectRefreshes,
  link,
  noRefreshTokens,
  refreshOutOfBand,
  rejection,
  revocable,
  secretsOf,
  withHarness
} from "./harness.ts"
import type { ConformanceCheck } from "./types.ts"

export const rejected: ConformanceCheck = {
  name: "rejected-refresh",
  title: "a refresh token the server rejects ends in needs_reauth with the provider's error, without retries",
  notApplicable: (s) =>
    noRefreshTokens(s) ??
    (s.rejectRefreshToken === undefined && s.provider.refreshTokenPolicy === "reusable" && !revocable(s)
      ? "a reusable refresh token cannot be made invalid without rejectRefreshToken or revocation"
      : undefined),
  run: (server) =>
    withHarness(server, async (h) => {
      const { connection } = await link(h, server.accounts[0])
      const c = await decoded(h, connection.id)
      const refreshToken = Redacted.value(c.tokens.refreshToken!)
      if (server.rejectRefreshToken) {
        await server.rejectRefreshToken(refreshToken)
      } else if (h.provider.refreshTokenPolicy === "rotating") {
        // Another client (a copy of the database, a script) spends the token first.
        const spent = await refreshOutOfBand(h, refreshToken)
        assert.ok(
          spent.ok,
          `the stored refresh token works out of band (${spent.ok ? "" : spent.failure.message})`
        )
      } else {
        const revoked = await Effect.runPromise(OAuth.revokeTokens(h.provider, h.protocol, c.tokens))
        assert.ok(revoked, "the refresh token was revoked out of band")
      }
      const counted = await countingRefreshes(h, () =>
        rejection(h.lk.refresh(connection.id), "refreshing with a rejected refresh token")
      )
      expectRefreshes(counted, 1, "a rejected refresh token is sent once, never retried")
      const error = counted.value
      assert.equal(
        error._tag,
        "ReauthorizationRequired",
        `expected ReauthorizationRequired, got ${error._tag}: ${error.message}`
      )
      assert.equal(error.reason, "invalid_grant")
      assert.ok(error.providerError, "the provider's own error code is kept")
      assertNoSecrets(error, secretsOf(h, c.tokens), "rejected refresh")
      const summary = await h.lk.connection(connection.id)
      assert.equal(summary.status, "needs_reauth")
      assert.equal(summary.lastError?.code, error.providerError)
      assert.ok(h.events.some((e) => e.type === "needs_reauth" && e.connectionId === connection.id))
      // From now on the connection asks for a new link without calling the server.
      const later = await countingRefreshes(h, () =>
        rejection(h.lk.accessToken(connection.id), "using a connection that needs reauthorization")
      )
      expectRefreshes(later, 0, "a connection that needs reauthorization")
      assert.equal(later.value._tag, "ReauthorizationRequired")
    })
}
