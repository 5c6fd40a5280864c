/** The `refresh` check: refreshes with one request; new tokens work; the old refresh token behaves as the policy says. */
import assert from "node:assert/strict"
import { Redacted } from "effect"
import {
  countingRefreshes,
  decoded,
  expectRefreshes,
  link,
  noRefreshTokens,
  probe,
  refreshOutOfBand,
  withHarness
} from "./harness.ts"
import type { ConformanceCheck } from "./types.ts"

export const refresh: ConformanceCheck = {
  name: "refresh",
  title: "refreshes with one request; new tokens work; the old refresh token behaves as the policy says",
  notApplicable: noRefreshTokens,
  run: (server) =>
    withHarness(server, async (h) => {
      const { connection } = await link(h, server.accounts[0])
      const before = await decoded(h, connection.id)
      const counted = await countingRefreshes(h, () => h.lk.refresh(connection.id))
      expectRefreshes(counted, 1, "one refresh")
      const summary = counted.value
      assert.equal(summary.status, "active")
      assert.equal(summary.version, before.version + 2, "the journal, then the new tokens in one write")
      assert.ok(h.events.some((e) => e.type === "refreshed" && e.connectionId === connection.id))
      const after = await decoded(h, connection.id)
      const oldAccess = Redacted.value(before.tokens.accessToken)
      const newAccess = Redacted.value(after.tokens.accessToken)
      assert.notEqual(newAccess, oldAccess, "the refresh returns a new access token")
      const me = await probe(h, newAccess, after.tokens.tokenType)
      assert.ok(
        me.status >= 200 && me.status < 300,
        `the refreshed access token works (answered ${me.status})`
      )
      const oldRefresh = Redacted.value(before.tokens.refreshToken!)
      const newRefresh = after.tokens.refreshToken ? Redacted.value(after.tokens.refreshToken) : undefined
      if (h.provider.refreshTokenPolicy === "rotating") {
        assert.ok(
          newRefresh !== undefined && newRefresh !== oldRefresh,
          "a rotating provider returns a new refresh token"
        )
        const replay = await countingRefreshes(h, () => refreshOutOfBand(h, oldRefresh))
        expectRefreshes(replay, 1, "replaying the old refresh token")
        assert.equal(
          replay.value.ok,
          false,
          "the server refuses a spent refresh token (the provider is declared rotating)"
        )
        if (!replay.value.ok) {
          assert.equal(
            replay.value.failure.kind,
            "invalid_grant",
            `a spent refresh token is invalid_grant, not ${replay.value.failure.kind} (${replay.value.failure.message})`
          )
        }
      } else {
        assert.equal(newRefresh, oldRefresh, "a reusable provider keeps the refresh token")
        const again = await countingRefreshes(h, () => h.lk.refresh(connection.id))
        expectRefreshes(again, 1, "a second refresh with the same refresh token")
        assert.equal(again.value.status, "active", "the server accepts the reusable refresh token again")
      }
    })
}
