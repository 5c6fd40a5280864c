/**
 * Every declared reason of every error is produced by Latchkey's own code. Each error's table is
 * keyed by its reasons (a reason added without a row fails to compile; the rows are also compared
 * with the schema at run time), and each row makes the error through the real code path: the vault,
 * the SQLite store, the ApiClient, the authorization flow and the refresh engine against a local
 * token server whose answer each row chooses. The few reasons that take a multi-process fault to
 * reach name the test that reaches them (it must exist and assert the reason). Each produced error
 * is checked against its reason's entry in the retryability table.
 */
import { readFileSync } from "node:fs"
import { createServer, type Server } from "node:http"
import type { AddressInfo } from "node:net"
import { DatabaseSync } from "node:sqlite"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Redacted, Result } from "effect"
import { TestClock } from "effect/testing"
import { afterAll, beforeAll, expect, it as vit } from "vitest"
import type { ConnectionRecord } from "../src/Connection.ts"
import { type ConnectionStoreShape, makeMemory } from "../src/ConnectionStore.ts"
import * as Declarative from "../src/Declarative.ts"
import * as Errors from "../src/Errors.ts"
import {
  createLatchkey,
  type LatchkeyClient,
  OAuth,
  Provider,
  SqliteStore,
  TokenManager,
  Vault
} from "../src/index.ts"
import * as Protocol from "../src/Protocol.ts"
import { sampleRecord } from "../src/testing/index.ts"

// ---------------------------------------------------------------------------------------------
// A token server that answers what the current row asks, and an API that answers 200

interface Answer {
  readonly status: number
  readonly body: string
  readonly headers?: Record<string, string>
}
let answer: Answer = { status: 200, body: "{}" }
let server: Server
let base = ""
beforeAll(async () => {
  server = createServer((req, res) => {
    req.resume()
    req.on("end", () => {
      if (req.url?.startsWith("/api/")) {
        res.writeHead(200, { "content-type": "application/json" }).end("{}")
        return
      }
      res.writeHead(answer.status, { "content-type": "application/json", ...answer.headers }).end(answer.body)
    })
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
})
afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())))

const json = (status: number, body: unknown, headers?: Record<string, string>): Answer => ({
  status,
  body: JSON.stringify(body),
  ...(headers ? { headers } : {})
})

const stub = (overrides: Partial<Provider.ProviderDefinition> = {}) =>
  Provider.make({
    id: "p",
    name: "Stub",
    clientId: "client",
    clientSecret: "client-secret",
    clientAuth: "client_secret_basic",
    endpoints: { issuer: base, authorization: `${base}/authorize`, token: `${base}/token` },
    redirectUri: `${base}/callback`,
    apiBaseUrl: `${base}/api`,
    apiKeys: true,
    identify: async () => ({ accountId: "acct", label: "acct" }),
    ...overrides
  })

const fast = { maxAttempts: 1, baseBackoffMs: 1, maxBackoffMs: 5, requestTimeoutMs: 2_000 }

/** A Latchkey on a memory store holding `records` (tokens in the vault's plain form). */
const instance = async (
  records: ReadonlyArray<ConnectionRecord> = [],
  options: { provider?: Provider.Provider; config?: object; store?: ConnectionStoreShape } = {}
) => {
  const store = options.store ?? makeMemory()
  for (const r of records) await Effect.runPromise(store.insert(r))
  return createLatchkey({
    providers: [options.provider ?? stub()],
    store,
    config: { ...fast, ...options.config }
  })
}

/** An expired OAuth connection of the stub provider. */
const expired = (patch: Partial<ConnectionRecord> = {}) =>
  sampleRecord("c1", { providerId: "p", expiresAt: 1, refreshDueAt: null, ...patch })

const failure = async (promise: Promise<unknown>): Promise<unknown> =>
  promise.then(
    () => assert.fail("expected a failure"),
    (e: unknown) => e
  )

/** Use an instance and always close it. */
const using = async (lk: LatchkeyClient, f: (lk: LatchkeyClient) => Promise<unknown>) => {
  try {
    return await f(lk)
  } finally {
    await lk.close()
  }
}

/** Start a flow and complete it with the code the stub's token endpoint answers `with` to. */
const exchange = (with_: Answer) =>
  using(createLatchkey({ providers: [stub()], config: fast }), async (lk) => {
    const { state } = await lk.startAuthorization({ providerId: "p", ownerId: "alice" })
    answer = with_
    return failure(lk.completeAuthorization({ callback: `${base}/callback?state=${state}&code=c` }))
  })

/** Refresh the expired connection while the stub answers `with`. */
const refreshing = (with_: Answer, patch: Partial<ConnectionRecord> = {}) =>
  instance([expired(patch)]).then((lk) =>
    using(lk, () => {
      answer = with_
      return failure(lk.accessToken("c1"))
    })
  )

const apiKeyInstance = async (config: object = {}) => {
  const lk = createLatchkey({ providers: [stub()], config: { ...fast, ...config } })
  const { connection } = await lk.linkApiKey({ providerId: "p", ownerId: "alice", apiKey: "key-1" })
  return { lk, id: connection.id }
}

const vaultOf = (...ids: Array<string>) =>
  Vault.make({ keys: ids.map((id) => ({ id, key: Redacted.make(Vault.generateKey()) })) })
const ctx = { connectionId: "c1", field: "accessToken" }
const openWith = (vault: Vault.VaultShape, sealed: string) =>
  Effect.runPromise(Effect.flip(vault.open(sealed, ctx)))
const thrown = (f: () => unknown): unknown => {
  try {
    f()
  } catch (e) {
    return e
  }
  return assert.fail("expected a throw")
}

// ---------------------------------------------------------------------------------------------
// The tables: one row per reason

/** How a reason is produced: here, or by the named test (multi-process faults). */
type Case = (() => Promise<unknown>) | { readonly assertedBy: string; readonly title: string }

const q = (query: string) => new URLSearchParams(query)
const pending = (at: number) => ({
  state: "s",
  providerId: "p",
  ownerId: "alice",
  redirectUri: "x",
  codeVerifier: null,
  scopes: [],
  createdAt: at,
  expiresAt: at + 1,
  metadata: null
})
const refused = async (result: Result.Result<unknown, Errors.AuthorizationError>) =>
  Result.isFailure(result) ? result.failure : assert.fail("the check accepted")

const authorization = {
  missing_state: () => refused(Protocol.callbackState(q("code=c"))),
  unknown_state: () => refused(Protocol.pendingAuthorization({ _tag: "Missing" }, 0)),
  expired_state: () => refused(Protocol.pendingAuthorization({ _tag: "Found", pending: pending(0) }, 1)),
  reused_state: () => refused(Protocol.pendingAuthorization({ _tag: "Consumed" }, 0)),
  foreign_state: () => refused(Protocol.pendingAuthorization({ _tag: "Foreign" }, 0)),
  missing_code: () =>
    refused(Protocol.authorizationResponse(q(""), stub(), { issuer: base, required: false })),
  iss_mismatch: () =>
    refused(Protocol.authorizationResponse(q("code=c&iss=x"), stub(), { issuer: base, required: false })),
  missing_iss: () =>
    refused(Protocol.authorizationResponse(q("code=c"), stub(), { issuer: base, required: true })),
  access_denied: () =>
    refused(
      Protocol.authorizationResponse(q("error=access_denied"), stub(), { issuer: base, required: false })
    ),
  provider_error: () =>
    refused(
      Protocol.authorizationResponse(q("error=server_error"), stub(), { issuer: base, required: false })
    ),
  invalid_request: () =>
    using(createLatchkey({ providers: [stub()], config: fast }), (lk) =>
      failure(lk.startAuthorization({ providerId: "p", ownerId: "" }))
    ),
  unknown_provider: () =>
    using(createLatchkey({ providers: [stub()], config: fast }), (lk) =>
      failure(lk.startAuthorization({ providerId: "gone", ownerId: "alice" }))
    ),
  invalid_grant: () => exchange(json(400, { error: "invalid_grant" })),
  invalid_client: () => exchange(json(401, { error: "invalid_client" })),
  exchange_failed: () => exchange(json(400, { error: "unsupported_grant_type" })),
  transient: () => exchange(json(503, { error: "temporarily_unavailable" })),
  identity_failed: () =>
    using(
      createLatchkey({
        providers: [
          stub({
            identify: async () => {
              throw new Error("who?")
            }
          })
        ],
        config: fast
      }),
      (lk) => failure(lk.linkApiKey({ providerId: "p", ownerId: "alice", apiKey: "k" }))
    )
} satisfies Record<Errors.AuthorizationErrorReason, Case>

const refresh = {
  transient: () => refreshing(json(503, { error: "temporarily_unavailable" })),
  rate_limited: () => refreshing(json(429, { error: "slow_down" }, { "retry-after": "0" })),
  invalid_response: () => refreshing({ status: 200, body: "<html>not a token response</html>" }),
  invalid_client: () => refreshing(json(401, { error: "invalid_client" })),
  lease_timeout: async () => {
    // Another process holds the lease (on the store's clock, for a minute) and never finishes.
    const store = makeMemory()
    const lk = await instance([expired()], { store, config: { leaseTtlMs: 40 } })
    await Effect.runPromise(store.acquireLease("c1", "another-process", 60_000))
    return using(lk, () => failure(lk.accessToken("c1")))
  },
  in_doubt: async () => {
    // Another process journalled a refresh of this very token and went silent; its lease lapsed.
    const journal = {
      holder: "silent-process",
      fence: 1,
      startedAt: 0,
      fingerprint: TokenManager.fingerprint("r")
    }
    const lk = await instance([expired({ journal })])
    return using(lk, () => failure(lk.accessToken("c1")))
  },
  draining: async () => {
    const lk = await instance([expired()])
    return using(lk, async () => {
      await lk.run(TokenManager.TokenManager.use((t) => t.drain))
      return failure(lk.accessToken("c1"))
    })
  },
  pending_write: {
    assertedBy: "src/testing/storeFaults.ts",
    title: 'reason: "pending_write"'
  },
  conflict: {
    // A row that keeps changing under a refresh four times over: reached under contention only.
    assertedBy: "src/TokenManager.ts",
    title: "kept changing as its refresh started"
  }
} satisfies Record<Errors.RefreshErrorReason, Case>

const reauthorization = {
  invalid_grant: () => refreshing(json(400, { error: "invalid_grant", error_description: "spent" })),
  refresh_token_expired: () => refreshing(json(500, {}), { refreshExpiresAt: 2 }),
  no_refresh_token: () => refreshing(json(500, {}), { refreshToken: null }),
  revoked: () => refreshing(json(500, {}), { status: "revoked" }),
  needs_reauth: () => refreshing(json(500, {}), { status: "needs_reauth" }),
  refresh_interrupted: () =>
    refreshing(json(500, {}), {
      status: "needs_reauth",
      lastError: { code: "refresh_interrupted", description: "answer lost, resend refused", at: 1 }
    })
} satisfies Record<Errors.ReauthorizationReason, Case>

const store = {
  conflict: () => {
    const s = makeMemory()
    return Effect.runPromise(
      Effect.flip(Effect.andThen(s.insert(sampleRecord("a")), s.insert(sampleRecord("a"))))
    )
  },
  unavailable: async () => {
    const s = SqliteStore.make({ path: ":memory:" })
    await Effect.runPromise(s.close())
    return Effect.runPromise(Effect.flip(s.get("a")))
  },
  timeout: async () => {
    const path = `${process.env.TMPDIR ?? "/tmp"}/latchkey-errors-${process.pid}-${Date.now()}.db`
    const s = SqliteStore.make({ path, busyTimeoutMs: 0 })
    const other = new DatabaseSync(path)
    other.exec("BEGIN IMMEDIATE")
    try {
      return await Effect.runPromise(Effect.flip(s.insert(sampleRecord("a"))))
    } finally {
      other.exec("ROLLBACK")
      other.close()
      await Effect.runPromise(s.close())
    }
  },
  corrupt: async () => {
    const path = `${process.env.TMPDIR ?? "/tmp"}/latchkey-errors-c-${process.pid}-${Date.now()}.db`
    const s = SqliteStore.make({ path })
    await Effect.runPromise(s.insert(sampleRecord("a")))
    const raw = new DatabaseSync(path)
    raw.prepare("UPDATE latchkey_connections SET record = '[]'").run()
    raw.close()
    try {
      return await Effect.runPromise(Effect.flip(s.get("a")))
    } finally {
      await Effect.runPromise(s.close())
    }
  },
  invalid_options: async () => thrown(() => SqliteStore.make({ path: ":memory:", busyTimeoutMs: -1 }))
} satisfies Record<Errors.StoreErrorReason, Case>

const vault = {
  unknown_key: () => openWith(vaultOf("k2"), vaultOf("k1").seal("t", ctx)),
  tampered: () => {
    const v = vaultOf("k1")
    const sealed = v.seal("token", ctx)
    return openWith(v, `${sealed.slice(0, -2)}${sealed.endsWith("A") ? "B" : "A"}${sealed.slice(-1)}`)
  },
  malformed: () => openWith(vaultOf("k1"), "lk1.k1.nothing"),
  no_key: async () => thrown(() => Vault.make(undefined, { NODE_ENV: "production" })),
  invalid_key: async () => thrown(() => Vault.make({ keys: [{ id: "k1", key: "too-short" }] })),
  plaintext_refused: () => openWith(vaultOf("k1"), "plain.planted")
} satisfies Record<Errors.VaultErrorReason, Case>

const api = {
  forbidden_origin: async () => {
    const { lk, id } = await apiKeyInstance()
    return using(lk, () => failure(lk.fetch(id, "https://elsewhere.example/steal")))
  },
  network: async () => {
    const { lk, id } = await apiKeyInstance({
      fetch: async () => {
        throw new TypeError("fetch failed")
      }
    })
    return using(lk, () => failure(lk.fetch(id, "/me")))
  },
  timeout: async () => {
    const { lk, id } = await apiKeyInstance({
      fetch: async () => {
        throw new DOMException("The operation timed out", "TimeoutError")
      }
    })
    return using(lk, () => failure(lk.fetch(id, "/me")))
  }
} satisfies Record<Errors.ApiErrorReason, Case>

const declarative = {
  unreadable: async () => thrown(() => Declarative.load("/nonexistent/latchkey-provider.yaml")),
  syntax: async () => thrown(() => Declarative.parse("{ not json", { format: "json" })),
  invalid: async () => thrown(() => Declarative.parse("id: acme\nname: Acme\n")),
  missing_env: async () =>
    thrown(() =>
      // biome-ignore lint/suspicious/noTemplateCurlyInString: a provider file's own reference syntax
      Declarative.parse("id: acme\nclient:\n  id: ${env:LATCHKEY_TEST_UNSET_VARIABLE}\n", { env: {} })
    )
} satisfies Record<Declarative.DeclarativeErrorReason, Case>

/** The documented contract: the reasons after which trying the same thing again can succeed. */
const retryableReasons: Record<string, ReadonlyArray<string>> = {
  AuthorizationError: ["transient"],
  RefreshError: Errors.RefreshErrorReason.literals.filter((r) => r !== "invalid_client"),
  ReauthorizationRequired: [],
  StoreError: ["conflict", "unavailable", "timeout"],
  VaultError: [],
  ApiError: ["network", "timeout"],
  DeclarativeError: []
}

const tables = [
  ["AuthorizationError", Errors.AuthorizationErrorReason, Errors.AuthorizationErrorRetryable, authorization],
  ["RefreshError", Errors.RefreshErrorReason, Errors.RefreshErrorRetryable, refresh],
  ["ReauthorizationRequired", Errors.ReauthorizationReason, Errors.ReauthorizationRetryable, reauthorization],
  ["StoreError", Errors.StoreErrorReason, Errors.StoreErrorRetryable, store],
  ["VaultError", Errors.VaultErrorReason, Errors.VaultErrorRetryable, vault],
  ["ApiError", Errors.ApiErrorReason, Errors.ApiErrorRetryable, api],
  ["DeclarativeError", Declarative.DeclarativeErrorReason, Declarative.DeclarativeErrorRetryable, declarative]
] as const

// ---------------------------------------------------------------------------------------------

describe("every reason of every error is produced by Latchkey's code", () => {
  for (const [tag, schema, retryable, table] of tables) {
    vit(`${tag}: a row for each declared reason, and retryable exactly as documented`, () => {
      expect(Object.keys(table).sort()).toEqual([...schema.literals].sort())
      expect(
        Object.entries(retryable)
          .filter(([, yes]) => yes)
          .map(([reason]) => reason)
          .sort()
      ).toEqual([...(retryableReasons[tag] ?? [])].sort())
    })
    for (const [reason, how] of Object.entries(table) as Array<[string, Case]>) {
      if (typeof how === "function") {
        vit(`${tag}(${reason})`, async () => {
          const error = (await how()) as {
            _tag: string
            reason: string
            isRetryable: boolean
            message: string
          }
          expect({ _tag: error._tag, reason: error.reason }).toEqual({ _tag: tag, reason })
          expect(error.isRetryable).toBe(retryableReasons[tag]!.includes(reason))
          // No token, secret or code of these rows in any message.
          for (const secret of ["client-secret", "key-1", "plain.a", "plain.r"]) {
            expect(error.message).not.toContain(secret)
          }
        })
      } else {
        vit(`${tag}(${reason}): reached by ${how.assertedBy}`, () => {
          const text = readFileSync(new URL(`../${how.assertedBy}`, import.meta.url), "utf8")
          expect(text).toContain(how.title)
          expect(text).toContain(`"${reason}"`)
        })
      }
    }
  }

  /** A store whose reads of "c1" (and "c2") do not answer until the test lets them (a slow store). */
  const gatedStore = () => {
    const memory = makeMemory()
    const gates = new Map<string, { open: () => void; opened: Promise<void> }>()
    for (const id of ["c1", "c2"]) {
      let open: () => void = () => {}
      const opened = new Promise<void>((resolve) => {
        open = resolve
      })
      gates.set(id, { open, opened })
    }
    const store: ConnectionStoreShape = {
      ...memory,
      get: (id) => {
        const gate = gates.get(id)
        return gate === undefined
          ? memory.get(id)
          : Effect.andThen(
              Effect.promise(() => gate.opened),
              memory.get(id)
            )
      }
    }
    return { store, release: () => gates.get("c1")!.open(), releaseSecond: () => gates.get("c2")!.open() }
  }

  vit(
    "close() lets a call under way finish before it releases the instance (a rolling restart)",
    async () => {
      const { store, release } = gatedStore()
      const lk = await instance([sampleRecord("c1", { providerId: "p" })], { store })
      // The read is under way (the instance is used, so its store is subscribed to first).
      const reading = lk.connection("c1")
      await new Promise((r) => setTimeout(r, 20))
      let closed = false
      const closing = lk.close().then(() => {
        closed = true
      })
      await new Promise((r) => setTimeout(r, 50))
      // Still open: the read has not answered yet.
      expect(closed).toBe(false)
      release()
      expect(await reading).toMatchObject({ id: "c1", status: "active" })
      await closing
      expect(await failure(lk.accessToken("c1"))).toMatchObject({ _tag: "InstanceClosed", reason: "closed" })
    }
  )

  vit(
    "close() does not wait for a call started after it (an app still calling cannot hold it open)",
    async () => {
      const { store, release, releaseSecond } = gatedStore()
      // A bound far beyond this test's own timeout: close() must not be waiting for it.
      const lk = await instance(
        [sampleRecord("c1", { providerId: "p" }), sampleRecord("c2", { providerId: "p" })],
        {
          store,
          config: { drainTimeoutMs: 120_000 }
        }
      )
      const first = lk.connection("c1")
      await new Promise((r) => setTimeout(r, 20))
      const closing = lk.close()
      await new Promise((r) => setTimeout(r, 20))
      // Started while close() waits for the first: never answered until after close() is done.
      const late = failure(lk.connection("c2"))
      release()
      expect(await first).toMatchObject({ id: "c1" })
      await closing
      releaseSecond()
      expect(await late).toMatchObject({ _tag: "InstanceClosed", reason: "closed" })
    }
  )

  vit(
    "InstanceClosed(closed): a call after close(), and one still reading the store when config.drainTimeoutMs has passed",
    async () => {
      const { store, release } = gatedStore()
      const lk = await instance([sampleRecord("c1", { providerId: "p" })], {
        store,
        config: { drainTimeoutMs: 100 }
      })
      // The read is under way (the instance is used, so its store is subscribed to first).
      const reading = failure(lk.connection("c1"))
      await new Promise((r) => setTimeout(r, 20))
      // The read never answers within the bound: close() does not wait for it longer.
      await lk.close()
      release()
      const interrupted = (await reading) as Errors.InstanceClosed
      expect(interrupted).toMatchObject({ _tag: "InstanceClosed", reason: "closed", isRetryable: false })
      const after = (await failure(lk.accessToken("c1"))) as Errors.InstanceClosed
      expect(after).toMatchObject({ _tag: "InstanceClosed", reason: "closed", isRetryable: false })
      expect(after.message).toContain("close()")
      expect(await failure(lk.connections("alice"))).toMatchObject({ _tag: "InstanceClosed" })
    }
  )

  vit("ConnectionNotFound(not_found) and ProviderDefinitionError(invalid_definition)", async () => {
    const lk = await instance()
    const missing = (await using(lk, () => failure(lk.accessToken("nope")))) as Errors.ConnectionNotFound
    expect(missing).toMatchObject({ _tag: "ConnectionNotFound", reason: "not_found", isRetryable: false })
    const invalid = thrown(() => stub({ redirectUri: "not a url" })) as Errors.ProviderDefinitionError
    expect(invalid).toMatchObject({
      _tag: "ProviderDefinitionError",
      reason: "invalid_definition",
      isRetryable: false
    })
  })
})

describe("ProtocolFailure: each kind from the token endpoint's answer, dated by the Effect Clock", () => {
  const cases: ReadonlyArray<readonly [OAuth.ProtocolFailureKind, Answer | "dpop" | "unsafe"]> = [
    ["invalid_grant", json(400, { error: "invalid_grant" })],
    ["invalid_client", json(401, { error: "invalid_client" })],
    ["oauth_error", json(400, { error: "invalid_scope" })],
    ["rate_limited", json(429, { error: "slow_down" })],
    ["transient", json(502, { error: "bad_gateway" })],
    ["invalid_response", { status: 200, body: "not json" }],
    ["unsupported", "dpop"],
    ["unsafe_response", "unsafe"]
  ]
  const options = () => ({ timeoutMs: 2_000 })

  it.effect.each(cases)("%s", ([kind, how]) =>
    Effect.gen(function* () {
      const failed =
        how === "dpop"
          ? yield* Effect.flip(OAuth.refresh(stub({ dpop: true }), options(), "r"))
          : how === "unsafe"
            ? yield* Effect.gen(function* () {
                answer = json(200, { access_token: "a\r\nx", token_type: "Bearer" })
                return yield* Effect.flip(
                  OAuth.exchangeCode(stub(), options(), {
                    callbackParams: q("code=c"),
                    redirectUri: `${base}/callback`,
                    expectedState: undefined,
                    codeVerifier: undefined
                  })
                )
              })
            : yield* Effect.gen(function* () {
                answer = how
                return yield* Effect.flip(OAuth.refresh(stub(), options(), "r"))
              })
      assert.strictEqual(failed._tag, "ProtocolFailure")
      assert.strictEqual(failed.kind, kind)
      assert.strictEqual(failed.reason, kind)
      assert.strictEqual(
        failed.isRetryable,
        OAuth.ProtocolFailureRetryable[kind] && failed.details.unsafe !== true
      )
    })
  )

  it.effect("a Retry-After given as an HTTP date is measured from the Effect Clock, not the host's", () =>
    Effect.gen(function* () {
      const now = Date.parse("2030-01-01T00:00:00Z")
      yield* TestClock.setTime(now)
      answer = json(429, { error: "slow_down" }, { "retry-after": new Date(now + 90_000).toUTCString() })
      const failed = yield* Effect.flip(OAuth.refresh(stub(), options(), "r"))
      assert.strictEqual(failed.kind, "rate_limited")
      assert.strictEqual(failed.details.retryAfterMs, 90_000)
    })
  )
})
