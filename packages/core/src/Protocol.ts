/**
 * The checks of an authorization callback, as named pure functions: each takes what it judges
 * (the callback's parameters, what the store answered, the time, the provider's issuer) and returns
 * a `Result`: the value the flow goes on with, or the `AuthorizationError` that refuses the callback.
 * `AuthorizationFlow` runs them in this order, around its two I/O steps (taking the pending
 * authorization from the store, reading the provider's issuer):
 *
 * 1. `callbackState` — parameters repeated (`invalid_request`), no state (`missing_state`);
 * 2. `pendingAuthorization` — the store's answer for the state: issued to another owner
 *    (`foreign_state`), unknown (`unknown_state`), already used (`reused_state`), expired
 *    (`expired_state`), or issued for another provider or owner than the caller expects (`foreign_state`);
 * 3. `registeredProvider` — the pending authorization's provider is registered (`unknown_provider`);
 * 4. `authorizationResponse` — the provider's answer: parameters repeated (`invalid_request`), RFC 9207
 *    `iss` missing where the provider always sends it (`missing_iss`) or not the provider's
 *    (`iss_mismatch`), an `error` from the provider (`access_denied`, `provider_error`), no code
 *    (`missing_code`).
 *
 * `providerInitiatedCallback` stands for steps 1–2 of a provider-initiated install (no state of ours).
 * Time is an argument (the flow reads it from the Effect `Clock`). No message carries the code, the
 * state or a token (invariant 5); each is built from the provider's name and its own `error` /
 * `error_description`.
 */
import { Result } from "effect"
import type { PendingAuthorization, TakePendingResult } from "./ConnectionStore.ts"
import { AuthorizationError } from "./Errors.ts"
import type { Provider } from "./Provider.ts"

/** What the checks need to know of a provider. */
export type CallbackProvider = Pick<Provider, "id" | "name" | "providerInitiated">

/** The issuer a callback's `iss` must equal, and whether the provider always sends one (RFC 9207). */
export interface ExpectedIssuer {
  readonly issuer: string
  readonly required: boolean
}

/** Who the caller expects the callback to be for (`complete({ providerId, ownerId })`). */
export interface ExpectedParty {
  readonly providerId?: string | undefined
  readonly ownerId?: string | undefined
}

type Checked<A> = Result.Result<A, AuthorizationError>

const refuse = (
  reason: AuthorizationError["reason"],
  providerId: string | undefined,
  message: string,
  providerError?: string | undefined,
  providerErrorDescription?: string | undefined
): Checked<never> =>
  Result.fail(
    new AuthorizationError({
      reason,
      providerId,
      message,
      ...(providerError !== undefined ? { providerError } : {}),
      ...(providerErrorDescription !== undefined ? { providerErrorDescription } : {})
    })
  )

/** Callback parameters that must appear at most once (RFC 6749 §3.1: parameters must not repeat). */
const SINGLE_PARAMS = ["state", "code", "iss", "error", "error_description"] as const

/** The parameters of a callback that appear more than once. */
export const repeatedParams = (params: URLSearchParams): ReadonlyArray<string> =>
  SINGLE_PARAMS.filter((name) => params.getAll(name).length > 1)

/** The callback's parameters, from the callback URL as received or its query alone. */
export const callbackParams = (callback: string | URL | URLSearchParams): URLSearchParams => {
  if (callback instanceof URLSearchParams) return callback
  if (callback instanceof URL) return callback.searchParams
  const q = callback.indexOf("?")
  return new URLSearchParams(
    q >= 0 ? callback.slice(q + 1).split("#")[0] : callback.startsWith("http") ? "" : callback
  )
}

/** Step 1: the state of a callback this app started (no parameter repeated). */
export const callbackState = (params: URLSearchParams, expected: ExpectedParty = {}): Checked<string> => {
  const twice = repeatedParams(params)
  if (twice.length > 0) {
    return refuse(
      "invalid_request",
      expected.providerId,
      `The callback repeats ${twice.join(", ")}; it is not a valid authorization response`
    )
  }
  const state = params.get("state")
  if (state === null || state === "") {
    return refuse(
      "missing_state",
      expected.providerId,
      "The callback has no state; it was not started by this app (provider-initiated installs have their own entry point)"
    )
  }
  return Result.succeed(state)
}

/**
 * Step 2: the pending authorization the store gave for the state (single use, bound to provider and
 * owner, expiring at `expiresAt`), judged at `now`.
 */
export const pendingAuthorization = (
  taken: TakePendingResult,
  now: number,
  expected: ExpectedParty = {}
): Checked<PendingAuthorization> => {
  switch (taken._tag) {
    case "Foreign":
      return refuse(
        "foreign_state",
        expected.providerId,
        "The callback's state was issued for another provider or user"
      )
    case "Missing":
      return refuse("unknown_state", expected.providerId, "The callback's state is unknown")
    case "Consumed":
      return refuse("reused_state", expected.providerId, "The callback's state was already used")
  }
  const pending = taken.pending
  if (pending.expiresAt <= now) {
    return refuse("expired_state", pending.providerId, "The authorization request expired; start again")
  }
  if (
    (expected.providerId !== undefined && expected.providerId !== pending.providerId) ||
    (expected.ownerId !== undefined && expected.ownerId !== pending.ownerId)
  ) {
    return refuse(
      "foreign_state",
      expected.providerId ?? pending.providerId,
      "The callback's state was issued for another provider or user"
    )
  }
  return Result.succeed(pending)
}

/** Step 3: the provider a pending authorization (or a request) names is registered. */
export const registeredProvider = <P extends { readonly id: string }>(
  find: (providerId: string) => P | undefined,
  providerId: string
): Checked<P> => {
  const provider = find(providerId)
  return provider === undefined
    ? refuse("unknown_provider", providerId, `No provider "${providerId}" is registered`)
    : Result.succeed(provider)
}

/**
 * Step 4: the provider's authorization response: not repeated, from the provider's issuer (RFC 9207),
 * not an error, with a code. Returns the code.
 */
export const authorizationResponse = (
  params: URLSearchParams,
  provider: CallbackProvider,
  issuer: ExpectedIssuer
): Checked<string> => {
  const twice = repeatedParams(params)
  if (twice.length > 0) {
    return refuse(
      "invalid_request",
      provider.id,
      `${provider.name}: the callback repeats ${twice.join(", ")}; it is not a valid authorization response`
    )
  }
  const iss = params.get("iss")
  if (iss === null && issuer.required) {
    return refuse(
      "missing_iss",
      provider.id,
      `${provider.name}: the callback has no iss, which this provider always sends (RFC 9207); it may come from another server`
    )
  }
  if (iss !== null && iss !== issuer.issuer) {
    return refuse(
      "iss_mismatch",
      provider.id,
      `${provider.name}: the callback's iss does not match the provider's issuer (RFC 9207); it may come from another server`
    )
  }
  const error = params.get("error")
  if (error !== null) {
    const description = params.get("error_description") ?? undefined
    return error === "access_denied"
      ? refuse(
          "access_denied",
          provider.id,
          `${provider.name}: the user denied access${description ? ` (${description})` : ""}`,
          error,
          description
        )
      : refuse(
          "provider_error",
          provider.id,
          `${provider.name} returned an error: ${error}${description ? ` (${description})` : ""}`,
          error,
          description
        )
  }
  const code = params.get("code")
  if (!code) return refuse("missing_code", provider.id, `${provider.name}: the callback has no code`)
  return Result.succeed(code)
}

/**
 * A provider-initiated install (a code with no state of ours): only for providers that declare
 * `providerInitiated`, and never for a callback carrying a state (that belongs to `complete`).
 */
export const providerInitiatedCallback = (
  params: URLSearchParams,
  provider: CallbackProvider
): Checked<URLSearchParams> => {
  if (provider.providerInitiated !== true) {
    return refuse(
      "missing_state",
      provider.id,
      `${provider.name} does not start installs itself; callbacks without state are refused`
    )
  }
  if (params.get("state")) {
    return refuse(
      "foreign_state",
      provider.id,
      "A callback with a state belongs to a flow this app started; complete it with complete()"
    )
  }
  return Result.succeed(params)
}
