/** The `definition` check: the definition is valid and the authorize URL carries what the provider declares. */
import assert from "node:assert/strict"
import { Redacted } from "effect"
import * as Provider from "../../Provider.ts"
import { OWNER, withHarness } from "./harness.ts"
import type { ConformanceCheck } from "./types.ts"

export const definition: ConformanceCheck = {
  name: "definition",
  title: "the definition is valid and the authorize URL carries what the provider declares",
  notApplicable: () => undefined,
  run: (server) =>
    withHarness(server, async (h) => {
      const p = h.provider
      // A provider made with Provider.make validates again unchanged (it was not assembled by hand).
      const again = Provider.make({ ...p, clientSecret: p.clientSecretValue })
      assert.equal(again.id, p.id, "the provider validates again")
      const { url, state } = await h.lk.startAuthorization({ providerId: p.id, ownerId: OWNER })
      const authorize = new URL(url)
      if (p.endpoints) {
        const declared = new URL(p.endpoints.authorization)
        assert.equal(
          authorize.origin + authorize.pathname,
          declared.origin + declared.pathname,
          "the authorize URL is the declared authorization endpoint"
        )
        for (const [k, v] of declared.searchParams) {
          assert.equal(
            authorize.searchParams.get(k),
            v,
            `the authorization endpoint's own parameter ${k} is kept`
          )
        }
      }
      const q = authorize.searchParams
      assert.equal(q.get("response_type"), "code", "response_type=code")
      assert.equal(q.get("client_id"), p.clientId, "the client id")
      assert.equal(q.get("redirect_uri"), p.redirectUri, "the redirect URI is sent exactly as registered")
      assert.equal(q.get("state"), state, "the state of this flow")
      assert.match(state, /^[A-Za-z0-9_-]{43,}$/, "the state is at least 256 bits, URL-safe")
      if (p.scopes.length > 0) {
        assert.equal(
          q.get("scope"),
          p.scopes.join(p.scopeSeparator),
          "the scopes, joined by the declared separator"
        )
      }
      if (p.pkce === "S256") {
        assert.equal(q.get("code_challenge_method"), "S256", "PKCE S256")
        assert.match(q.get("code_challenge") ?? "", /^[A-Za-z0-9_-]{43}$/, "an S256 challenge")
      } else {
        assert.equal(q.get("code_challenge"), null, "no PKCE challenge when the provider declares pkce: none")
      }
      for (const [k, v] of Object.entries(p.authorizationParams ?? {})) {
        assert.equal(q.get(k), v, `the authorization parameter ${k}`)
      }
      if (p.clientSecretValue) {
        assert.ok(!url.includes(Redacted.value(p.clientSecretValue)), "the client secret is not in the URL")
      }
    })
}
