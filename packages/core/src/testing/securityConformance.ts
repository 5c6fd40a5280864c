/**
 * The security conformance suite of a store, and the permanent secrets-hygiene suite run through it
 * (`securityConformance({ name, open, tokenServer })`, next to `storeConformance` in a store's tests):
 *
 * - `takePending` with an owner: another owner's state answers `Foreign` and stays usable by its
 *   owner, also when owners race for it (the check and the consumption are one atomic step).
 * - `claimOnce`: exactly one caller wins a key, across concurrent callers, until it expires.
 * - Absurd token lifetimes (`expires_in` 1e16, 1e308, 0) reach the store as bounded integers.
 * - Secrets hygiene: every error type and every event of the public API, produced by real flows
 *   against a real authorization server with this store (a store failure included, through
 *   `sabotage` when the store has one), serialised four ways — `String`, `JSON.stringify`,
 *   `util.inspect` and `.stack` — contains none of the secret values the flows handled: client
 *   secret, vault key, API key, authorization codes, PKCE verifiers, access and refresh tokens.
 *   Tokens are stored unencrypted here (`vault.plaintext`), so that a store that keeps what it
 *   wrote in its errors is caught.
 */
import { inspect } from "node:util"
import { Effect, Redacted } from "effect"
import { describe, expect, it } from "vitest"
import type { ConnectionStoreShape, PendingAuthorization } from "../ConnectionStore.ts"
import { VaultError } from "../Errors.ts"
import type { LatchkeyEvent } from "../Events.ts"
import { createLatchkey, markRevoked } from "../Latchkey.ts"
import * as Provider from "../Provider.ts"
import * as Vault from "../VaultNamespace.ts"
import * as Hostile from "./hostile.ts"
import { startOtlpReceiver } from "./otlpReceiver.ts"
import type { ConformanceTokenServer, OpenedStore } from "./storeConformance.ts"

export interface SecurityConformanceOptions {
  readonly name: string
  /** Open a fresh, empty store. */
  readonly open: () => Promise<OpenedStore>
  /** The authorization server the hygiene flows run against (`conformanceTokenServer` of the test kit). */
  readonly tokenServer: () => Promise<ConformanceTokenServer>
  /**
   * Make the backend refuse every later write of `ownerId`'s connections with the driver's own error
   * (a constraint, a wrong-type key): the store's error for it is then checked for secrets.
   */
  readonly sabotage?: ((opened: OpenedStore, ownerId: string) => Promise<void>) | undefined
}

const run = <A, E>(effect: Effect.Effect<A, E>) => Effect.runPromise(effect)

const pending = (state: string, ownerId: string, now: number): PendingAuthorization => ({
  state,
  providerId: "p",
  ownerId,
  redirectUri: "http://127.0.0.1:9/cb",
  codeVerifier: null,
  scopes: [],
  createdAt: now,
  expiresAt: now + 600_000,
  metadata: null
})

const withStore = async (options: SecurityConformanceOptions, f: (opened: OpenedStore) => Promise<void>) => {
  const opened = await options.open()
  try {
    await f(opened)
  } finally {
    await opened.close()
  }
}

/** The four ways an app may turn an error or event into text. */
export const serialisations = (value: unknown): ReadonlyArray<[string, string]> => {
  const json = (() => {
    try {
      return JSON.stringify(value) ?? ""
    } catch (e) {
      return `unserialisable: ${String(e)}`
    }
  })()
  return [
    ["String", String(value)],
    ["JSON.stringify", json],
    ["util.inspect", inspect(value, { depth: 20, showHidden: true, getters: true })],
    ["stack", String((value as { stack?: unknown } | null)?.stack ?? "")]
  ]
}

/** Every secret of `secrets` found in any serialisation of `value`, as `how: secret-prefix`. */
export const leaks = (value: unknown, secrets: Iterable<string>): ReadonlyArray<string> => {
  const found: Array<string> = []
  for (const [how, text] of serialisations(value)) {
    for (const secret of secrets) if (text.includes(secret)) found.push(`${how}: ${secret.slice(0, 6)}…`)
  }
  return found
}

const settle = async (p: Promise<unknown>, label: string): Promise<unknown> => {
  try {
    await p
  } catch (e) {
    return e
  }
  throw new Error(`${label}: expected a failure`)
}

export const securityConformance = (options: SecurityConformanceOptions): void => {
  describe(`security conformance: ${options.name}`, () => {
    it("takePending: another owner's state is refused without being consumed", async () => {
      await withStore(options, async ({ store }) => {
        const now = Date.now()
        await run(store.putPending(pending("st-1", "owner-a", now)))
        for (const other of ["owner-b", "", "OWNER-A", "owner-a ", "owner-a\u0000", '"owner-a"']) {
          expect((await run(store.takePending("st-1", now, other)))._tag, JSON.stringify(other)).toBe(
            "Foreign"
          )
          Hostile.record(`${options.name}: foreign owner at takePending`, "refused")
        }
        const taken = await run(store.takePending("st-1", now, "owner-a"))
        expect(taken._tag).toBe("Found")
        expect(taken._tag === "Found" ? taken.pending.ownerId : undefined).toBe("owner-a")
        expect((await run(store.takePending("st-1", now, "owner-a")))._tag).toBe("Consumed")
        expect((await run(store.takePending("st-unknown", now, "owner-a")))._tag).toBe("Missing")
        // Hostile states from a callback are simply unknown.
        for (const state of [
          "st-1\u0000",
          "\u0000",
          "x".repeat(20_000),
          "st-1' OR '1'='1",
          "*",
          "st-%",
          "ünï"
        ]) {
          expect(
            (await run(store.takePending(state, now, "owner-a")))._tag,
            JSON.stringify(state.slice(0, 20))
          ).toBe("Missing")
          Hostile.record(`${options.name}: hostile state at takePending`, "refused")
        }
        // Without an owner the check is skipped (the provider-initiated and app-checked paths).
        await run(store.putPending(pending("st-2", "owner-a", now)))
        expect((await run(store.takePending("st-2", now)))._tag).toBe("Found")
      })
    })

    it("takePending: owners racing for one state, only the owner wins it", async () => {
      await withStore(options, async ({ store }) => {
        const now = Date.now()
        await run(store.putPending(pending("race", "victim", now)))
        const owners = Array.from({ length: 24 }, (_, i) => (i % 6 === 5 ? "victim" : `attacker-${i}`))
        const results = await Promise.all(owners.map((o) => run(store.takePending("race", now, o))))
        const found = results.flatMap((r, i) => (r._tag === "Found" ? [owners[i]] : []))
        expect(found).toEqual(["victim"])
        for (const [i, r] of results.entries()) {
          if (owners[i] !== "victim") {
            expect(["Foreign", "Consumed"]).toContain(r._tag)
            Hostile.record(`${options.name}: racing foreign owner`, "refused")
          }
        }
      })
    })

    it("claimOnce: one winner per key across concurrent callers, again after expiry", async () => {
      await withStore(options, async ({ store }) => {
        const claimOnce = store.claimOnce
        expect(claimOnce, `${options.name} has no claimOnce`).toBeDefined()
        const claim = claimOnce!
        const now = Date.now()
        for (const key of ["wh-1", "wh:with:colons", "wh with spaces", "wh-ünïcode", "x".repeat(200)]) {
          const wins = await Promise.all(Array.from({ length: 12 }, () => run(claim(key, now + 60_000, now))))
          expect(wins.filter(Boolean), key).toHaveLength(1)
          Hostile.record(`${options.name}: concurrent replayed claim`, "refused")
        }
        // A short claim expires; after it the key can be claimed again.
        expect(await run(claim("short", now + 50, now))).toBe(true)
        expect(await run(claim("short", now + 50, now + 10))).toBe(false)
        await new Promise((r) => setTimeout(r, 120))
        expect(await run(claim("short", now + 200 + 60_000, now + 200))).toBe(true)
        // A claim never shows up as a pending authorization a callback could take.
        expect((await run(store.takePending("claim:wh-1", now)))._tag).not.toBe("Found")
      })
    })

    it("absurd token lifetimes reach the store as bounded integers", async () => {
      const server = await options.tokenServer()
      try {
        await withStore(options, async ({ store }) => {
          for (const raw of [1e16, 1e308, 0, "1e400"]) {
            const lk = createLatchkey({
              providers: [
                Provider.make({
                  id: "conformance",
                  name: "Security conformance",
                  ...server.provider,
                  lifetimes: { accessTokenSeconds: 900 },
                  identify: server.identify
                })
              ],
              store,
              vault: { plaintext: true },
              config: {
                fetch: rewriteTokens(server.provider.endpoints.token, (b) => ({ ...b, expires_in: raw }))
              }
            })
            const { url } = await lk.startAuthorization({ providerId: "conformance", ownerId: `life-${raw}` })
            const { connection } = await lk.completeAuthorization({
              callback: await server.approve(url, "life")
            })
            const record = (await run(store.get(connection.id)))!
            expect(record.expiresAt! - record.obtainedAt, String(raw)).toBe(900_000)
            expect(Number.isSafeInteger(record.expiresAt)).toBe(true)
            Hostile.record(`${options.name}: absurd lifetime through the store`, "neutralised")
            // And through a refresh (the write that used to fail forever on PostgreSQL's bigint).
            const refreshed = await lk.refresh(connection.id)
            expect(refreshed.expiresAt! - Date.now()).toBeLessThanOrEqual(900_000)
            await lk.close()
          }
        })
      } finally {
        await server.close()
      }
    })

    it("secrets hygiene: no error, event, durable event, exported span or metric carries a secret", async () => {
      const server = await options.tokenServer()
      // Telemetry on: every span and metric exported over OTLP, and the Prometheus text, are checked too.
      const otlp = await startOtlpReceiver()
      let prometheus = ""
      /** The accounts' e-mails and labels: not secrets of the API's answers, but never exported. */
      const personal = new Set<string>()
      const secrets = new Set<string>()
      const add = (value: unknown) => {
        if (typeof value === "string" && value.length >= 8) secrets.add(value)
      }
      const tokenUrl = server.provider.endpoints.token
      add(server.provider.clientSecret)
      if (server.provider.clientSecret) {
        add(Buffer.from(`${server.provider.clientId}:${server.provider.clientSecret}`).toString("base64"))
      }
      /** Token requests still to refuse as a refused connection (nothing sent: retried, never resent as in doubt). */
      let failTokens = 0
      const capturing: typeof fetch = async (input, init) => {
        const url = typeof input === "string" ? input : input instanceof URL ? input.href : input.url
        if (url === tokenUrl && typeof init?.body === "string") {
          for (const key of ["code", "code_verifier", "refresh_token", "client_secret"]) {
            add(new URLSearchParams(init.body).get(key))
          }
        } else if (url === tokenUrl && init?.body instanceof URLSearchParams) {
          for (const key of ["code", "code_verifier", "refresh_token", "client_secret"])
            add(init.body.get(key))
        }
        if (url === tokenUrl && failTokens > 0) {
          failTokens--
          throw new TypeError("fetch failed", {
            cause: Object.assign(new Error("connect ECONNREFUSED"), { code: "ECONNREFUSED" })
          })
        }
        const response = await fetch(input, init)
        if (url === tokenUrl && response.ok) {
          const body = (await response.clone().json()) as Record<string, unknown>
          for (const key of ["access_token", "refresh_token", "id_token"]) add(body[key])
        }
        return response
      }
      const vaultKey = Vault.generateKey()
      add(vaultKey)
      const apiKey = "hygiene-api-key-5f2c9a71d0"
      add(apiKey)
      const badVaultKey = "not-a-key-but-secret-4471"
      add(badVaultKey)

      const provider = Provider.make({
        id: "conformance",
        name: "Security conformance",
        ...server.provider,
        // Sender-constrained tokens: the connections' DPoP private keys are secrets too.
        dpop: true,
        apiKeys: true,
        identify: async (context) =>
          context.tokens.tokenType === "api_key"
            ? { accountId: "api-key-account", label: "k" }
            : server.identify(context)
      })
      const errors: Array<[string, unknown]> = []
      const events: Array<LatchkeyEvent> = []
      const expectFailure = async (label: string, p: Promise<unknown>, tag: string) => {
        const e = await settle(p, label)
        expect((e as { _tag?: string })._tag, `${label}: ${String(e)}`).toBe(tag)
        errors.push([label, e])
      }

      try {
        await withStore(options, async (opened) => {
          const { store } = opened
          const lk = createLatchkey({
            providers: [provider],
            store,
            vault: { plaintext: true },
            config: { fetch: capturing, maxAttempts: 1, baseBackoffMs: 1, maxBackoffMs: 5 },
            telemetry: {
              otlp: { url: otlp.url, exportIntervalMs: 200 },
              prometheus: true,
              statusIntervalMs: 0
            }
          })
          lk.on((e) => events.push(e))
          const linkAs = async (ownerId: string, login: string) => {
            const { url } = await lk.startAuthorization({ providerId: "conformance", ownerId })
            const callback = await server.approve(url, login)
            add(new URL(callback).searchParams.get("code"))
            const { connection } = await lk.completeAuthorization({ callback, ownerId })
            if (connection.label.length >= 6) personal.add(connection.label)
            return connection
          }

          // linked (and a relink), refreshed
          const main = await linkAs("owner-1", "alice")
          const extras = JSON.parse(
            (await run(store.get(main.id)))!.extras.replace(/^plain\./, "")
          ) as Record<string, unknown>
          const dpopKey = JSON.parse(String(extras["latchkey:dpop"])) as { d: string }
          add(dpopKey.d)
          await linkAs("owner-1", "alice")
          await lk.refresh(main.id)
          const token = await lk.accessToken(main.id)
          add(token)

          // AuthorizationError: unknown state, foreign owner, repeated parameters, a spent code, iss
          const start = await lk.startAuthorization({ providerId: "conformance", ownerId: "owner-1" })
          const callback = new URL(await server.approve(start.url, "alice"))
          const code = callback.searchParams.get("code")!
          add(code)
          await expectFailure(
            "unknown state",
            lk.completeAuthorization({
              callback: `${callback.origin}${callback.pathname}?code=${code}&state=nope`
            }),
            "AuthorizationError"
          )
          await expectFailure(
            "foreign owner",
            lk.completeAuthorization({ callback: callback.href, ownerId: "owner-2" }),
            "AuthorizationError"
          )
          await expectFailure(
            "repeated code",
            lk.completeAuthorization({ callback: `${callback.href}&code=${code}`, ownerId: "owner-1" }),
            "AuthorizationError"
          )
          const tampered = new URL(callback.href)
          tampered.searchParams.set("iss", "https://attacker.example")
          await expectFailure(
            "iss mismatch",
            lk.completeAuthorization({ callback: tampered.href, ownerId: "owner-1" }),
            "AuthorizationError"
          )
          const again = await lk.startAuthorization({ providerId: "conformance", ownerId: "owner-1" })
          const second = new URL(await server.approve(again.url, "alice"))
          add(second.searchParams.get("code"))
          await lk.completeAuthorization({ callback: second.href, ownerId: "owner-1" })
          const replay = await lk.startAuthorization({ providerId: "conformance", ownerId: "owner-1" })
          const fresh = new URL(await server.approve(replay.url, "alice"))
          add(fresh.searchParams.get("code"))
          fresh.searchParams.set("code", second.searchParams.get("code")!)
          await expectFailure(
            "spent code",
            lk.completeAuthorization({ callback: fresh.href, ownerId: "owner-1" }),
            "AuthorizationError"
          )
          await expectFailure(
            "authorize params",
            lk.startAuthorization({ providerId: "conformance", ownerId: "o", params: { state: token } }),
            "AuthorizationError"
          )

          // RefreshError (the token endpoint unreachable) and its refresh_failed event
          failTokens = 100
          await expectFailure("refresh transient", lk.refresh(main.id), "RefreshError")
          failTokens = 0

          // ApiError: a foreign origin with a token in the URL, a network failure with one in the query
          await expectFailure(
            "foreign origin",
            lk.fetch(main.id, `https://evil.example/?access_token=${token}`),
            "ApiError"
          )
          const userinfo = new URL(server.provider.endpoints.userinfo!)
          await expectFailure(
            "api network",
            lk.fetch(main.id, `${userinfo.origin}/nothing-listens?token=${token}`, {
              signal: AbortSignal.abort(new TypeError("fetch failed"))
            }),
            "ApiError"
          )

          // ConnectionNotFound
          await expectFailure("not found", lk.connection(`conn_${token.slice(0, 4)}`), "ConnectionNotFound")

          // ReauthorizationRequired (and needs_reauth): the refresh token is spent behind Latchkey's back
          const victim = await linkAs("owner-3", "carol")
          const stored = (await run(store.get(victim.id)))!
          const spent = stored.refreshToken!.replace(/^plain\./, "")
          add(spent)
          const basic = Buffer.from(`${server.provider.clientId}:${server.provider.clientSecret}`).toString(
            "base64"
          )
          const stolen = await fetch(tokenUrl, {
            method: "POST",
            headers: { authorization: `Basic ${basic}`, "content-type": "application/x-www-form-urlencoded" },
            body: new URLSearchParams({ grant_type: "refresh_token", refresh_token: spent })
          })
          for (const [k, v] of Object.entries((await stolen.json()) as Record<string, unknown>)) {
            if (k.endsWith("token")) add(v)
          }
          await expectFailure("reauth", lk.refresh(victim.id), "ReauthorizationRequired")
          await expectFailure("reauth again", lk.accessToken(victim.id), "ReauthorizationRequired")

          // StoreError: a write conflict, and the backend refusing a write that carries new tokens
          const current = (await run(store.get(main.id)))!
          errors.push([
            "conflict",
            await run(
              Effect.flip(store.update({ ...current, version: current.version + 5 }, current.version + 4))
            )
          ])
          const doomed = await linkAs("owner-4", "dave")
          if (options.sabotage !== undefined) {
            await options.sabotage(opened, "owner-4")
            await expectFailure("store refuses the refreshed tokens", lk.refresh(doomed.id), "StoreError")
          }

          // api_key: linked with a key, then unlinked (unlinked event)
          const keyed = await lk.linkApiKey({ providerId: "conformance", ownerId: "owner-5", apiKey })
          await lk.unlink(keyed.connection.id)
          // revoked
          await lk.run(markRevoked(main.id))
          await expectFailure("revoked", lk.accessToken(main.id), "ReauthorizationRequired")
          await lk.unlink(main.id)
          prometheus = await lk.metrics()
          await lk.close() // flushes the OTLP exporters
          // The durable lifecycle events the store holds (whatever the engine appended).
          if (store.readEvents !== undefined) {
            for (const e of (await run(store.readEvents(0, 10_000))).events) {
              for (const leak of leaks(e, [...secrets, ...personal])) {
                errors.push([`durable event ${e.type} leaks ${leak}`, e])
              }
            }
          }

          // VaultError: a tampered ciphertext, and a key that is not a key
          const sealedLk = createLatchkey({
            providers: [provider],
            store,
            vault: { keys: [{ id: "k1", key: Redacted.make(vaultKey) }] },
            config: { fetch: capturing }
          })
          const sealed = (
            await sealedLk.linkApiKey({ providerId: "conformance", ownerId: "owner-6", apiKey })
          ).connection
          const row = (await run(store.get(sealed.id)))!
          const at = row.accessToken.length - 3
          const flipped = `${row.accessToken.slice(0, at)}${row.accessToken[at] === "A" ? "B" : "A"}${row.accessToken.slice(at + 1)}`
          await run(store.update({ ...row, accessToken: flipped, version: row.version + 1 }, row.version))
          await expectFailure("vault tampered", sealedLk.accessToken(sealed.id), "VaultError")
          await sealedLk.close()
          let invalid: unknown
          try {
            createLatchkey({
              providers: [provider],
              vault: { keys: [{ id: "k", key: badVaultKey, variable: "LK_KEY" }] }
            })
          } catch (e) {
            invalid = e
          }
          expect(invalid).toBeInstanceOf(VaultError)
          errors.push(["vault invalid key", invalid])

          // ProviderDefinitionError: a definition holding a secret, invalid elsewhere
          try {
            Provider.make({
              ...server.provider,
              id: "bad",
              name: "Bad",
              redirectUri: "not a url",
              identify: server.identify
            })
          } catch (e) {
            errors.push(["provider definition", e])
          }
        })

        const types = new Set(errors.map(([, e]) => (e as { _tag?: string })._tag))
        for (const tag of [
          "AuthorizationError",
          "RefreshError",
          "ReauthorizationRequired",
          "ConnectionNotFound",
          "StoreError",
          "VaultError",
          "ApiError",
          "ProviderDefinitionError"
        ]) {
          expect(types.has(tag), `no ${tag} was produced`).toBe(true)
        }
        expect(new Set(events.map((e) => e.type))).toEqual(
          new Set([
            "linked",
            "reconnected",
            "refreshed",
            "refresh_failed",
            "degraded",
            "needs_reauth",
            "revoked",
            "unlinked"
          ])
        )
        expect(secrets.size).toBeGreaterThan(10)
        const found: Array<string> = []
        for (const [label, e] of errors)
          for (const leak of leaks(e, secrets)) found.push(`${label} (${leak})`)
        for (const e of events) for (const leak of leaks(e, secrets)) found.push(`event ${e.type} (${leak})`)
        for (const [label] of errors) if (label.startsWith("durable event")) found.push(label)
        // What left the process for the collector, and the Prometheus text.
        const exported = `${otlp.text()}\n${prometheus}`
        expect(otlp.bodies.get("/v1/traces")?.length ?? 0).toBeGreaterThan(0)
        expect(otlp.bodies.get("/v1/metrics")?.length ?? 0).toBeGreaterThan(0)
        expect(prometheus).toContain("latchkey_refreshes_total")
        for (const secret of [...secrets, ...personal]) {
          if (exported.includes(secret)) found.push(`exported telemetry (${secret.slice(0, 6)}…)`)
        }
        expect(personal.size).toBeGreaterThan(0)
        expect(found).toEqual([])
        for (let i = 0; i < errors.length + events.length; i++) {
          Hostile.record(`${options.name}: error or event serialised 4 ways`, "neutralised")
        }
        console.info(Hostile.report(`securityConformance (${options.name})`))
      } finally {
        await server.close()
        await otlp.close()
      }
    }, 60_000)
  })
}

/** A fetch that rewrites the JSON answers of `tokenUrl` (dropping the id_token, which binds the original). */
const rewriteTokens =
  (tokenUrl: string, rewrite: (body: Record<string, unknown>) => Record<string, unknown>): typeof fetch =>
  async (input, init) => {
    const response = await fetch(input, init)
    const url = typeof input === "string" ? input : input instanceof URL ? input.href : input.url
    if (url !== tokenUrl || response.status !== 200) return response
    const { id_token: _, ...body } = (await response.json()) as Record<string, unknown>
    return new Response(JSON.stringify(rewrite(body)), {
      status: 200,
      headers: { "content-type": "application/json" }
    })
  }

export type { ConnectionStoreShape }
