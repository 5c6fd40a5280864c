/** The `link` check: links an account: code exchange, identity, tokens as the server issues them, a working token. */
import assert from "node:assert/strict"
import { expectIdentity, expiring, link, OWNER, refreshTokens, withHarness } from "./harness.ts"
import type { ConformanceCheck } from "./types.ts"

export const linking: ConformanceCheck = {
  name: "link",
  title: "links an account: code exchange, identity, tokens as the server issues them, a working token",
  notApplicable: () => undefined,
  run: (server) =>
    withHarness(server, async (h) => {
      const account = server.accounts[0]
      const { connection } = await link(h, account)
      expectIdentity(connection, account, "link")
      assert.equal(connection.status, "active")
      assert.equal(connection.providerId, h.provider.id)
      assert.equal(connection.ownerId, OWNER)
      assert.equal(connection.kind, "oauth")
      assert.equal(
        connection.hasRefreshToken,
        refreshTokens(server),
        refreshTokens(server) ? "linking yields a refresh token" : "linking yields no refresh token"
      )
      assert.equal(
        connection.expiresAt !== undefined,
        expiring(server),
        expiring(server) ? "the access token has an expiry" : "the access token has no expiry"
      )
      if (connection.expiresAt !== undefined) {
        assert.ok(connection.expiresAt > Date.now(), "the new access token is not already expired")
      }
      if (connection.hasRefreshToken && h.provider.defaultRefreshTokenSeconds !== undefined) {
        assert.ok(connection.refreshExpiresAt !== undefined, "the declared refresh-token lifetime applies")
      }
      const linked = h.events.find((e) => e.type === "linked")
      assert.ok(linked, "a linked event is published")
      // The token works against the server's API, through the ApiClient and the provider's headers.
      const me = await h.lk.fetch(connection.id, server.whoAmI)
      await me.body?.cancel()
      assert.ok(me.ok, `the who-am-I endpoint accepts the new token (answered ${me.status})`)
    })
}
