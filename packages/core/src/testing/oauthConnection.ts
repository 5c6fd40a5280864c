/**
 * A decoded OAuth connection holding the given tokens, for tests and benchmarks that put connections
 * straight into a store (`Connection.toRecord`) instead of linking them through a provider.
 */
import { randomUUID } from "node:crypto"
import { Redacted } from "effect"
import type { Connection } from "../Connection.ts"

export interface OAuthConnectionOptions {
  readonly providerId: string
  readonly accessToken: string
  readonly refreshToken?: string | undefined
  /** When the access token expires (epoch ms); in the past for a connection that must be refreshed. */
  readonly expiresAt: number
  /** Default `conn_<uuid>`. */
  readonly id?: string | undefined
  /** Default "owner". */
  readonly ownerId?: string | undefined
  /** Default `acct-<uuid>`. */
  readonly accountId?: string | undefined
  /** Default the account id. */
  readonly label?: string | undefined
  /** When the tokens were obtained (default an hour before `expiresAt`). */
  readonly obtainedAt?: number | undefined
  readonly scopes?: ReadonlyArray<string> | undefined
  /** The provider's other token fields (default none). */
  readonly extras?: Readonly<Record<string, unknown>> | undefined
  /** Default 1 (a new connection). */
  readonly version?: number | undefined
  /** Created and updated at (default now). */
  readonly now?: number | undefined
}

export const oauthConnection = (options: OAuthConnectionOptions): Connection => {
  const now = options.now ?? Date.now()
  const accountId = options.accountId ?? `acct-${randomUUID()}`
  return {
    id: options.id ?? `conn_${randomUUID()}`,
    ownerId: options.ownerId ?? "owner",
    providerId: options.providerId,
    accountId,
    label: options.label ?? accountId,
    kind: "oauth",
    status: "active",
    version: options.version ?? 1,
    createdAt: now,
    updatedAt: now,
    lastRefreshAt: undefined,
    lastError: undefined,
    profile: undefined,
    tokens: {
      accessToken: Redacted.make(options.accessToken),
      refreshToken: options.refreshToken === undefined ? undefined : Redacted.make(options.refreshToken),
      tokenType: "Bearer",
      obtainedAt: options.obtainedAt ?? options.expiresAt - 3_600_000,
      expiresAt: options.expiresAt,
      refreshExpiresAt: undefined,
      scopes: [...(options.scopes ?? [])],
      extras: { ...options.extras }
    }
  }
}
