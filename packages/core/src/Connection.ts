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
  ...(c.parentId !== undefined ? { parentId: c.parentId } : {})
})

export const toRecord = (vault: VaultShape, c: Connection, refreshDueAt: number | null): ConnectionRecord => {
  const ctx = (field: string) => ({ connectionId: c.id, field })
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
    accessToken: vault.seal(Redacted.value(c.tokens.accessToken), ctx("accessToken")),
    refreshToken:
      c.tokens.refreshToken === undefined
        ? null
        : vault.seal(Redacted.value(c.tokens.refreshToken), ctx("refreshToken")),
    tokenType: c.tokens.tokenType,
    obtainedAt: c.tokens.obtainedAt,
    expiresAt: c.tokens.expiresAt ?? null,
    refreshExpiresAt: c.tokens.refreshExpiresAt ?? null,
    scopes: [...c.tokens.scopes],
    extras: vault.seal(
      JSON.stringify(
        c.tokens.dpopKey === undefined
          ? c.tokens.extras
          : { ...c.tokens.extras, [Dpop.EXTRAS_KEY]: c.tokens.dpopKey }
      ),
      ctx("extras")
    ),
    refreshDueAt,
    journal: c.journal ?? null,
    ...(c.parentId !== undefined ? { parentId: c.parentId } : {})
  }
}

export const fromRecord = (vault: VaultShape, r: ConnectionRecord): Effect.Effect<Connection, VaultError> =>
  Effect.gen(function* () {
    const ctx = (field: string) => ({ connectionId: r.id, field })
    const accessToken = yield* vault.open(r.accessToken, ctx("accessToken"))
    const refreshToken =
      r.refreshToken === null ? undefined : yield* vault.open(r.refreshToken, ctx("refreshToken"))
    const extrasText = yield* vault.open(r.extras, ctx("extras"))
    const { [Dpop.EXTRAS_KEY]: dpopKey, ...extras } = yield* Effect.try({
      try: () => JSON.parse(extrasText) as Record<string, unknown>,
      catch: () =>
        new VaultError({
          reason: "malformed",
          connectionId: r.id,
          message: `Cannot open extras of connection ${r.id}: not valid JSON`
        })
    })
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
      tokens: {
        accessToken: Redacted.make(accessToken),
        refreshToken: refreshToken === undefined ? undefined : Redacted.make(refreshToken),
        tokenType: r.tokenType,
        obtainedAt: r.obtainedAt,
        expiresAt: r.expiresAt ?? undefined,
        refreshExpiresAt: r.refreshExpiresAt ?? undefined,
        scopes: r.scopes,
        extras,
        ...(typeof dpopKey === "string" ? { dpopKey: bindDpop(dpopKey, accessToken, refreshToken) } : {})
      }
    }
  })

/** Remember the DPoP key of opened tokens (the refresh engine finds it by the refresh token). */
const bindDpop = (key: string, accessToken: string, refreshToken: string | undefined): string => {
  Dpop.bind(key, [accessToken, refreshToken])
  return key
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
  ...(typeof r.parentId === "string" ? { parentId: r.parentId } : {})
})
