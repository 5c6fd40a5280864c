/**
 * One linked account: an owner (the app's user) linked to an account at a provider. `Connection` is
 * the decoded form apps see; `ConnectionRecord` is the JSON-safe stored form, in which the token
 * fields are sealed by the Vault.
 */
import { Effect, Redacted } from "effect"
import { VaultError } from "./Errors.ts"
import * as Dpop from "./internal/dpop.ts"
import type { TokenSet } from "./TokenSet.ts"
import type { VaultShape } from "./Vault.ts"

export type ConnectionStatus = "active" | "needs_reauth" | "revoked"
/**
 * Where a connection's credential comes from, and so how the engine renews it (the provider declares
 * which it offers, see `Provider.ProviderDefinition`):
 * - `oauth`: a user's authorization (code grant); renewed with the refresh token, when there is one.
 * - `client_credentials`: the client's own (machine-to-machine, no user); renewed by the
 *   client-credentials grant.
 * - `minted`: minted from a parent connection's access token (`parentId`, e.g. a HighLevel location
 *   token minted from its agency's); renewed by minting again.
 * - `api_key`: a key the app was given; never renewed.
 */
export type ConnectionKind = "oauth" | "api_key" | "client_credentials" | "minted"

/**
 * The streak of consecutive failed refreshes of a connection whose grant is still good (stored with
 * the connection while its status stays `active`, so that the Refresher keeps retrying it). Written
 * once per failed refresh, by the lease holder; cleared by the next successful refresh (or any
 * change of status). Never holds a token: a reason and a message built from the provider's answer.
 */
export interface RefreshFailures {
  /** Consecutive failed refreshes since the last success (at least 1). */
  readonly count: number
  /** When the first of them failed (epoch ms). */
  readonly since: number
  /** The last failure's `RefreshError` reason (see `DegradedReason`). */
  readonly reason: string
  /** The last failure's message (ids, statuses and the provider's error fields; no secret). */
  readonly message: string
  /** When the last failure happened (epoch ms). */
  readonly at: number
  /** When the background Refresher tries again at the earliest (epoch ms); a caller needing a token may try sooner. */
  readonly nextAttemptAt: number
}

/** Why a connection's status is `needs_reauth` or `revoked` (stored beside the status). */
export interface StatusReason {
  readonly reason: string
  /** When the status was set (epoch ms). */
  readonly at: number
}

/** Why a connection is `degraded`: the reason of its last failed refresh. */
export type DegradedReason = "transient" | "rate_limited" | "invalid_response" | "invalid_client"
/** Why a connection must be linked again: the `ReauthorizationRequired` reason that marked it. */
export type NeedsReauthReason =
  | "invalid_grant"
  | "refresh_interrupted"
  | "refresh_token_expired"
  | "no_refresh_token"
  | "needs_reauth"
/**
 * Why a connection is `revoked`: `revoked_at_provider` (the provider said so, e.g. an uninstall
 * webhook; the default of `markRevoked`) or `revoked_by_user` (the app records that its user
 * withdrew the access).
 */
export type RevokedReason = "revoked_at_provider" | "revoked_by_user"

/**
 * A connection's health, derived from its stored status and its refresh-failure streak:
 * - `active`: refreshes succeed (or none was needed yet);
 * - `degraded`: the stored status is still `active` (the grant is good and the engine keeps
 *   retrying) but the last `failures` refreshes failed; it becomes `active` again by itself on the
 *   next successful refresh;
 * - `needs_reauth` / `revoked`: the stored status; the account must be linked again.
 */
export type ConnectionHealth =
  | { readonly state: "active" }
  | {
      readonly state: "degraded"
      readonly reason: DegradedReason
      /** The last failure's message (no secret). */
      readonly message: string
      /** Consecutive failed refreshes. */
      readonly failures: number
      /** When the first of them failed (epoch ms). */
      readonly since: number
      /** When the last one failed (epoch ms). */
      readonly lastFailureAt: number
      /** When the background Refresher tries again at the earliest (epoch ms). */
      readonly nextAttemptAt: number
    }
  | { readonly state: "needs_reauth"; readonly reason: NeedsReauthReason; readonly since: number | undefined }
  | { readonly state: "revoked"; readonly reason: RevokedReason; readonly since: number | undefined }

export type ConnectionHealthState = ConnectionHealth["state"]

export interface LastError {
  readonly code: string
  readonly description?: string | undefined
  readonly at: number
}

/**
 * The refresh journal: written to the connection, durably, BEFORE its refresh token is sent, and
 * cleared in the same write that stores the new tokens. A process that finds an entry whose holder's
 * lease has lapsed knows that refresh is in doubt (the provider may have rotated the token and the
 * answer been lost). It never holds a token: only a fingerprint of the one being sent.
 */
export interface RefreshJournal {
  /** The process (`config.holderId`) that sends the refresh token. */
  readonly holder: string
  /** The fence of its refresh lease. */
  readonly fence: number
  /** When its lease was granted, on the store's clock: no later than the first send. */
  readonly startedAt: number
  /** A fingerprint (truncated SHA-256, base64url) of the refresh token being sent. */
  readonly fingerprint: string
  /** When another process first found this entry unfinished after its holder's lease lapsed (store clock). */
  readonly suspectedAt?: number | undefined
  /** The one resend of the same refresh token allowed when the first answer was lost: who, and when (store clock). */
  readonly resend?: { readonly holder: string; readonly fence: number; readonly at: number } | undefined
}

export interface Connection {
  readonly id: string
  readonly ownerId: string
  readonly providerId: string
  readonly accountId: string
  readonly label: string
  readonly kind: ConnectionKind
  readonly tokens: TokenSet
  readonly status: ConnectionStatus
  /** Incremented by every write; stores use it for compare-and-set. */
  readonly version: number
  readonly createdAt: number
  readonly updatedAt: number
  readonly lastRefreshAt: number | undefined
  readonly lastError: LastError | undefined
  readonly profile: Readonly<Record<string, unknown>> | undefined
  /** A refresh in flight (or in doubt), when there is one. */
  readonly journal?: RefreshJournal | undefined
  /** For `minted` connections: the connection whose access token mints this one's. */
  readonly parentId?: string | undefined
  /** The streak of failed refreshes while the status is `active` (absent when healthy). */
  readonly failures?: RefreshFailures | undefined
  /** Why the status is `needs_reauth` or `revoked` (absent when active, or in rows written before it existed). */
  readonly statusReason?: StatusReason | undefined
}

/** What a store persists. Every field is JSON-safe; token fields are sealed strings. */
export interface ConnectionRecord {
  readonly id: string
  readonly ownerId: string
  readonly providerId: string
  readonly accountId: string
  readonly label: string
  readonly kind: ConnectionKind
  readonly status: ConnectionStatus
  readonly version: number
  readonly createdAt: number
  readonly updatedAt: number
  readonly lastRefreshAt: number | null
  readonly lastError: LastError | null
  readonly profile: Record<string, unknown> | null
  readonly accessToken: string
  readonly refreshToken: string | null
  readonly tokenType: string
  readonly obtainedAt: number
  readonly expiresAt: number | null
  readonly refreshExpiresAt: number | null
  readonly scopes: ReadonlyArray<string>
  /** Sealed JSON of the provider extras (they may hold secrets). */
  readonly extras: string
  /** When the background Refresher should next look at this connection (null: never). */
  readonly refreshDueAt: number | null
  /** The refresh journal (absent in records written before it existed: read as null). */
  readonly journal?: RefreshJournal | null | undefined
  /** For `minted` connections, the parent connection's id (absent otherwise). */
  readonly parentId?: string | null | undefined
  /** The failed-refresh streak (absent in healthy connections and in records written before it existed). */
  readonly failures?: RefreshFailures | null | undefined
  /** Why the status is not `active` (absent in active connections and in records written before it existed). */
  readonly statusReason?: StatusReason | null | undefined
}

/** A connection as apps see it, without any token value: safe to send to a browser or a log. */
export interface ConnectionSummary {
  readonly id: string
  readonly ownerId: string
  readonly providerId: string
  readonly accountId: string
  readonly label: string
  readonly kind: ConnectionKind
  readonly status: ConnectionStatus
  readonly version: number
  readonly createdAt: number
  readonly updatedAt: number
  readonly lastRefreshAt: number | undefined
  readonly lastError: LastError | undefined
  readonly profile: Readonly<Record<string, unknown>> | undefined
  /** When the current tokens were issued (epoch ms): the start of their lifetime. */
  readonly obtainedAt: number
  readonly expiresAt: number | undefined
  readonly refreshExpiresAt: number | undefined
  readonly hasRefreshToken: boolean
  readonly scopes: ReadonlyArray<string>
  /** For `minted` connections: the connection this one's token is minted from. */
  readonly parentId?: string | undefined
  /**
   * Its health: `active`, `degraded` (refreshes failing transiently; `status` stays `active`),
   * `needs_reauth` or `revoked`, with a machine-readable `reason` for every state but `active`.
   */
  readonly health: ConnectionHealth
}

const finite = (v: unknown): v is number => typeof v === "number" && Number.isFinite(v)

/** The failure streak of a stored record, or undefined when absent or not well formed (older or foreign rows). */
export const readFailures = (v: unknown): RefreshFailures | undefined => {
  if (typeof v !== "object" || v === null) return undefined
  const f = v as Record<string, unknown>
  return finite(f.count) &&
    f.count > 0 &&
    finite(f.since) &&
    finite(f.at) &&
    finite(f.nextAttemptAt) &&
    typeof f.reason === "string" &&
    typeof f.message === "string"
    ? {
        count: f.count,
        since: f.since,
        reason: f.reason,
        message: f.message,
        at: f.at,
        nextAttemptAt: f.nextAttemptAt
      }
    : undefined
}

/** The status reason of a stored record, or undefined when absent or not well formed. */
export const readStatusReason = (v: unknown): StatusReason | undefined => {
  if (typeof v !== "object" || v === null) return undefined
  const r = v as Record<string, unknown>
  return typeof r.reason === "string" && finite(r.at) ? { reason: r.reason, at: r.at } : undefined
}

const NEEDS_REAUTH_REASONS: ReadonlySet<string> = new Set<NeedsReauthReason>([
  "invalid_grant",
  "refresh_interrupted",
  "refresh_token_expired",
  "no_refresh_token",
  "needs_reauth"
])
const DEGRADED_REASONS: ReadonlySet<string> = new Set<DegradedReason>([
  "transient",
  "rate_limited",
  "invalid_response",
  "invalid_client"
])

/**
 * The health of a connection from its stored fields. Rows written before the status reason existed
 * get theirs from `lastError`: `refresh_interrupted` when it says so, the reason itself when
 * `lastError.code` is one, otherwise `invalid_grant` (the provider refused the grant) for
 * `needs_reauth`, and `revoked_at_provider` for `revoked`.
 */
export const healthOf = (c: {
  readonly status: ConnectionStatus
  readonly failures?: RefreshFailures | undefined
  readonly statusReason?: StatusReason | undefined
  readonly lastError?: LastError | undefined
}): ConnectionHealth => {
  if (c.status === "revoked") {
    const reason = c.statusReason?.reason
    return {
      state: "revoked",
      reason: reason === "revoked_by_user" ? "revoked_by_user" : "revoked_at_provider",
      since: c.statusReason?.at
    }
  }
  if (c.status === "needs_reauth") {
    const stored = c.statusReason?.reason
    const code = c.lastError?.code
    const reason =
      stored !== undefined && NEEDS_REAUTH_REASONS.has(stored)
        ? stored
        : code !== undefined && NEEDS_REAUTH_REASONS.has(code)
          ? code
          : "invalid_grant"
    return {
      state: "needs_reauth",
      reason: reason as NeedsReauthReason,
      since: c.statusReason?.at ?? c.lastError?.at
    }
  }
  const f = c.failures
  if (f === undefined) return { state: "active" }
  return {
    state: "degraded",
    reason: (DEGRADED_REASONS.has(f.reason) ? f.reason : "transient") as DegradedReason,
    message: f.message,
    failures: f.count,
    since: f.since,
    lastFailureAt: f.at,
    nextAttemptAt: f.nextAttemptAt
  }
}

export const summary = (c: Connection): ConnectionSummary => ({
  id: c.id,
  ownerId: c.ownerId,
  providerId: c.providerId,
  accountId: c.accountId,
  label: c.label,
  kind: c.kind,
  status: c.status,
  version: c.version,
  createdAt: c.createdAt,
  updatedAt: c.updatedAt,
  lastRefreshAt: c.lastRefreshAt,
  lastError: c.lastError,
  profile: c.profile,
  obtainedAt: c.tokens.obtainedAt,
  expiresAt: c.tokens.expiresAt,
  refreshExpiresAt: c.tokens.refreshExpiresAt,
  hasRefreshToken: c.tokens.refreshToken !== undefined,
  scopes: c.tokens.scopes,
  ...(c.parentId !== undefined ? { parentId: c.parentId } : {}),
  health: healthOf(c)
})

/** A connection and the stored record it was read from (or written as). */
export interface Stored {
  readonly record: ConnectionRecord
  readonly connection: Connection
}

/**
 * The same refresh journal (as stored: absent and null are no journal). Compared field by field: a
 * store may give the fields back in another order.
 */
export const sameJournal = (
  a: RefreshJournal | null | undefined,
  b: RefreshJournal | null | undefined
): boolean => {
  if (a === b) return true
  if (a == null || b == null) return a == null && b == null
  return (
    a.holder === b.holder &&
    a.fence === b.fence &&
    a.startedAt === b.startedAt &&
    a.fingerprint === b.fingerprint &&
    a.suspectedAt === b.suspectedAt &&
    a.resend?.holder === b.resend?.holder &&
    a.resend?.fence === b.resend?.fence &&
    a.resend?.at === b.resend?.at
  )
}

/**
 * The record of `c`, its token fields sealed by the vault. With `base` (the stored form of the copy
 * `c` was derived from), a refresh token or extras that did not change (extras: the same JSON) keep
 * their ciphertext when it is sealed with the vault's write key (the same value, sealed the same way:
 * nothing to seal again);
 * the access token is sealed afresh, so that every record written has a ciphertext of its own (a write
 * whose answer was lost is recognised by it) — except by the write that opens a refresh journal of
 * its own (a holder and fence the base copy does not carry, which no other write can carry at that
 * version): that record is recognised by its journal (`sameJournal`), and the unchanged access token
 * keeps its ciphertext (one seal fewer per refresh).
 */
export const toRecord = (
  vault: VaultShape,
  c: Connection,
  refreshDueAt: number | null,
  base?: Stored | undefined
): ConnectionRecord => {
  const ctx = (field: string) => ({ connectionId: c.id, field })
  const prior =
    base !== undefined && base.record.id === c.id && base.record.version === base.connection.version
      ? base
      : undefined
  const current = (sealed: string | null): sealed is string =>
    sealed !== null && vault.keyIdOf(sealed) === vault.writeKeyId
  const opensJournal =
    prior !== undefined &&
    c.journal != null &&
    (prior.connection.journal == null ||
      prior.connection.journal.holder !== c.journal.holder ||
      prior.connection.journal.fence !== c.journal.fence)
  const access = c.tokens.accessToken
  const priorAccess = prior?.connection.tokens.accessToken
  const sameAccess =
    opensJournal &&
    priorAccess !== undefined &&
    (access === priorAccess || Redacted.value(access) === Redacted.value(priorAccess)) &&
    current(prior!.record.accessToken)
  const refresh = c.tokens.refreshToken
  const priorRefresh = prior?.connection.tokens.refreshToken
  const sameRefresh =
    refresh !== undefined &&
    priorRefresh !== undefined &&
    (refresh === priorRefresh || Redacted.value(refresh) === Redacted.value(priorRefresh)) &&
    current(prior!.record.refreshToken)
  // Extras are the same value when they are the same object or serialize alike (a refresh's answer
  // builds a new object, usually with the same fields: none at all for most providers).
  const sameExtras =
    prior !== undefined &&
    c.tokens.dpopKey === prior.connection.tokens.dpopKey &&
    current(prior.record.extras) &&
    (c.tokens.extras === prior.connection.tokens.extras ||
      JSON.stringify(c.tokens.extras) === JSON.stringify(prior.connection.tokens.extras))
  return {
    id: c.id,
    ownerId: c.ownerId,
    providerId: c.providerId,
    accountId: c.accountId,
    label: c.label,
    kind: c.kind,
    status: c.status,
    version: c.version,
    createdAt: c.createdAt,
    updatedAt: c.updatedAt,
    lastRefreshAt: c.lastRefreshAt ?? null,
    lastError: c.lastError ?? null,
    profile: c.profile ? { ...c.profile } : null,
    accessToken: sameAccess
      ? prior!.record.accessToken
      : vault.seal(Redacted.value(access), ctx("accessToken")),
    refreshToken:
      refresh === undefined
        ? null
        : sameRefresh
          ? prior!.record.refreshToken
          : vault.seal(Redacted.value(refresh), ctx("refreshToken")),
    tokenType: c.tokens.tokenType,
    obtainedAt: c.tokens.obtainedAt,
    expiresAt: c.tokens.expiresAt ?? null,
    refreshExpiresAt: c.tokens.refreshExpiresAt ?? null,
    scopes: [...c.tokens.scopes],
    extras: sameExtras
      ? prior.record.extras
      : vault.seal(
          JSON.stringify(
            c.tokens.dpopKey === undefined
              ? c.tokens.extras
              : { ...c.tokens.extras, [Dpop.EXTRAS_KEY]: c.tokens.dpopKey }
          ),
          ctx("extras")
        ),
    refreshDueAt,
    journal: c.journal ?? null,
    ...(c.parentId !== undefined ? { parentId: c.parentId } : {}),
    ...(c.failures !== undefined ? { failures: c.failures } : {}),
    ...(c.statusReason !== undefined ? { statusReason: c.statusReason } : {})
  }
}

/**
 * The connection of a record, its sealed fields opened by the vault. With `base` (an earlier record of
 * the same connection and its decoded form), a field whose ciphertext is the very one `base` holds is
 * taken from `base` without opening it again: the same ciphertext under the same key, connection and
 * field (all bound into it) can only open to the same value. A write that changes no token (a journal,
 * a failure streak, a status, an expiry) then costs its readers no decryption.
 */
export const fromRecord = (
  vault: VaultShape,
  r: ConnectionRecord,
  base?: Stored | undefined
): Effect.Effect<Connection, VaultError> =>
  Effect.gen(function* () {
    const ctx = (field: string) => ({ connectionId: r.id, field })
    const prior = base !== undefined && base.record.id === r.id ? base : undefined
    const priorTokens = prior?.connection.tokens
    const accessToken =
      prior !== undefined && prior.record.accessToken === r.accessToken
        ? priorTokens!.accessToken
        : Redacted.make(yield* vault.open(r.accessToken, ctx("accessToken")))
    const refreshToken =
      r.refreshToken === null
        ? undefined
        : prior !== undefined &&
            prior.record.refreshToken === r.refreshToken &&
            priorTokens!.refreshToken !== undefined
          ? priorTokens!.refreshToken
          : Redacted.make(yield* vault.open(r.refreshToken, ctx("refreshToken")))
    let extras: Record<string, unknown>
    let dpopKey: unknown
    if (prior !== undefined && prior.record.extras === r.extras) {
      extras = priorTokens!.extras
      dpopKey = priorTokens!.dpopKey
    } else {
      const extrasText = yield* vault.open(r.extras, ctx("extras"))
      const { [Dpop.EXTRAS_KEY]: key, ...rest } = yield* Effect.try({
        try: () => JSON.parse(extrasText) as Record<string, unknown>,
        catch: () =>
          new VaultError({
            reason: "malformed",
            connectionId: r.id,
            message: `Cannot open extras of connection ${r.id}: not valid JSON`
          })
      })
      extras = rest
      dpopKey = key
    }
    return {
      id: r.id,
      ownerId: r.ownerId,
      providerId: r.providerId,
      accountId: r.accountId,
      label: r.label,
      kind: r.kind,
      status: r.status,
      version: r.version,
      createdAt: r.createdAt,
      updatedAt: r.updatedAt,
      lastRefreshAt: r.lastRefreshAt ?? undefined,
      lastError: r.lastError ?? undefined,
      profile: r.profile ?? undefined,
      journal: r.journal ?? undefined,
      ...(typeof r.parentId === "string" ? { parentId: r.parentId } : {}),
      ...optionalHealthFields(r),
      tokens: {
        accessToken,
        refreshToken,
        tokenType: r.tokenType,
        obtainedAt: r.obtainedAt,
        expiresAt: r.expiresAt ?? undefined,
        refreshExpiresAt: r.refreshExpiresAt ?? undefined,
        scopes: r.scopes,
        extras,
        ...(typeof dpopKey === "string"
          ? {
              dpopKey: bindDpop(
                dpopKey,
                Redacted.value(accessToken),
                refreshToken === undefined ? undefined : Redacted.value(refreshToken)
              )
            }
          : {})
      }
    }
  })

/** Remember the DPoP key of opened tokens (the refresh engine finds it by the refresh token). */
const bindDpop = (key: string, accessToken: string, refreshToken: string | undefined): string => {
  Dpop.bind(key, [accessToken, refreshToken])
  return key
}

/** The health fields of a record, decoded (absent or malformed ones are left out). */
const optionalHealthFields = (
  r: ConnectionRecord
): { failures?: RefreshFailures; statusReason?: StatusReason } => {
  const failures = r.status === "active" ? readFailures(r.failures) : undefined
  const statusReason = r.status === "active" ? undefined : readStatusReason(r.statusReason)
  return {
    ...(failures !== undefined ? { failures } : {}),
    ...(statusReason !== undefined ? { statusReason } : {})
  }
}

/** Summary straight from a record, without opening any sealed field. */
export const summaryOfRecord = (r: ConnectionRecord): ConnectionSummary => ({
  id: r.id,
  ownerId: r.ownerId,
  providerId: r.providerId,
  accountId: r.accountId,
  label: r.label,
  kind: r.kind,
  status: r.status,
  version: r.version,
  createdAt: r.createdAt,
  updatedAt: r.updatedAt,
  lastRefreshAt: r.lastRefreshAt ?? undefined,
  lastError: r.lastError ?? undefined,
  profile: r.profile ?? undefined,
  obtainedAt: r.obtainedAt,
  expiresAt: r.expiresAt ?? undefined,
  refreshExpiresAt: r.refreshExpiresAt ?? undefined,
  hasRefreshToken: r.refreshToken !== null,
  scopes: r.scopes,
  ...(typeof r.parentId === "string" ? { parentId: r.parentId } : {}),
  health: healthOf({
    status: r.status,
    ...optionalHealthFields(r),
    lastError: r.lastError ?? undefined
  })
})
