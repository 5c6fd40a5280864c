/**
 * An unbounded in-memory storage adapter for oidc-provider. Its own development adapter is an LRU of
 * about a thousand entries per server, which silently drops grants once a benchmark holds thousands
 * of them. Same semantics otherwise: `consume` marks a token consumed, `revokeByGrantId` removes every
 * token issued under a grant (what oidc-provider does when a consumed refresh token is replayed).
 */
import type { Adapter, AdapterFactory, AdapterPayload } from "oidc-provider"

interface Entry {
  readonly payload: AdapterPayload
  /** Epoch ms; Infinity when the model has no expiry. */
  readonly expiresAt: number
}

const GRANTABLE = new Set([
  "AccessToken",
  "AuthorizationCode",
  "RefreshToken",
  "DeviceCode",
  "BackchannelAuthenticationRequest",
  "PreAuthorizedCode"
])

/** One storage shared by every model of one server, like oidc-provider's own adapter. */
export const unboundedMemoryAdapter = (): AdapterFactory => {
  const entries = new Map<string, Entry>()
  const sessionsByUid = new Map<string, string>()
  const byUserCode = new Map<string, string>()
  /** grantId → keys of the tokens issued under it (any model). */
  const grantMembers = new Map<string, Set<string>>()

  const live = (key: string): AdapterPayload | undefined => {
    const entry = entries.get(key)
    if (entry === undefined) return undefined
    if (entry.expiresAt <= Date.now()) {
      entries.delete(key)
      return undefined
    }
    return entry.payload
  }

  return (model: string): Adapter => {
    const keyOf = (id: string) => `${model}:${id}`
    return {
      upsert: async (id, payload, expiresIn) => {
        const key = keyOf(id)
        entries.set(key, {
          payload,
          expiresAt: typeof expiresIn === "number" ? Date.now() + expiresIn * 1000 : Number.POSITIVE_INFINITY
        })
        if (model === "Session" && payload.uid) sessionsByUid.set(payload.uid, id)
        if (payload.userCode) byUserCode.set(payload.userCode, id)
        if (GRANTABLE.has(model) && payload.grantId) {
          let members = grantMembers.get(payload.grantId)
          if (members === undefined) {
            members = new Set()
            grantMembers.set(payload.grantId, members)
          }
          members.add(key)
        }
      },
      find: async (id) => live(keyOf(id)),
      findByUid: async (uid) => {
        const id = sessionsByUid.get(uid)
        return id === undefined ? undefined : live(keyOf(id))
      },
      findByUserCode: async (userCode) => {
        const id = byUserCode.get(userCode)
        return id === undefined ? undefined : live(keyOf(id))
      },
      consume: async (id) => {
        const payload = live(keyOf(id))
        if (payload !== undefined) payload.consumed = Math.floor(Date.now() / 1000)
      },
      destroy: async (id) => {
        const key = keyOf(id)
        const payload = entries.get(key)?.payload
        entries.delete(key)
        if (payload?.grantId) grantMembers.get(payload.grantId)?.delete(key)
      },
      revokeByGrantId: async (grantId) => {
        for (const key of grantMembers.get(grantId) ?? []) entries.delete(key)
        grantMembers.delete(grantId)
      }
    }
  }
}
