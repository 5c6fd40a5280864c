/**
 * A storm through the Promise API, against the sandbox token server on 127.0.0.1: callers of one id
 * that arrive while its lookup (here: its refresh) is under way share that one lookup, without a
 * fiber and a store read each (issue "Performance at fleet scale", target 2).
 */
import { Effect } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as Connection from "../src/Connection.ts"
import * as ConnectionStore from "../src/ConnectionStore.ts"
import { createLatchkey } from "../src/Latchkey.ts"
import * as Provider from "../src/Provider.ts"
import { startOAuthSandbox } from "../src/sandbox/index.ts"
import { oauthConnection } from "../src/testing/oauthConnection.ts"
import * as Vault from "../src/Vault.ts"

let sandbox: Awaited<ReturnType<typeof startOAuthSandbox>>
beforeAll(async () => {
  sandbox = await startOAuthSandbox({
    name: "Storm",
    accounts: [{ id: "acct", label: "Account" }],
    clients: [
      {
        clientId: "storm",
        clientSecret: "storm-secret",
        redirectUris: ["http://127.0.0.1:9/callback"],
        auth: "client_secret_basic"
      }
    ],
    paths: { authorize: "/authorize", token: "/token" },
    refreshTokens: { rotate: true, reuseRevokesGrant: true }
  })
})
afterAll(() => sandbox.close())

const vaultOptions = { keys: [{ id: "k1", key: Vault.generateKey() }] }

/** A Latchkey on `store` with the sandbox as its provider. */
const instance = (store: ConnectionStore.ConnectionStoreShape) =>
  createLatchkey({
    providers: [
      Provider.make({
        id: "storm",
        name: "Storm",
        clientId: "storm",
        clientSecret: "storm-secret",
        clientAuth: "client_secret_basic",
        endpoints: {
          issuer: sandbox.endpoints.issuer,
          authorization: sandbox.endpoints.authorization,
          token: sandbox.endpoints.token
        },
        redirectUri: "http://127.0.0.1:9/callback",
        identify: async () => ({ accountId: "unused", label: "unused" })
      })
    ],
    store,
    vault: vaultOptions
  })

/** A connection with a fresh sandbox grant whose access token expired, written straight into `store`. */
const seedExpired = async (store: ConnectionStore.ConnectionStoreShape, id: string, due: number | null) => {
  const { tokenResponse } = sandbox.issueGrant({ account: "acct", clientId: "storm" })
  const c = oauthConnection({
    id,
    providerId: "storm",
    accessToken: String(tokenResponse.access_token),
    refreshToken: String(tokenResponse.refresh_token),
    expiresAt: Date.now() - 1_000
  })
  await Effect.runPromise(store.insert(Connection.toRecord(Vault.make(vaultOptions), c, due)))
  return { connection: c, issuedAccessToken: String(tokenResponse.access_token) }
}

describe("a storm through the Promise API", () => {
  it("1,000 callers during one refresh: one refresh, one engine lookup, a handful of store reads", async () => {
    const inner = ConnectionStore.makeMemory()
    let reads = 0
    const store: ConnectionStore.ConnectionStoreShape = {
      ...inner,
      get: (id) =>
        Effect.suspend(() => {
          reads++
          return inner.get(id)
        })
    }
    const lk = instance(store)
    try {
      const { issuedAccessToken } = await seedExpired(inner, "conn_storm", null)
      const before = sandbox.countCalls({ endpoint: "token", grantType: "refresh_token" })
      reads = 0
      const tokens = await Promise.all(Array.from({ length: 1_000 }, () => lk.accessToken("conn_storm")))
      expect(sandbox.countCalls({ endpoint: "token", grantType: "refresh_token" }) - before).toBe(1)
      expect(new Set(tokens).size).toBe(1)
      expect(tokens[0]).not.toBe(issuedAccessToken)
      // The first caller's lookup reads the row, the refresh reads it again under its lease and
      // re-reads around its writes: a few reads, not one per caller.
      expect(reads).toBeLessThanOrEqual(5)
    } finally {
      await lk.close()
    }
  })

  it("an instance subscribes to the store's changes on its first accessToken, not before; local writes are seen from then on", async () => {
    const inner = ConnectionStore.makeMemory()
    let watches = 0
    const store: ConnectionStore.ConnectionStoreShape = {
      ...inner,
      watch: (listener) => {
        watches++
        return inner.watch!(listener)
      }
    }
    const lk = instance(store)
    try {
      const { connection: c } = await seedExpired(inner, "conn_lazy", Date.now() - 1_000)
      // A worker's day: sweeps and reads, no accessToken. Nothing listens to the store.
      expect((await lk.refresher.sweep()).refreshed).toBe(1)
      expect(await lk.connections(c.ownerId)).toHaveLength(1)
      expect(watches).toBe(0)

      const first = await lk.accessToken("conn_lazy")
      expect(watches).toBe(1)
      expect(await lk.accessToken("conn_lazy")).toBe(first)
      // A local write (a forced refresh) is seen at once: the next answer is the new token.
      await lk.refresh("conn_lazy")
      const next = await lk.accessToken("conn_lazy")
      expect(next).not.toBe(first)
      expect(watches).toBe(1)
    } finally {
      await lk.close()
    }
  })

  it.each([
    [true, 0],
    [false, 1]
  ])(
    "the final write of a refresh releases its lease when the store can (releasesLeaseOnUpdate: %s): %i separate releaseLease calls",
    async (capable, separate) => {
      const inner = ConnectionStore.makeMemory()
      let releases = 0
      const withLease: Array<string> = []
      const store: ConnectionStore.ConnectionStoreShape = {
        ...inner,
        releasesLeaseOnUpdate: capable,
        releaseLease: (lease) =>
          Effect.suspend(() => {
            releases++
            return inner.releaseLease(lease)
          }),
        update: (record, expected, events, options) =>
          Effect.suspend(() => {
            if (options?.releaseLease !== undefined) withLease.push(record.id)
            return inner.update(
              record,
              expected,
              events,
              capable ? options : { ...options, releaseLease: undefined }
            )
          })
      }
      const lk = instance(store)
      try {
        const { issuedAccessToken } = await seedExpired(inner, "conn_release", null)
        expect(await lk.accessToken("conn_release")).not.toBe(issuedAccessToken)
        // Two writes under the lease (the journal, then the tokens): only the last carries the lease.
        expect(withLease).toEqual(capable ? ["conn_release"] : [])
        expect(releases).toBe(separate)
        // Either way the lease is free: another holder takes it at once.
        expect(
          await Effect.runPromise(inner.acquireLease("conn_release", "someone-else", 1_000))
        ).toBeDefined()
      } finally {
        await lk.close()
      }
    }
  )
})
