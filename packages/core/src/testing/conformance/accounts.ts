/** The `accounts` check: links two accounts side by side; the same account again replaces its tokens. */
import assert from "node:assert/strict"
import { expectIdentity, link, OTHER_OWNER, OWNER, withHarness } from "./harness.ts"
import type { ConformanceCheck } from "./types.ts"

export const accounts: ConformanceCheck = {
  name: "accounts",
  title: "links two accounts side by side; the same account again replaces its tokens",
  notApplicable: () => undefined,
  run: (server) =>
    withHarness(server, async (h) => {
      const [first, second] = server.accounts
      const a = await link(h, first)
      const b = await link(h, second)
      expectIdentity(a.connection, first, "first account")
      expectIdentity(b.connection, second, "second account")
      assert.notEqual(a.connection.accountId, b.connection.accountId, "two accounts have two account ids")
      assert.notEqual(a.connection.id, b.connection.id)
      const again = await link(h, first)
      assert.equal(again.relinked, true, "linking the same account again is a relink")
      assert.equal(again.connection.id, a.connection.id, "the account id is stable across links")
      assert.equal((await h.lk.connections(OWNER)).length, 2)
      // Another owner linking the same account gets a connection of its own.
      const other = await link(h, first, OTHER_OWNER)
      assert.notEqual(other.connection.id, a.connection.id)
      assert.equal(other.connection.accountId, a.connection.accountId)
      assert.equal((await h.lk.connections(OTHER_OWNER)).length, 1)
    })
}
