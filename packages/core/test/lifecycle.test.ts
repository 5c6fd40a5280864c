/**
 * The token lifecycle engine against a real authorization server (oidc-provider with rotating,
 * single-use refresh tokens and reuse detection). One describe block per invariant 1-4 of docs/architecture.md.
 */
import type { OidcServer } from "@latchkey/testkit-oidc"
import { Deferred, Effect, Redacted, Stream } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { ApiClient as ApiClientService } from "../src/ApiClient.ts"
import { StoreError } from "../src/Errors.ts"
import { Events as EventsService, type LatchkeyEvent } from "../src/Events.ts"
import { type ConnectionStore, createLatchkey, type Events, TokenManager } from "../src/index.ts"
import {
  exampleProvider,
  expire,
  faultyFetch,
  link,
  memoryStore,
  modifyStored,
  plain,
  startServer,
  stored
} from "./support.ts"

let server: OidcServer
beforeAll(async () => {
  server = await startServer()
})
afterAll(() => server.close())

const fast = { baseBackoffMs: 5, maxBackoffMs: 50 }

/** Does this refresh token still work at the server? (Spends it: use on a token we discard.) */
const refreshTokenWorks = async (refreshToken: string) => {
  const res = await fetch(server.endpoints.token, {
    method: "POST",
    headers: {
      authorization: `Basic ${Buffer.from(`basic-client:${server.clients[0]!.client_secret}`).toString("base64")}`,
      "content-type": "application/x-www-form-urlencoded"
    },
    body: new URLSearchParams({ grant_type: "refresh_token", refresh_token: refreshToken })
  })
  return res.status === 200
}

/**
 * Two instances on `store` with leases of `leaseTtlMs`: A, whose token requests take `delayMs` to reach
 * the server (a slow network), and B, whose requests go at once.
 */
const slowAndPrompt = (
  store: ConnectionStore.ConnectionStoreShape,
  { delayMs, leaseTtlMs }: { readonly delayMs: number; readonly leaseTtlMs: number }
) => {
  const slow: typeof fetch = (input, init) =>
    String(input).endsWith("/token")
      ? new Promise<Response>((resolve, reject) => {
          const timer = setTimeout(() => resolve(fetch(input, init)), delayMs)
          init?.signal?.addEventListener("abort", () => {
            clearTimeout(timer)
            reject(init.signal?.reason)
          })
        })
      : fetch(input, init)
  const config = { ...fast, leaseTtlMs }
  return {
    a: createLatchkey({ providers: [exampleProvider(server)], store, config: { ...config, fetch: slow } }),
    b: createLatchkey({ providers: [exampleProvider(server)], store, config })
  }
}

/** `store` counting its `get`s (`reads`, which a test may reset). */
const countingReads = (store: ConnectionStore.ConnectionStoreShape) => {
  const counting = {
    ...store,
    reads: 0,
    get: (id: string) => {
      counting.reads++
      return store.get(id)
    }
  }
  return counting
}

describe("invariant 1: a refresh token is sent at most once", () => {
  it("2,000 concurrent callers on one expired connection cause exactly one refresh", async () => {
    const store = memoryStore()
    const lk = createLatchkey({ providers: [exampleProvider(server)], store, config: fast })
    const c = await link(lk)
    await expire(store, c.id)
    const before = server.grants.refresh_token
    const tokens = await Promise.all(Array.from({ length: 2_000 }, () => lk.accessToken(c.id)))
    expect(server.grants.refresh_token - before).toBe(1)
    expect(new Set(tokens).size).toBe(1)
    const record = await stored(store, c.id)
    expect(plain(record.accessToken)).toBe(tokens[0])
    expect(record.version).toBe(c.version + 3) // the expiry patch, the journal, then exactly one refresh
    // The grant survived: the new refresh token is accepted by the server.
    expect(await refreshTokenWorks(plain(record.refreshToken))).toBe(true)
    await lk.close()
  })

  it("four instances with their own lease holders sharing one store cause exactly one refresh", async () => {
    const store = memoryStore()
    const instances = Array.from({ length: 4 }, () =>
      createLatchkey({ providers: [exampleProvider(server)], store, config: fast })
    )
    const c = await link(instances[0]!)
    await expire(store, c.id)
    const before = server.grants.refresh_token
    const results = await Promise.all(
      instances.flatMap((lk) => Array.from({ length: 250 }, () => lk.accessToken(c.id)))
    )
    expect(server.grants.refresh_token - before).toBe(1)
    expect(new Set(results).size).toBe(1)
    expect(server.grants.refreshErrors).toBe(0)
    await Promise.all(instances.map((lk) => lk.close()))
  })
  it("a token request slower than the lease: the holder renews its lease, nobody else sends the same token, everyone gets the holder's tokens", async () => {
    const store = memoryStore()
    const lk = createLatchkey({ providers: [exampleProvider(server)], store, config: fast })
    const c = await link(lk)
    await expire(store, c.id)
    // Instance A's token requests take 2.5 s to reach the server (a slow network); its lease lasts 1.5 s.
    const { a, b } = slowAndPrompt(store, { delayMs: 2_500, leaseTtlMs: 1_500 })
    const before = { calls: server.grants.refresh_token, errors: server.grants.refreshErrors }
    const fromA = a.accessToken(c.id)
    await new Promise((r) => setTimeout(r, 100)) // A holds the lease now
    const fromB = await b.accessToken(c.id)
    expect(await fromA).toBe(fromB)
    expect(server.grants.refreshErrors - before.errors).toBe(0)
    expect(server.grants.refresh_token - before.calls).toBe(1)
    expect(plain((await stored(store, c.id)).accessToken)).toBe(fromB)
    // The grant survived: the connection refreshes again.
    expect((await lk.refresh(c.id)).status).toBe("active")
    await Promise.all([lk.close(), a.close(), b.close()])
  })
})

describe("the callers of a refresh are answered once its tokens are durable", () => {
  it("a lease release that does not answer holds up none of the callers sharing the refresh", async () => {
    const base = memoryStore()
    // A store that releases the lease in a statement of its own, which does not answer until the
    // test lets it (a slow or unreachable store, after the tokens were written).
    const gate = Effect.runSync(Deferred.make<void>())
    let releases = 0
    const store: ConnectionStore.ConnectionStoreShape = {
      ...base,
      releasesLeaseOnUpdate: false,
      releaseLease: (lease) =>
        Effect.suspend(() => {
          releases++
          return Effect.andThen(Deferred.await(gate), base.releaseLease(lease))
        })
    }
    const lk = createLatchkey({ providers: [exampleProvider(server)], store, config: fast })
    const c = await link(lk)
    await expire(base, c.id)
    const before = server.grants.refresh_token
    const tokens = await Promise.all(Array.from({ length: 50 }, () => lk.accessToken(c.id)))
    // All 50 answered with the new token while the release is still waiting.
    expect(new Set(tokens).size).toBe(1)
    expect(releases).toBe(1)
    expect(server.grants.refresh_token - before).toBe(1)
    const record = await stored(base, c.id)
    expect(plain(record.accessToken)).toBe(tokens[0])
    expect(record.journal ?? null).toBeNull()
    // Let the release through: the lease is let go, and the instance closes with nothing in flight.
    Effect.runSync(Deferred.succeed(gate, undefined))
    await lk.close()
    expect(await Effect.runPromise(base.acquireLease(c.id, "someone-else", 1_000))).toBeDefined()
  })
})

describe("the lease keeper", () => {
  it("renews every lease of refreshes slower than the lease, started at different times, and stops with the last one", async () => {
    const base = memoryStore()
    let renewals = 0
    const store: ConnectionStore.ConnectionStoreShape = {
      ...base,
      renewLease: (lease, ttl) =>
        Effect.suspend(() => {
          renewals++
          return base.renewLease(lease, ttl)
        })
    }
    const lk = createLatchkey({ providers: [exampleProvider(server)], store, config: fast })
    const ids: Array<string> = []
    for (const login of ["keeper-1", "keeper-2", "keeper-3"]) ids.push((await link(lk, login)).id)
    for (const id of ids) await expire(base, id)
    // Instance A's token requests take 1.5 s; its leases last 600 ms (renewed every 200 ms).
    const { a, b } = slowAndPrompt(store, { delayMs: 1_500, leaseTtlMs: 600 })
    const before = { calls: server.grants.refresh_token, errors: server.grants.refreshErrors }
    // A starts the three refreshes 150 ms apart: their leases fall due for renewal at different times.
    const fromA: Array<Promise<string>> = []
    for (const id of ids) {
      fromA.push(a.accessToken(id))
      await new Promise((r) => setTimeout(r, 150))
    }
    // Past every first lease's length: without renewals B would win them and send the same tokens.
    await new Promise((r) => setTimeout(r, 500))
    const fromB = await Promise.all(ids.map((id) => b.accessToken(id)))
    expect(await Promise.all(fromA)).toEqual(fromB)
    expect(server.grants.refresh_token - before.calls).toBe(3)
    expect(server.grants.refreshErrors - before.errors).toBe(0)
    // Each lease was renewed, several times over the 1.5 s.
    expect(renewals).toBeGreaterThanOrEqual(6)
    // Nothing is held any more: the keeper renews nothing after the last refresh.
    const after = renewals
    await new Promise((r) => setTimeout(r, 700))
    expect(renewals).toBe(after)
    await Promise.all([lk.close(), a.close(), b.close()])
  })
})

describe("invariant 1: the Refresher's claimed record stands in for the re-read only where the journal fences it", () => {
  it("a claimed record that went stale (another instance refreshed after the claim): its refresh token is never sent", async () => {
    const store = memoryStore()
    const winner = createLatchkey({ providers: [exampleProvider(server)], store, config: fast })
    const c = await link(winner)
    await expire(store, c.id)
    // The loser's Refresher claimed the due row...
    const claimed = await stored(store, c.id)
    // ...and the winner refreshed it before the loser won the lease (the claimed refresh token is spent).
    const winnerToken = await winner.accessToken(c.id)
    let claims = 1
    const loserStore: ConnectionStore.ConnectionStoreShape = {
      ...store,
      claimDue: () => Effect.succeed(claims-- > 0 ? [claimed] : [])
    }
    const loser = createLatchkey({ providers: [exampleProvider(server)], store: loserStore, config: fast })
    const errorsBefore = server.grants.refreshErrors
    const refreshesBefore = server.grants.refresh_token
    const report = await loser.refresher.sweep()
    // The journal's compare-and-set over the claimed version failed, the row was read again and
    // found refreshed: nothing was sent.
    expect(server.grants.refresh_token - refreshesBefore).toBe(0)
    expect(server.grants.refreshErrors - errorsBefore).toBe(0)
    expect(report).toMatchObject({ due: 1, refreshed: 1, failed: 0 })
    const after = await stored(store, c.id)
    expect(after.status).toBe("active")
    expect(after.journal ?? undefined).toBeUndefined()
    expect(await loser.accessToken(c.id)).toBe(winnerToken)
    await Promise.all([winner.close(), loser.close()])
  })

  it("a claimed record that is still the stored one is refreshed without reading the row again", async () => {
    const store = memoryStore()
    const lk = createLatchkey({ providers: [exampleProvider(server)], store, config: fast })
    const c = await link(lk)
    const before = await lk.accessToken(c.id)
    await expire(store, c.id)
    const counting = countingReads(store)
    const refresher = createLatchkey({ providers: [exampleProvider(server)], store: counting, config: fast })
    const refreshesBefore = server.grants.refresh_token
    const report = await refresher.refresher.sweep()
    expect(report).toMatchObject({ due: 1, refreshed: 1, failed: 0 })
    expect(server.grants.refresh_token - refreshesBefore).toBe(1)
    expect(counting.reads).toBe(0)
    expect(await lk.accessToken(c.id)).not.toBe(before)
    await Promise.all([lk.close(), refresher.close()])
  })
})

describe("the Refresher and another instance's lease", () => {
  /** A linked connection, its token read, then expired, and its lease won by another instance for a minute. */
  const heldElsewhere = async () => {
    const store = memoryStore()
    const lk = createLatchkey({ providers: [exampleProvider(server)], store, config: fast })
    const c = await link(lk)
    const old = await lk.accessToken(c.id)
    await expire(store, c.id)
    const held = (await Effect.runPromise(store.acquireLease(c.id, "another-instance", 60_000)))!
    expect(held).toBeDefined()
    return { store, lk, c, old, held }
  }
  // This instance's leases last 1 s: a sweep that waited for the holder would give up after 2 s
  // (RefreshError "lease_timeout", counted as failed) instead of moving on.
  const refresherOn = (store: ConnectionStore.ConnectionStoreShape) =>
    createLatchkey({ providers: [exampleProvider(server)], store, config: { ...fast, leaseTtlMs: 1_000 } })
  /** The store as one without claims: every due connection is listed to every instance. */
  const withoutClaims = (
    store: ConnectionStore.ConnectionStoreShape
  ): ConnectionStore.ConnectionStoreShape => {
    const { claimDue: _, ...rest } = store
    return rest
  }
  // How the sweep came to the connection although another instance holds its lease: a store without
  // claims, or a claim taken on a snapshot from before the lease was won (the claim's statement did
  // not see it yet).
  const ways = {
    "listed (a store without claimDue)": withoutClaims,
    "claimed on a snapshot from before the lease": (
      store: ConnectionStore.ConnectionStoreShape
    ): ConnectionStore.ConnectionStoreShape => {
      let first = true
      return {
        ...store,
        // The first claim hands out what was due before the lease; later ones are the store's own.
        claimDue: (now: number, limit: number, holder: string, ttlMs: number) => {
          if (!first) return store.claimDue!(now, limit, holder, ttlMs)
          first = false
          return store.listDue(now, limit)
        }
      }
    }
  }
  it.each(Object.keys(ways))(
    "moves on from a due connection %s whose lease another instance holds, sends nothing for it, and refreshes it in a later sweep once the lease is gone",
    async (way) => {
      // Another instance won the lease (its refresh is under way).
      const { store, lk, c, held } = await heldElsewhere()
      const before = await stored(store, c.id)
      const refresher = refresherOn(ways[way as keyof typeof ways](store))
      const refreshesBefore = server.grants.refresh_token
      const report = await refresher.refresher.sweep()
      expect(report).toEqual({ due: 1, refreshed: 0, failed: 0, skipped: 1 })
      expect(server.grants.refresh_token - refreshesBefore).toBe(0)
      // Nothing was written: the row is the holder's to refresh.
      const after = await stored(store, c.id)
      expect(after.version).toBe(before.version)
      expect(after.journal ?? null).toBeNull()
      expect(after.status).toBe("active")
      // The holder let go without refreshing (it stopped): the next sweep refreshes the connection.
      await Effect.runPromise(store.releaseLease(held))
      const next = await refresher.refresher.sweep()
      expect(next).toEqual({ due: 1, refreshed: 1, failed: 0 })
      expect(server.grants.refresh_token - refreshesBefore).toBe(1)
      expect((await stored(store, c.id)).version).toBeGreaterThan(before.version)
      await Promise.all([lk.close(), refresher.close()])
    }
  )

  it("an on-demand caller that joined the skipped refresh never gets the expired token: it waits for the lease itself", async () => {
    const { store, lk, c, old, held } = await heldElsewhere()
    // The sweep's refresh stops at its lease request until the on-demand caller has joined it: the
    // caller reads the row, finds the token expired and joins the refresh in flight in the same step
    // of its fiber, so the gate opens on the next turn of the event loop after that read.
    const reached = Deferred.makeUnsafe<void>()
    const gate = Deferred.makeUnsafe<void>()
    let asked = 0
    // Without claims (the memory store's would skip the held connection): every due one is listed.
    const gated: ConnectionStore.ConnectionStoreShape = {
      ...withoutClaims(store),
      get: (id) =>
        Effect.tap(store.get(id), () =>
          Effect.sync(() => {
            if (Deferred.isDoneUnsafe(reached))
              setImmediate(() => Effect.runSync(Deferred.succeed(gate, undefined)))
          })
        ),
      acquireLease: (id, holder, ttlMs) =>
        asked++ === 0
          ? Effect.andThen(
              Effect.andThen(Deferred.succeed(reached, undefined), Deferred.await(gate)),
              store.acquireLease(id, holder, ttlMs)
            )
          : store.acquireLease(id, holder, ttlMs)
    }
    const refresher = refresherOn(gated)
    const refreshesBefore = server.grants.refresh_token
    const sweep = refresher.refresher.sweep()
    await Effect.runPromise(Deferred.await(reached))
    const onDemand = refresher.accessToken(c.id)
    expect(await sweep).toEqual({ due: 1, refreshed: 0, failed: 0, skipped: 1 })
    // The caller is still waiting (for the lease another instance holds): nothing was sent yet.
    expect(server.grants.refresh_token - refreshesBefore).toBe(0)
    // The holder goes away without refreshing: the caller wins the lease and refreshes.
    await Effect.runPromise(store.releaseLease(held))
    const token = await onDemand
    expect(token).not.toBe(old)
    expect(plain((await stored(store, c.id)).accessToken)).toBe(token)
    expect(server.grants.refresh_token - refreshesBefore).toBe(1)
    await Promise.all([lk.close(), refresher.close()])
  })
})

describe("invariant 1: an on-demand refresh reads the row once; the copy it read stands in only where the journal fences it", () => {
  it("accessToken on an expired connection reads the stored row once: the record just read stands in for a second read after the lease", async () => {
    const store = memoryStore()
    const counting = countingReads(store)
    const lk = createLatchkey({ providers: [exampleProvider(server)], store: counting, config: fast })
    const c = await link(lk)
    const old = await lk.accessToken(c.id)
    await expire(store, c.id)
    const refreshesBefore = server.grants.refresh_token
    counting.reads = 0
    const fresh = await lk.accessToken(c.id)
    expect(fresh).not.toBe(old)
    expect(server.grants.refresh_token - refreshesBefore).toBe(1)
    expect(counting.reads).toBe(1)
    await lk.close()
  })

  it("a copy this instance read that went stale (another instance refreshed since): its refresh token is never sent", async () => {
    const store = memoryStore()
    const winner = createLatchkey({ providers: [exampleProvider(server)], store, config: fast })
    const loser = createLatchkey({ providers: [exampleProvider(server)], store, config: fast })
    const c = await link(winner)
    await expire(store, c.id)
    // The loser reads the due connection (its copy: the refresh token about to be spent)...
    const stale = await loser.run(TokenManager.TokenManager.use((t) => t.get(c.id)))
    // ...and the winner refreshes it (that refresh token is spent; the server rotates).
    await winner.accessToken(c.id)
    const afterWinner = await stored(store, c.id)
    expect(plain(afterWinner.refreshToken)).not.toBe(Redacted.value(stale.tokens.refreshToken!))
    // `refresh` renews unless a refresh landed since the call: call it after the winner's millisecond.
    while (Date.now() <= (afterWinner.lastRefreshAt ?? 0)) await new Promise((r) => setImmediate(r))
    const before = { calls: server.grants.refresh_token, errors: server.grants.refreshErrors }
    // A refresh asked of the loser starts from the copy it knows: the journal's compare-and-set over
    // that version fails, the row is read again, and the refresh goes on from the stored tokens.
    const refreshed = await loser.refresh(c.id)
    expect(refreshed.status).toBe("active")
    expect(server.grants.refreshErrors - before.errors).toBe(0)
    expect(server.grants.refresh_token - before.calls).toBe(1)
    // The grant survived: the winner refreshes it again.
    expect((await winner.refresh(c.id)).status).toBe("active")
    expect(server.grants.refreshErrors - before.errors).toBe(0)
    await Promise.all([winner.close(), loser.close()])
  })
})

describe("invariant 2: new tokens are durable before any caller receives them", () => {
  it("the token a caller receives is the one the store holds, and a store hiccup is retried, not dropped", async () => {
    const memory = memoryStore()
    const unavailable = () => new StoreError({ reason: "unavailable", message: "db restarting" })
    let failNextUpdate = false
    const committed: Array<string> = []
    const store: ConnectionStore.ConnectionStoreShape = {
      ...memory,
      update: (record, expected, events) =>
        Effect.suspend(() => {
          if (failNextUpdate) {
            failNextUpdate = false
            return Effect.fail(unavailable())
          }
          return memory
            .update(record, expected, events)
            .pipe(Effect.tap(() => Effect.sync(() => committed.push(record.accessToken))))
        })
    }
    const lk = createLatchkey({ providers: [exampleProvider(server)], store, config: fast })
    const c = await link(lk)
    await expire(memory, c.id)
    failNextUpdate = true
    const token = await lk.accessToken(c.id)
    // The first write "failed" (it did not land), the retry did; the caller got what the store holds.
    expect(committed.map(plain)).toContain(token)
    expect(plain((await stored(memory, c.id)).accessToken)).toBe(token)
    await lk.close()
  })

  it("when the store cannot take the new tokens, the caller gets the store's error, not the tokens", async () => {
    const memory = memoryStore()
    let broken = false
    const store: ConnectionStore.ConnectionStoreShape = {
      ...memory,
      update: (record, expected, events) =>
        broken
          ? Effect.fail(new StoreError({ reason: "corrupt", message: "disk full" }))
          : memory.update(record, expected, events)
    }
    const lk = createLatchkey({ providers: [exampleProvider(server)], store, config: fast })
    const c = await link(lk)
    await expire(memory, c.id)
    broken = true
    await expect(lk.accessToken(c.id)).rejects.toMatchObject({ _tag: "StoreError", reason: "corrupt" })
    await lk.close()
  })
})

describe("invariant 3: invalid_grant re-reads the store before marking needs_reauth", () => {
  it("a worker that sent a stale refresh token returns the winner's tokens instead of marking needs_reauth", async () => {
    const store = memoryStore()
    const winner = createLatchkey({ providers: [exampleProvider(server)], store, config: fast })
    const c = await link(winner)
    await expire(store, c.id)
    const staleRecord = await stored(store, c.id)
    // The winner refreshes first.
    const winnerToken = await winner.accessToken(c.id)
    // The loser's store view is stale (as after a lease that lapsed mid-refresh). Its journal write is a
    // compare-and-set on the version it read, so the stale copy's consumed refresh token is never sent:
    // it re-reads and finds the winner's tokens.
    let staleReads = 2
    const loserStore: ConnectionStore.ConnectionStoreShape = {
      ...store,
      get: (id) => (staleReads-- > 0 ? Effect.succeed(staleRecord) : store.get(id))
    }
    const loser = createLatchkey({ providers: [exampleProvider(server)], store: loserStore, config: fast })
    const errorsBefore = server.grants.refreshErrors
    const refreshesBefore = server.grants.refresh_token
    const token = await loser.accessToken(c.id)
    expect(server.grants.refreshErrors - errorsBefore).toBe(0)
    expect(server.grants.refresh_token - refreshesBefore).toBe(0)
    expect(token).toBe(winnerToken)
    expect((await stored(store, c.id)).status).toBe("active")
    await Promise.all([winner.close(), loser.close()])
  })

  it("a real rejection marks needs_reauth, keeps the provider's error, emits an event and fails typed", async () => {
    const store = memoryStore()
    const lk = createLatchkey({ providers: [exampleProvider(server)], store, config: fast })
    const c = await link(lk)
    const events: Array<Events.LatchkeyEvent> = []
    lk.on((e) => events.push(e))
    // The user revokes the app at the provider.
    const rt = plain((await stored(store, c.id)).refreshToken)
    await fetch(server.endpoints.revocation, {
      method: "POST",
      headers: {
        authorization: `Basic ${Buffer.from(`basic-client:${server.clients[0]!.client_secret}`).toString("base64")}`,
        "content-type": "application/x-www-form-urlencoded"
      },
      body: new URLSearchParams({ token: rt, token_type_hint: "refresh_token" })
    })
    await expire(store, c.id)
    const error = await lk.accessToken(c.id).then(
      () => undefined,
      (e: unknown) => e as { _tag: string; reason: string; providerError?: string; message: string }
    )
    expect(error).toMatchObject({
      _tag: "ReauthorizationRequired",
      reason: "invalid_grant",
      providerError: "invalid_grant"
    })
    expect(error!.message).not.toContain(rt)
    const record = await stored(store, c.id)
    expect(record.status).toBe("needs_reauth")
    expect(record.lastError?.code).toBe("invalid_grant")
    expect(events.some((e) => e.type === "needs_reauth" && e.connectionId === c.id)).toBe(true)
    // Later callers fail fast without calling the provider again.
    const before = server.grants.refresh_token
    await expect(lk.accessToken(c.id)).rejects.toMatchObject({ _tag: "ReauthorizationRequired" })
    expect(server.grants.refresh_token).toBe(before)
    await lk.close()
  })

  it("an expired refresh token marks needs_reauth without calling the provider", async () => {
    const store = memoryStore()
    const lk = createLatchkey({ providers: [exampleProvider(server)], store, config: fast })
    const c = await link(lk)
    const now = Date.now()
    await modifyStored(store, c.id, (cur) => ({
      ...cur,
      tokens: { ...cur.tokens, expiresAt: now - 1000, refreshExpiresAt: now - 500 }
    }))
    const before = server.grants.refresh_token
    await expect(lk.accessToken(c.id)).rejects.toMatchObject({
      _tag: "ReauthorizationRequired",
      reason: "refresh_token_expired"
    })
    expect(server.grants.refresh_token).toBe(before)
    expect((await stored(store, c.id)).status).toBe("needs_reauth")
    await lk.close()
  })
})

describe("invariant 4: transient failures are retried and never mark needs_reauth", () => {
  for (const faults of [["503", "503"], ["network"], ["garbage"]] as const) {
    it(`recovers from ${faults.join(", ")} on the token endpoint`, async () => {
      const store = memoryStore()
      const flaky = faultyFetch([])
      const lk = createLatchkey({
        providers: [exampleProvider(server)],
        store,
        config: { ...fast, fetch: flaky.fetch }
      })
      const c = await link(lk)
      await expire(store, c.id)
      const failing = faultyFetch([...faults])
      const lk2 = createLatchkey({
        providers: [exampleProvider(server)],
        store,
        config: { ...fast, fetch: failing.fetch }
      })
      const token = await lk2.accessToken(c.id)
      expect(failing.sent.length).toBe(faults.length + 1)
      expect(plain((await stored(store, c.id)).accessToken)).toBe(token)
      expect((await stored(store, c.id)).status).toBe("active")
      await Promise.all([lk.close(), lk2.close()])
    })
  }

  it("honours Retry-After on 429 before trying again", async () => {
    const store = memoryStore()
    const lk = createLatchkey({ providers: [exampleProvider(server)], store, config: fast })
    const c = await link(lk)
    await expire(store, c.id)
    const limited = faultyFetch(["429"], undefined, "1")
    const lk2 = createLatchkey({
      providers: [exampleProvider(server)],
      store,
      config: { ...fast, maxBackoffMs: 5_000, fetch: limited.fetch }
    })
    await lk2.accessToken(c.id)
    expect(limited.sent.length).toBe(2)
    // The second request was not sent before the server's Retry-After of one second.
    expect(limited.sent[1]! - limited.sent[0]!).toBeGreaterThanOrEqual(950)
    await Promise.all([lk.close(), lk2.close()])
  })

  /**
   * A refresh of an expired connection whose first request gets a 429 with a `retryAfter` (seconds), on an
   * instance draining for `drainTimeoutMs`: `close()` is called once the retry is announced. What the caller
   * got, the requests sent, and the stored record before and after.
   */
  const closeDuringRetryAfter = async (retryAfter: string, drainTimeoutMs: number) => {
    const store = memoryStore()
    const lk = createLatchkey({ providers: [exampleProvider(server)], store, config: fast })
    const c = await link(lk)
    await lk.close()
    await expire(store, c.id)
    const before = await stored(store, c.id)
    const limited = faultyFetch(["429"], undefined, retryAfter)
    const lk2 = createLatchkey({
      providers: [exampleProvider(server)],
      store,
      config: { ...fast, maxBackoffMs: 60_000, drainTimeoutMs, fetch: limited.fetch }
    })
    const retrying = new Promise<void>((resolve) => {
      lk2.on((e) => {
        if (e.type === "refresh_failed" && e.retryable) resolve()
      })
    })
    const calling = lk2.accessToken(c.id).then(
      (token) => ({ token }),
      (error: unknown) => ({ error })
    )
    await retrying
    await lk2.close()
    return { outcome: await calling, sent: limited.sent.length, before, after: await stored(store, c.id) }
  }

  it("close() during a Retry-After wait that outlasts the drain withdraws the refresh at once: draining, nothing sent again, no journal left", async () => {
    // A 20 s Retry-After (well within the lease) and a drain of 5 s: the retry could not be answered in time.
    // close() returns at once (a refresh abandoned by a drain that ran out would be interrupted: the
    // caller would get InstanceClosed, and the journal would be left behind).
    const { outcome, sent, before, after } = await closeDuringRetryAfter("20", 5_000)
    expect(outcome).toMatchObject({ error: { _tag: "RefreshError", reason: "draining" } })
    expect(sent).toBe(1)
    expect(after.journal ?? null).toBeNull()
    expect(after.refreshToken).toBe(before.refreshToken)
    expect(after.status).toBe("active")
  }, 15_000)

  it("close() during a Retry-After wait that the drain has time for lets the retry finish: the caller gets the new token", async () => {
    // A 1 s Retry-After and a 20 s drain: the retry can be sent and answered before the drain ends.
    const { outcome, sent, before, after } = await closeDuringRetryAfter("1", 20_000)
    expect(sent).toBe(2)
    expect(outcome).toEqual({ token: plain(after.accessToken) })
    expect(after.refreshToken).not.toBe(before.refreshToken)
    expect(after.journal ?? null).toBeNull()
  }, 15_000)

  it("when every attempt fails, the caller gets a retryable RefreshError and the connection stays active", async () => {
    const store = memoryStore()
    const lk = createLatchkey({ providers: [exampleProvider(server)], store, config: fast })
    const c = await link(lk)
    await expire(store, c.id)
    const down = faultyFetch(["503", "503", "503", "503", "503", "503"])
    const lk2 = createLatchkey({
      providers: [exampleProvider(server)],
      store,
      config: { ...fast, fetch: down.fetch }
    })
    const error = await lk2.accessToken(c.id).then(
      () => undefined,
      (e: unknown) => e as { _tag: string; reason: string; isRetryable: boolean }
    )
    expect(error).toMatchObject({ _tag: "RefreshError", reason: "transient" })
    expect(error!.isRetryable).toBe(true)
    expect(down.sent.length).toBe(4) // maxAttempts
    const record = await stored(store, c.id)
    expect(record.status).toBe("active")
    expect(record.lastError?.code).toBe("transient")
    // The refresh token was never spent: the next call succeeds.
    expect(await lk.accessToken(c.id)).toBeTypeOf("string")
    await Promise.all([lk.close(), lk2.close()])
  })
})

describe("ApiClient", () => {
  it("adds the auth header, and on 401 refreshes once and retries once", async () => {
    const store = memoryStore()
    const api = faultyFetch([], (u) => u.endsWith("/me"))
    const lk = createLatchkey({
      providers: [exampleProvider(server)],
      store,
      config: { ...fast, fetch: api.fetch }
    })
    const c = await link(lk)
    const access = await lk.accessToken(c.id)
    // The API refuses the access token before its stated expiry (e.g. the provider rotated keys).
    api.inject("401")
    const before = server.grants.refresh_token
    const res = await lk.fetch(c.id, "/me")
    expect(res.status).toBe(200)
    expect(((await res.json()) as { sub: string }).sub).toBe("alice")
    expect(api.sent.length).toBe(2)
    expect(server.grants.refresh_token - before).toBe(1)
    expect(await lk.accessToken(c.id)).not.toBe(access)
    // A second 401 right after the retry is returned as it is: one refresh per request, no loop.
    api.inject("401", "401")
    const refused = await lk.fetch(c.id, "/me")
    expect(refused.status).toBe(401)
    expect(server.grants.refresh_token - before).toBe(2)
    await lk.close()
  })

  it("serves as an Effect HttpClient bound to the connection, relative URLs on the provider's API base", async () => {
    const store = memoryStore()
    const api = faultyFetch([], (u) => u.endsWith("/me"))
    const lk = createLatchkey({
      providers: [exampleProvider(server)],
      store,
      config: { ...fast, fetch: api.fetch }
    })
    const c = await link(lk)
    api.inject("401")
    const body = await lk.run(
      ApiClientService.use((client) => client.httpClient(c.id)).pipe(
        Effect.flatMap((http) => http.get("/me")),
        Effect.flatMap((response) => response.json)
      )
    )
    expect(body).toMatchObject({ sub: "alice" })
    expect(api.sent.length).toBe(2) // refused once, refreshed, retried
    await lk.close()
  })

  it("waits out a 429 Retry-After and retries", async () => {
    const store = memoryStore()
    const limited = faultyFetch([], (u) => u.endsWith("/me"), "0")
    const lk = createLatchkey({
      providers: [exampleProvider(server)],
      store,
      config: { ...fast, fetch: limited.fetch }
    })
    const c = await link(lk)
    limited.inject("429")
    const res = await lk.fetch(c.id, "/me")
    expect(res.status).toBe(200)
    expect(limited.sent.length).toBe(2)
    await lk.close()
  })
})

describe("events", () => {
  it("linked, refreshed and unlinked arrive as callbacks and on the Effect stream", async () => {
    const lk = createLatchkey({ providers: [exampleProvider(server)], config: fast })
    const seen: Array<string> = []
    const stop = lk.on((e) => seen.push(e.type))
    const streamed = lk.run(
      EventsService.use((events) => events.stream.pipe(Stream.take(3), Stream.runCollect))
    )
    await new Promise((r) => setTimeout(r, 20))
    const c = await link(lk)
    await lk.refresh(c.id)
    await lk.unlink(c.id)
    expect(seen).toEqual(["linked", "refreshed", "unlinked"])
    expect([...(await streamed)].map((e) => e.type)).toEqual(["linked", "refreshed", "unlinked"])
    stop()
    await lk.close()
  })

  it("every event has the same core: connectionId, ownerId and providerId", async () => {
    const lk = createLatchkey({ providers: [exampleProvider(server)], config: fast })
    const events: Array<LatchkeyEvent> = []
    const stop = lk.on((e) => events.push(e))
    const c = await link(lk)
    await lk.refresh(c.id)
    await lk.unlink(c.id)
    expect(events.map((e) => e.type)).toEqual(["linked", "refreshed", "unlinked"])
    for (const e of events) {
      expect({ connectionId: e.connectionId, ownerId: e.ownerId, providerId: e.providerId }).toEqual({
        connectionId: c.id,
        ownerId: c.ownerId,
        providerId: c.providerId
      })
    }
    const linked = events[0]
    expect(linked?.type === "linked" && linked.connection.id).toBe(c.id)
    stop()
    await lk.close()
  })
})
