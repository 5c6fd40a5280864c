/**
 * Every refusal of an authorization callback, table-driven, on Effect's TestClock (no sleep): first
 * each named check of `Protocol` on its own, then the same refusals through `AuthorizationFlow`
 * (start, then complete with a forged or replayed callback), where nothing is exchanged or stored.
 * The provider has explicit endpoints on a closed port: no refusal may reach the network.
 */
import { assert, describe, it } from "@effect/vitest"
import { Clock, Effect, Result } from "effect"
import { TestClock } from "effect/testing"
import { AuthorizationFlow } from "../src/AuthorizationFlow.ts"
import { ConnectionStore, type PendingAuthorization, type TakePendingResult } from "../src/ConnectionStore.ts"
import type { AuthorizationError } from "../src/Errors.ts"
import { Latchkey, Provider } from "../src/index.ts"
import * as Protocol from "../src/Protocol.ts"

const ISSUER = "http://127.0.0.1:9/issuer"
const TTL = 10 * 60_000

const provider = (overrides: Partial<Provider.ProviderDefinition> = {}) =>
  Provider.make({
    id: "acme",
    name: "Acme",
    clientId: "client",
    clientSecret: "secret-never-sent",
    clientAuth: "client_secret_basic",
    endpoints: {
      issuer: ISSUER,
      authorization: "http://127.0.0.1:9/authorize",
      token: "http://127.0.0.1:9/token"
    },
    redirectUri: "http://127.0.0.1:9/callback",
    identify: async () => ({ accountId: "unused", label: "unused" }),
    ...overrides
  })

const acme = provider()
const pending = (now: number, patch: Partial<PendingAuthorization> = {}): PendingAuthorization => ({
  state: "s1",
  providerId: "acme",
  ownerId: "alice",
  redirectUri: acme.redirectUri,
  codeVerifier: null,
  scopes: [],
  createdAt: now,
  expiresAt: now + TTL,
  metadata: null,
  ...patch
})

const q = (query: string) => new URLSearchParams(query)
const found = (p: PendingAuthorization): TakePendingResult => ({ _tag: "Found", pending: p })
const issuer = { issuer: ISSUER, required: false }

/** The reason a check refused with, or "accepted". */
const verdict = <A>(result: Result.Result<A, AuthorizationError>) =>
  Result.isFailure(result) ? result.failure.reason : "accepted"

describe("Protocol: each check of a callback, on its own", () => {
  const rows: ReadonlyArray<{
    readonly name: string
    readonly reason: AuthorizationError["reason"] | "accepted"
    /** Runs the check; `now` is the TestClock's time after `after` ms. */
    readonly check: (now: number, startedAt: number) => Result.Result<unknown, AuthorizationError>
    readonly after?: number
  }> = [
    { name: "a state", reason: "accepted", check: () => Protocol.callbackState(q("state=s1&code=c")) },
    { name: "no state", reason: "missing_state", check: () => Protocol.callbackState(q("code=c")) },
    {
      name: "an empty state",
      reason: "missing_state",
      check: () => Protocol.callbackState(q("state=&code=c"))
    },
    {
      name: "the state twice",
      reason: "invalid_request",
      check: () => Protocol.callbackState(q("state=s1&state=s2&code=c"))
    },
    {
      name: "a state the store never issued",
      reason: "unknown_state",
      check: (now) => Protocol.pendingAuthorization({ _tag: "Missing" }, now)
    },
    {
      name: "a state already used (consumed)",
      reason: "reused_state",
      check: (now) => Protocol.pendingAuthorization({ _tag: "Consumed" }, now)
    },
    {
      name: "a state the store says was issued to another owner",
      reason: "foreign_state",
      check: (now) => Protocol.pendingAuthorization({ _tag: "Foreign" }, now, { ownerId: "mallory" })
    },
    {
      name: "a pending authorization one millisecond before it expires",
      reason: "accepted",
      after: TTL - 1,
      check: (now, startedAt) => Protocol.pendingAuthorization(found(pending(startedAt)), now)
    },
    {
      name: "a pending authorization at its expiry",
      reason: "expired_state",
      after: TTL,
      check: (now, startedAt) => Protocol.pendingAuthorization(found(pending(startedAt)), now)
    },
    {
      name: "a pending authorization of another owner",
      reason: "foreign_state",
      check: (now) => Protocol.pendingAuthorization(found(pending(now)), now, { ownerId: "mallory" })
    },
    {
      name: "a pending authorization of another provider",
      reason: "foreign_state",
      check: (now) => Protocol.pendingAuthorization(found(pending(now)), now, { providerId: "other" })
    },
    {
      name: "a provider that is registered",
      reason: "accepted",
      check: () => Protocol.registeredProvider((id) => (id === "acme" ? acme : undefined), "acme")
    },
    {
      name: "a provider that is not registered",
      reason: "unknown_provider",
      check: () => Protocol.registeredProvider((id) => (id === "acme" ? acme : undefined), "gone")
    },
    {
      name: "a code from the provider's issuer",
      reason: "accepted",
      check: () => Protocol.authorizationResponse(q(`code=c&iss=${encodeURIComponent(ISSUER)}`), acme, issuer)
    },
    {
      name: "the code twice",
      reason: "invalid_request",
      check: () => Protocol.authorizationResponse(q("code=c&code=d"), acme, issuer)
    },
    {
      name: "no iss from a provider that always sends it (RFC 9207)",
      reason: "missing_iss",
      check: () => Protocol.authorizationResponse(q("code=c"), acme, { ...issuer, required: true })
    },
    {
      name: "another server's iss",
      reason: "iss_mismatch",
      check: () => Protocol.authorizationResponse(q("code=c&iss=https%3A%2F%2Fevil.example"), acme, issuer)
    },
    {
      name: "error=access_denied",
      reason: "access_denied",
      check: () => Protocol.authorizationResponse(q("error=access_denied&error_description=no"), acme, issuer)
    },
    {
      name: "any other error=",
      reason: "provider_error",
      check: () => Protocol.authorizationResponse(q("error=server_error"), acme, issuer)
    },
    {
      name: "no code",
      reason: "missing_code",
      check: () => Protocol.authorizationResponse(q("state=s1"), acme, issuer)
    },
    {
      name: "a provider-initiated install for a provider that starts none",
      reason: "missing_state",
      check: () => Protocol.providerInitiatedCallback(q("code=c"), acme)
    },
    {
      name: "a provider-initiated install carrying a state",
      reason: "foreign_state",
      check: () =>
        Protocol.providerInitiatedCallback(q("code=c&state=s1"), { ...acme, providerInitiated: true })
    },
    {
      name: "a provider-initiated install",
      reason: "accepted",
      check: () => Protocol.providerInitiatedCallback(q("code=c"), { ...acme, providerInitiated: true })
    }
  ]

  it.effect.each(rows)("$name: $reason", (row) =>
    Effect.gen(function* () {
      yield* TestClock.setTime(1_800_000_000_000)
      const startedAt = yield* Clock.currentTimeMillis
      if (row.after !== undefined) yield* TestClock.adjust(row.after)
      const now = yield* Clock.currentTimeMillis
      assert.strictEqual(verdict(row.check(now, startedAt)), row.reason)
    })
  )

  it.effect("a refusal carries the provider's error and description, never the code or the state", () =>
    Effect.sync(() => {
      const result = Protocol.authorizationResponse(
        q("error=temporarily_unavailable&error_description=try+later&state=STATE-VALUE&code=CODE-VALUE"),
        acme,
        issuer
      )
      assert.isTrue(Result.isFailure(result))
      const error = (result as Result.Failure<never, AuthorizationError>).failure
      assert.strictEqual(error.providerError, "temporarily_unavailable")
      assert.strictEqual(error.providerErrorDescription, "try later")
      assert.strictEqual(error.providerId, "acme")
      assert.notInclude(error.message, "STATE-VALUE")
      assert.notInclude(error.message, "CODE-VALUE")
    })
  )
})

describe("AuthorizationFlow.complete refuses each forged or stale callback (TestClock)", () => {
  const services = () =>
    Latchkey.layer({ providers: [acme, provider({ id: "other", redirectUri: "http://127.0.0.1:9/cb2" })] })

  const rows: ReadonlyArray<{
    readonly name: string
    readonly reason: AuthorizationError["reason"]
    /** The callback, given the state `start` issued. */
    readonly callback: (state: string) => string
    readonly expected?: { readonly providerId?: string; readonly ownerId?: string }
    /** How long after `start` the callback arrives. */
    readonly after?: number
    /** Complete once with a well-formed callback before (the state is then used). */
    readonly replay?: boolean
  }> = [
    { name: "no state", reason: "missing_state", callback: () => "code=c" },
    { name: "state repeated", reason: "invalid_request", callback: (s) => `state=${s}&state=${s}&code=c` },
    { name: "a state never issued", reason: "unknown_state", callback: () => "state=forged&code=c" },
    {
      name: "a replayed state",
      reason: "reused_state",
      callback: (s) => `state=${s}&error=access_denied`,
      replay: true
    },
    {
      name: "after the pending authorization expired",
      reason: "expired_state",
      after: TTL,
      callback: (s) => `state=${s}&code=c`
    },
    {
      name: "a state issued to another user",
      reason: "foreign_state",
      expected: { ownerId: "mallory" },
      callback: (s) => `state=${s}&code=c`
    },
    {
      name: "a state issued for another provider",
      reason: "foreign_state",
      expected: { providerId: "other" },
      callback: (s) => `state=${s}&code=c`
    },
    {
      name: "another server's iss",
      reason: "iss_mismatch",
      callback: (s) => `state=${s}&code=c&iss=https%3A%2F%2Fevil.example`
    },
    {
      name: "the user denied access",
      reason: "access_denied",
      callback: (s) => `state=${s}&error=access_denied`
    },
    {
      name: "the provider's error",
      reason: "provider_error",
      callback: (s) => `state=${s}&error=server_error`
    },
    { name: "no code", reason: "missing_code", callback: (s) => `state=${s}` }
  ]

  it.effect.each(rows)("$name: $reason", (row) =>
    Effect.gen(function* () {
      const flow = yield* AuthorizationFlow
      const store = yield* ConnectionStore
      const { state } = yield* flow.start({ providerId: "acme", ownerId: "alice" })
      if (row.replay === true)
        yield* Effect.flip(flow.complete({ callback: `state=${state}&error=access_denied` }))
      if (row.after !== undefined) yield* TestClock.adjust(row.after)
      const error = yield* Effect.flip(
        flow.complete({ callback: `http://127.0.0.1:9/callback?${row.callback(state)}`, ...row.expected })
      )
      assert.strictEqual(error._tag, "AuthorizationError")
      assert.strictEqual((error as AuthorizationError).reason, row.reason)
      // Nothing was stored.
      assert.deepStrictEqual(yield* store.listByOwner("alice"), [])
    }).pipe(Effect.provide(services()))
  )

  it.effect("a provider-initiated install is refused for a provider that starts none", () =>
    Effect.gen(function* () {
      const flow = yield* AuthorizationFlow
      const error = yield* Effect.flip(
        flow.completeProviderInitiated({ providerId: "acme", ownerId: "alice", callback: "code=c" })
      )
      assert.strictEqual((error as AuthorizationError).reason, "missing_state")
    }).pipe(Effect.provide(services()))
  )

  it.effect("a callback naming a provider this instance does not have: unknown_provider", () =>
    Effect.gen(function* () {
      const flow = yield* AuthorizationFlow
      const error = yield* Effect.flip(flow.start({ providerId: "gone", ownerId: "alice" }))
      assert.strictEqual((error as AuthorizationError).reason, "unknown_provider")
    }).pipe(Effect.provide(services()))
  )
})
