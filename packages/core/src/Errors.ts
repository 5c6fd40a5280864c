/**
 * Typed errors, one per failure domain. Every error has a `reason` (what went wrong, machine-readable)
 * and `isRetryable` (whether trying the same thing later can succeed). No error ever carries a token,
 * a client secret or an authorization code: messages are built from ids, statuses and the provider's
 * own `error` / `error_description` fields only.
 *
 * As in effect's own `SqlError`, retryability belongs to the reason: each domain declares its reasons
 * and, next to them, a table saying for each reason whether retrying can succeed (`...Retryable`); an
 * error's `isRetryable` reads its reason's entry. Adding a reason without deciding fails to compile.
 * Drivers reduce their own failures to these reasons with one classifier each (`SqliteStore`,
 * `@latchkey/store-postgres`, `@latchkey/store-redis`; `OAuth` for token endpoints).
 */
import { Schema } from "effect"

/**
 * A provider definition is invalid, or providers cannot be registered together. Thrown synchronously
 * at construction (store options are a `StoreError("invalid_options")`, vault keys a `VaultError`).
 */
export class ProviderDefinitionError extends Schema.TaggedError<ProviderDefinitionError>()(
  "ProviderDefinitionError",
  {
    providerId: Schema.String,
    field: Schema.String,
    message: Schema.String
  }
) {
  get reason(): "invalid_definition" {
    return "invalid_definition"
  }
  get isRetryable(): boolean {
    return false
  }
}

export const AuthorizationErrorReason = Schema.Literals([
  "missing_state",
  "unknown_state",
  "expired_state",
  "reused_state",
  "foreign_state",
  "missing_code",
  "iss_mismatch",
  "missing_iss",
  "invalid_request",
  "access_denied",
  "provider_error",
  "invalid_grant",
  "invalid_client",
  "exchange_failed",
  "identity_failed",
  "transient",
  "unknown_provider"
])
export type AuthorizationErrorReason = typeof AuthorizationErrorReason.Type

/** Whether linking can succeed when tried again as is: only when the provider failed transiently. */
export const AuthorizationErrorRetryable: Readonly<Record<AuthorizationErrorReason, boolean>> = {
  missing_state: false,
  unknown_state: false,
  expired_state: false,
  reused_state: false,
  foreign_state: false,
  missing_code: false,
  iss_mismatch: false,
  missing_iss: false,
  invalid_request: false,
  access_denied: false,
  provider_error: false,
  invalid_grant: false,
  invalid_client: false,
  exchange_failed: false,
  identity_failed: false,
  transient: true,
  unknown_provider: false
}

/** Linking an account failed. Nothing was stored. */
export class AuthorizationError extends Schema.TaggedError<AuthorizationError>()("AuthorizationError", {
  reason: AuthorizationErrorReason,
  providerId: Schema.optional(Schema.String),
  message: Schema.String,
  /** The provider's own `error` code, when it sent one (e.g. `access_denied`, `invalid_grant`). */
  providerError: Schema.optional(Schema.String),
  providerErrorDescription: Schema.optional(Schema.String)
}) {
  get isRetryable(): boolean {
    return AuthorizationErrorRetryable[this.reason]
  }
}

export const RefreshErrorReason = Schema.Literals([
  "transient",
  "rate_limited",
  "invalid_response",
  "lease_timeout",
  "conflict",
  /** Another process's refresh of this connection got no answer yet; it is not yet judged in doubt. */
  "in_doubt",
  /** The provider answered; the new tokens are being written (the store is slow or unreachable). */
  "pending_write",
  /** This instance is shutting down (`close()`): it starts no new refresh. */
  "draining",
  /** The provider refused the client's own credentials: fix the configuration (not retryable as is). */
  "invalid_client"
])
export type RefreshErrorReason = typeof RefreshErrorReason.Type

/** Every refresh failure but bad client credentials leaves the connection intact: try again later. */
export const RefreshErrorRetryable: Readonly<Record<RefreshErrorReason, boolean>> = {
  transient: true,
  rate_limited: true,
  invalid_response: true,
  lease_timeout: true,
  conflict: true,
  in_doubt: true,
  pending_write: true,
  draining: true,
  invalid_client: false
}

/**
 * A refresh could not be completed now, but the connection is intact: the stored refresh token was
 * not rejected by the provider. Trying again later can succeed — except `invalid_client`, which needs
 * the client's configuration fixed first.
 */
export class RefreshError extends Schema.TaggedError<RefreshError>()("RefreshError", {
  reason: RefreshErrorReason,
  connectionId: Schema.String,
  message: Schema.String,
  status: Schema.optional(Schema.Number),
  retryAfterMs: Schema.optional(Schema.Number)
}) {
  get isRetryable(): boolean {
    return RefreshErrorRetryable[this.reason]
  }
}

export const ReauthorizationReason = Schema.Literals([
  "invalid_grant",
  /**
   * A refresh was interrupted after its refresh token was sent (a crash, or an answer lost in
   * transit), and the provider refused the one resend: it had rotated the token, and its answer was lost.
   */
  "refresh_interrupted",
  "refresh_token_expired",
  "no_refresh_token",
  "revoked",
  "needs_reauth"
])
export type ReauthorizationReason = typeof ReauthorizationReason.Type

/** Only the user can fix these, by linking the account again. */
export const ReauthorizationRetryable: Readonly<Record<ReauthorizationReason, boolean>> = {
  invalid_grant: false,
  refresh_interrupted: false,
  refresh_token_expired: false,
  no_refresh_token: false,
  revoked: false,
  needs_reauth: false
}

/** The user must link the account again: the provider rejected the grant, or it expired or was revoked. */
export class ReauthorizationRequired extends Schema.TaggedError<ReauthorizationRequired>()(
  "ReauthorizationRequired",
  {
    reason: ReauthorizationReason,
    connectionId: Schema.String,
    providerId: Schema.String,
    message: Schema.String,
    providerError: Schema.optional(Schema.String),
    providerErrorDescription: Schema.optional(Schema.String)
  }
) {
  get isRetryable(): boolean {
    return ReauthorizationRetryable[this.reason]
  }
}

export class ConnectionNotFound extends Schema.TaggedError<ConnectionNotFound>()("ConnectionNotFound", {
  connectionId: Schema.String,
  message: Schema.String
}) {
  get reason(): "not_found" {
    return "not_found"
  }
  get isRetryable(): boolean {
    return false
  }
}

/**
 * The Promise API's instance was closed (`close()`): a call made after it, or one still running when
 * the instance was disposed, fails with this. Nothing was left half done (refreshes in flight finish
 * their write before the disposal); the call can be made again on another instance.
 */
export class InstanceClosed extends Schema.TaggedError<InstanceClosed>()("InstanceClosed", {
  message: Schema.String
}) {
  get reason(): "closed" {
    return "closed"
  }
  get isRetryable(): boolean {
    return false
  }
}

export const StoreErrorReason = Schema.Literals([
  /** A duplicate id or account on insert, or a compare-and-set that found another version. */
  "conflict",
  /** The backend cannot be reached or failed the operation (connection refused, server restarting…). */
  "unavailable",
  /** The backend answered too late: a lock, statement or command timeout, a busy database. */
  "timeout",
  /** What the store holds cannot be read: a row that is not a record, a schema newer than this release. */
  "corrupt",
  /** The store's options are invalid (thrown at construction; `field` names the option). */
  "invalid_options"
])
export type StoreErrorReason = typeof StoreErrorReason.Type

/** The same for every store: a conflict is retried after a re-read; corrupt data and bad options are not. */
export const StoreErrorRetryable: Readonly<Record<StoreErrorReason, boolean>> = {
  conflict: true,
  unavailable: true,
  timeout: true,
  corrupt: false,
  invalid_options: false
}

/**
 * A store operation failed. Every store (memory, SQLite, PostgreSQL, Redis) reports the same reasons,
 * each classified from its driver's failure by one function per driver. `cause` keeps the driver's
 * error reduced to its name, message and code (never a bound value or a stored record).
 */
export class StoreError extends Schema.TaggedError<StoreError>()("StoreError", {
  reason: StoreErrorReason,
  message: Schema.String,
  /** The store operation that failed (`get`, `update`, …), when known. */
  operation: Schema.optional(Schema.String),
  /** The invalid option (`invalid_options` only). */
  field: Schema.optional(Schema.String),
  cause: Schema.optional(Schema.Defect())
}) {
  get isRetryable(): boolean {
    return StoreErrorRetryable[this.reason]
  }
}

export const VaultErrorReason = Schema.Literals([
  "unknown_key",
  "tampered",
  "malformed",
  "no_key",
  "invalid_key",
  "plaintext_refused"
])
export type VaultErrorReason = typeof VaultErrorReason.Type

/** A value no configured key opens, or an invalid key, stays so until the configuration changes. */
export const VaultErrorRetryable: Readonly<Record<VaultErrorReason, boolean>> = {
  unknown_key: false,
  tampered: false,
  malformed: false,
  no_key: false,
  invalid_key: false,
  plaintext_refused: false
}

/**
 * A sealed token could not be opened (wrong key, tampered or truncated ciphertext, a `plain.` value
 * while keys are configured), or the vault's configuration is invalid (`invalid_key`, `no_key` in
 * production without `plaintext: true`): then `variable` names the environment variable when known.
 */
export class VaultError extends Schema.TaggedError<VaultError>()("VaultError", {
  reason: VaultErrorReason,
  connectionId: Schema.optional(Schema.String),
  /** The vault key id concerned, when known. */
  keyId: Schema.optional(Schema.String),
  /** The environment variable the key was read from, when the app said so. */
  variable: Schema.optional(Schema.String),
  message: Schema.String
}) {
  get isRetryable(): boolean {
    return VaultErrorRetryable[this.reason]
  }
}

export const ApiErrorReason = Schema.Literals([
  /** The request failed before an answer arrived (refused, reset, unresolvable). */
  "network",
  /** No answer within `requestTimeoutMs`. */
  "timeout",
  /** The URL is not one of the provider's API origins: the connection's credentials are not sent there. */
  "forbidden_origin"
])
export type ApiErrorReason = typeof ApiErrorReason.Type

export const ApiErrorRetryable: Readonly<Record<ApiErrorReason, boolean>> = {
  network: true,
  timeout: true,
  forbidden_origin: false
}

/**
 * An API request through the ApiClient could not be completed. Like `fetch`, the ApiClient answers
 * every HTTP response with the response itself — a 401 that persists after the one refresh, a 429
 * whose `Retry-After` is too long — and fails only when no response could be had.
 */
export class ApiError extends Schema.TaggedError<ApiError>()("ApiError", {
  reason: ApiErrorReason,
  connectionId: Schema.String,
  message: Schema.String
}) {
  get isRetryable(): boolean {
    return ApiErrorRetryable[this.reason]
  }
}

/** Every error the public API can fail with. */
export type LatchkeyError =
  | AuthorizationError
  | RefreshError
  | ReauthorizationRequired
  | ConnectionNotFound
  | InstanceClosed
  | StoreError
  | VaultError
  | ApiError
