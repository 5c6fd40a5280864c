/**
 * HighLevel's token endpoint answers 401 {"error":"UnAuthorized!"} for two different things: bad
 * client credentials (the app's fault: retry after fixing config, the connection is intact) and a
 * refresh token it no longer accepts (the grant is gone: the user must reconnect). The provider tells
 * them apart by the description, so a dead grant is not retried forever and a config error does not
 * cost a linked account.
 */
import { ConnectionStore, createLatchkey } from "@latchkey/core"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type HighLevelSandbox, startSandbox } from "../src/sandbox.ts"
import { expireAccess, link, providerFor, refreshCalls, stored } from "./support.ts"

let sandbox: HighLevelSandbox
beforeAll(async () => {
  sandbox = await startSandbox()
})
afterAll(() => sandbox.close())

const unauthorized = (description: string) => ({
  endpoint: "token",
  grantType: "refresh_token",
  fault: "status" as const,
  status: 401,
  headers: { "content-type": "application/json" },
  body: JSON.stringify({ error: "UnAuthorized!", error_description: description })
})

describe("HighLevel 401 UnAuthorized! on refresh", () => {
  it("for a refresh token it no longer accepts: needs_reauth at once, not retried", async () => {
    const store = ConnectionStore.makeMemory()
    const lk = createLatchkey({
      providers: [providerFor(sandbox)],
      store,
      config: { baseBackoffMs: 5, maxBackoffMs: 20 }
    })
    const c = await link(lk, sandbox, "sbxLocation001")
    await expireAccess(store, c.id)
    sandbox.inject(unauthorized("Invalid refresh token"))
    const before = refreshCalls(sandbox)
    await expect(lk.accessToken(c.id)).rejects.toMatchObject({
      _tag: "ReauthorizationRequired",
      reason: "invalid_grant",
      providerError: "UnAuthorized!"
    })
    expect(refreshCalls(sandbox) - before).toBe(1)
    expect((await stored(store, c.id)).status).toBe("needs_reauth")
    await lk.close()
  })

  it("for bad client credentials: RefreshError(invalid_client), not retryable as is, and the connection stays active", async () => {
    const store = ConnectionStore.makeMemory()
    const lk = createLatchkey({
      providers: [providerFor(sandbox)],
      store,
      config: { baseBackoffMs: 5, maxBackoffMs: 20 }
    })
    const c = await link(lk, sandbox, "sbxLocation002")
    await expireAccess(store, c.id)
    sandbox.inject(unauthorized("Invalid client credentials!"))
    await expect(lk.accessToken(c.id)).rejects.toMatchObject({
      _tag: "RefreshError",
      reason: "invalid_client",
      isRetryable: false
    })
    expect((await stored(store, c.id)).status).toBe("active")
    // Once the credentials are right again, the same refresh token still works.
    expect(await lk.accessToken(c.id)).toBeTypeOf("string")
    await lk.close()
  })
})
