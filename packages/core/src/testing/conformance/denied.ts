/** The `denied` check: a user who refuses consent gets access_denied and nothing is stored. */
import assert from "node:assert/strict"
import { OWNER, rejection, withHarness } from "./harness.ts"
import type { ConformanceCheck } from "./types.ts"

export const denied: ConformanceCheck = {
  name: "denied",
  title: "a user who refuses consent gets access_denied and nothing is stored",
  notApplicable: (s) => (s.deny === undefined ? "no deny driver was given" : undefined),
  run: (server) =>
    withHarness(server, async (h) => {
      const { url } = await h.lk.startAuthorization({ providerId: h.provider.id, ownerId: OWNER })
      const callback = await server.deny!(url)
      assert.equal(
        new URL(callback).searchParams.get("error"),
        "access_denied",
        "the server redirects with error=access_denied"
      )
      const error = await rejection(
        h.lk.completeAuthorization({ callback }),
        "completing a denied authorization"
      )
      assert.equal(error._tag, "AuthorizationError")
      assert.equal(error.reason, "access_denied")
      assert.deepEqual(await h.lk.connections(OWNER), [])
    })
}
