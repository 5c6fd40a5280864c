/**
 * The vault key that seals tokens in the demo's store: `LATCHKEY_VAULT_KEY` when set, else a key
 * generated at first start and kept in `<dataDir>/vault-key.json` (mode 0600). Losing that file makes
 * the stored tokens unreadable, as losing a production key would.
 */
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { Vault } from "@latchkey/core"

export interface LoadedKey {
  readonly key: Vault.VaultKey
  /** Where it came from: the environment, a file read, or a file just written. */
  readonly source: "env" | "file" | "generated"
  readonly path: string | undefined
}

export class VaultKeyError extends Error {
  constructor(message: string) {
    super(message)
    this.name = "VaultKeyError"
  }
}

export const loadVaultKey = (dataDir: string, fromEnv: string | undefined): LoadedKey => {
  if (fromEnv !== undefined) return { key: { id: "env", key: fromEnv }, source: "env", path: undefined }
  mkdirSync(dataDir, { recursive: true })
  const path = join(dataDir, "vault-key.json")
  if (existsSync(path)) {
    let parsed: unknown
    try {
      parsed = JSON.parse(readFileSync(path, "utf8"))
    } catch {
      throw new VaultKeyError(
        `${path} is not valid JSON; restore it, or remove the data directory to start over`
      )
    }
    const { id, key } = (parsed ?? {}) as { id?: unknown; key?: unknown }
    if (typeof id !== "string" || typeof key !== "string" || !/^[A-Za-z0-9_-]+$/.test(id)) {
      throw new VaultKeyError(`${path} must hold {"id": "...", "key": "..."}`)
    }
    return { key: { id, key }, source: "file", path }
  }
  const key = { id: `demo-${new Date().toISOString().slice(0, 10)}`, key: Vault.generateKey() }
  writeFileSync(path, `${JSON.stringify(key, null, 2)}\n`, { mode: 0o600, flag: "wx" })
  chmodSync(path, 0o600)
  return { key, source: "generated", path }
}
