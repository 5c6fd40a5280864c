/** The `garbage` check: an unreadable answer is a retryable failure that keeps the refresh token. */
import assert from "node:assert/strict"
import { Redacted } from "effect"
import {
  countingRefreshes,
  decoded,
  expectRefreshes,
  type Fault,
  link,
  MAX_ATTEMPTS,
  noRefreshTokens,
  rejection,
  withHarness
} from "./harness.ts"
import type { ConformanceCheck } from "./types.ts"

export const garbage: ConformanceCheck = {
  name: "garbage",
  title: "an unreadable answer is a retryable failure that keeps the refresh token",
  notApplicable: noRefreshTokens,
  run: (server) =>
    withHarness(server, async (h) => {
      const { connection } = await link(h, server.accounts[0])
      const before = await decoded(h, connection.id)
      h.inject(...Array<Fault>(MAX_ATTEMPTS).fill("garbage"))
      const counted = await countingRefreshes(h, () =>
        rejection(h.lk.refresh(connection.id), "refreshing against garbage answers")
      )
      expectRefreshes(counted, 0, "answers made up in front of the server")
      assert.equal(counted.value._tag, "RefreshError")
      assert.equal(counted.value.isRetryable, true)
      const after = await decoded(h, connection.id)
      assert.equal(after.status, "active")
      assert.equal(
        Redacted.value(after.tokens.refreshToken!),
        Redacted.value(before.tokens.refreshToken!),
        "the refresh token is kept"
      )
      const recovered = await countingRefreshes(h, () => h.lk.refresh(connection.id))
      expectRefreshes(recovered, 1, "the refresh once the server answers again")
      assert.equal(recovered.value.status, "active")
    })
}
