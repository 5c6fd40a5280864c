/**
 * Typed errors, one per failure domain. Every error has a `reason` (what went wrong, machine-readable)
 * and `isRetryable` (whether trying the same thing later can succeed). No error ever carries a token,
 * a client secret or an authorization code: messages are built from ids, statuses and the provider's
 * own `error` / `error_description` fields only.
 */
import { Schema } from "effect"

/** A provider definition (or createLatchkey option) is invalid. Thrown synchronously at construction. */
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
    return this.reason === "transient"
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
    return this.reason !== "invalid_client"
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
    return false
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

export const StoreErrorReason = Schema.Literals(["conflict", "unavailable", "corrupt", "timeout"])
export type StoreErrorReason = typeof StoreErrorReason.Type

export class StoreError extends Schema.TaggedError<StoreError>()("StoreError", {
  reason: StoreErrorReason,
  message: Schema.String,
  cause: Schema.optional(Schema.Defect())
}) {
  get isRetryable(): boolean {
    return this.reason !== "corrupt"
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
    return false
  }
}

export const ApiErrorReason = Schema.Literals([
  "unauthorized",
  "rate_limited",
  "network",
  "timeout",
  "forbidden_origin"
])
export type ApiErrorReason = typeof ApiErrorReason.Type

/** An API request through the ApiClient could not be completed. */
export class ApiError extends Schema.TaggedError<ApiError>()("ApiError", {
  reason: ApiErrorReason,
  connectionId: Schema.String,
  message: Schema.String,
  status: Schema.optional(Schema.Number),
  retryAfterMs: Schema.optional(Schema.Number)
}) {
  get isRetryable(): boolean {
    return this.reason !== "unauthorized" && this.reason !== "forbidden_origin"
  }
}

/** Every error the public API can fail with. */
export type LatchkeyError =
  | AuthorizationError
  | RefreshError
  | ReauthorizationRequired
  | ConnectionNotFound
  | StoreError
  | VaultError
  | ApiError
