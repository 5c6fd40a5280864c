/** Shared helpers: a Latchkey wired to a HighLevel sandbox, linking through the chooselocation page. */
import {
  type Connection,
  type ConnectionStore,
  createLatchkey,
  type LatchkeyClient,
  type LatchkeyOptions,
  type Provider,
  type Vault
} from "@latchkey/core"
import { modifyStored } from "@latchkey/core/testing"
import { Effect } from "effect"
import { HighLevel } from "../src/index.ts"
import type { HighLevelSandbox } from "../src/sandbox.ts"

export const SCOPES = [
  "locations.readonly",
  "users.readonly",
  "companies.readonly",
  "oauth.readonly",
  "oauth.write"
]

export const providerFor = (
  sandbox: HighLevelSandbox,
  overrides: Partial<HighLevel.HighLevelOptions> = {}
): Provider.Provider => HighLevel.provider({ ...sandbox.providerOptions, scopes: SCOPES, ...overrides })

export const latchkeyFor = (
  sandbox: HighLevelSandbox,
  options: Partial<LatchkeyOptions> & { readonly userType?: HighLevel.UserType } = {}
): LatchkeyClient => {
  const { userType, ...rest } = options
  return createLatchkey({
    providers: [providerFor(sandbox, userType ? { userType } : {})],
    ...rest,
    config: { baseBackoffMs: 10, maxBackoffMs: 200, ...rest.config }
  })
}

/** Link the location (or agency) `account` for `ownerId` through the chooselocation page. */
export const link = async (
  lk: LatchkeyClient,
  sandbox: HighLevelSandbox,
  account: string,
  ownerId = "user-1"
): Promise<Connection.ConnectionSummary> => {
  const { url } = await lk.startAuthorization({ providerId: "highlevel", ownerId })
  const callback = await sandbox.approve(url, account)
  return (await lk.completeAuthorization({ callback, providerId: "highlevel", ownerId })).connection
}

export const stored = (
  store: ConnectionStore.ConnectionStoreShape,
  id: string
): Promise<Connection.ConnectionRecord> => Effect.runPromise(store.get(id)).then((r) => r!)

/** Make the stored access token expired a day after it was issued (so the connection is due). */
export const expireAccess = (
  store: ConnectionStore.ConnectionStoreShape,
  id: string,
  now = Date.now(),
  vault?: Vault.VaultOptions
) =>
  modifyStored(
    store,
    id,
    (c) => ({ ...c, tokens: { ...c.tokens, obtainedAt: now - 86_400_000, expiresAt: now - 1_000 } }),
    vault
  )

/** The plain value of a sealed field of the memory store without a vault key. */
export const plain = (sealed: string | null) => (sealed ?? "").replace(/^plain\./, "")

export const refreshCalls = (sandbox: HighLevelSandbox) =>
  sandbox.countCalls({ endpoint: "token", grantType: "refresh_token" })

export { modifyStored }
