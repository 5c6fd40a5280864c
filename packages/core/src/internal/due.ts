import type { LatchkeyConfigShape } from "../Config.ts"
import type { ConnectionKind, ConnectionStatus } from "../Connection.ts"
import type { TokenSet } from "../TokenSet.ts"

/**
 * Whether the engine can renew a connection's access token by itself: with its refresh token, by
 * the client-credentials grant, or by minting it again from its parent connection. API keys and
 * tokens without a refresh token are never renewed.
 */
export const renewable = (tokens: TokenSet, kind: ConnectionKind): boolean =>
  kind === "client_credentials" ||
  kind === "minted" ||
  (kind === "oauth" && tokens.refreshToken !== undefined)

/**
 * When the background Refresher should next refresh a connection: ahead of access-token expiry (at
 * most half the lifetime early), and ahead of refresh-token expiry (at most a tenth of its lifetime
 * early), whichever comes first. `null` when there is nothing to keep alive. `notBefore` (a degraded
 * connection's next attempt, after a failed refresh) postpones it.
 */
export const refreshDueAt = (
  tokens: TokenSet,
  status: ConnectionStatus,
  config: Pick<LatchkeyConfigShape, "refreshAheadMs" | "refreshTokenAheadMs">,
  kind: ConnectionKind = "oauth",
  notBefore?: number | undefined
): number | null => {
  if (status !== "active" || !renewable(tokens, kind)) return null
  const candidates: Array<number> = []
  if (tokens.expiresAt !== undefined) {
    const lifetime = Math.max(0, tokens.expiresAt - tokens.obtainedAt)
    candidates.push(tokens.expiresAt - Math.min(config.refreshAheadMs, lifetime / 2))
  }
  if (tokens.refreshExpiresAt !== undefined && tokens.refreshToken !== undefined) {
    const lifetime = Math.max(0, tokens.refreshExpiresAt - tokens.obtainedAt)
    candidates.push(tokens.refreshExpiresAt - Math.min(config.refreshTokenAheadMs, lifetime / 10))
  }
  if (candidates.length === 0) return null
  const due = Math.min(...candidates)
  return notBefore !== undefined && notBefore > due ? notBefore : due
}
