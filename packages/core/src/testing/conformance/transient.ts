/** The `transient` check: 503 and 429 (Retry-After) in front of the refresh endpoint are retried; the connection stays active. */
import assert from "node:assert/strict"
import { countingRefreshes, expectRefreshes, link, noRefreshTokens, withHarness } from "./harness.ts"
import type { ConformanceCheck } from "./types.ts"

export const transient: ConformanceCheck = {
  name: "transient",
  title:
    "503 and 429 (Retry-After) in front of the refresh endpoint are retried; the connection stays active",
  notApplicable: noRefreshTokens,
  run: (server) =>
    withHarness(server, async (h) => {
      const { connection } = await link(h, server.accounts[0])
      h.inject("503", "429")
      const counted = await countingRefreshes(h, () => h.lk.refresh(connection.id))
      expectRefreshes(counted, 1, "two transient failures then a success")
      assert.equal(counted.value.status, "active")
      assert.equal(counted.value.lastError, undefined)
      const failures = h.events.filter((e) => e.type === "refresh_failed")
      assert.equal(failures.length, 2, "each transient failure is reported")
      assert.ok(failures.every((e) => e.type === "refresh_failed" && e.retryable))
      assert.ok(!h.events.some((e) => e.type === "needs_reauth"))
    })
}
