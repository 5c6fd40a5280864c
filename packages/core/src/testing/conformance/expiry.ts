/** The `expiry` check: an expired access token is refreshed once for many concurrent callers. */
import assert from "node:assert/strict"
import {
  countingRefreshes,
  expectRefreshes,
  link,
  noRefreshTokens,
  patchTokens,
  probe,
  withHarness
} from "./harness.ts"
import type { ConformanceCheck } from "./types.ts"

export const expiry: ConformanceCheck = {
  name: "expiry",
  title: "an expired access token is refreshed once for many concurrent callers",
  notApplicable: noRefreshTokens,
  run: (server) =>
    withHarness(server, async (h) => {
      const { connection } = await link(h, server.accounts[0])
      const now = Date.now()
      await patchTokens(h, connection.id, () => ({ obtainedAt: now - 7_200_000, expiresAt: now - 1_000 }))
      const counted = await countingRefreshes(h, () =>
        Promise.all(Array.from({ length: 8 }, () => h.lk.accessToken(connection.id)))
      )
      expectRefreshes(counted, 1, "eight concurrent callers of an expired token")
      assert.equal(new Set(counted.value).size, 1, "every caller gets the same new token")
      const me = await probe(h, counted.value[0]!)
      assert.ok(me.status >= 200 && me.status < 300, `the new access token works (answered ${me.status})`)
    })
}
