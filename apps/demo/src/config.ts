/**
 * The demo's settings, read from the environment. With nothing set it runs offline: the HeyGen and
 * HighLevel sandboxes and an oidc-provider server ("Example Corp") on 127.0.0.1. Real client ids and
 * secrets switch HeyGen and HighLevel to the real services (see README.md).
 */
import { resolve } from "node:path"

export interface RealHeyGen {
  readonly clientId: string
  readonly redirectUri: string
  readonly scopes: ReadonlyArray<string> | undefined
}

export interface RealHighLevel {
  readonly clientId: string
  readonly clientSecret: string
  readonly redirectUri: string
  readonly scopes: ReadonlyArray<string>
  readonly userType: "Location" | "Company"
}

export interface DemoConfig {
  /** 0 picks a free port. */
  readonly port: number
  /** The origin browsers use, when the app sits behind a proxy (default `http://127.0.0.1:<port>`). */
  readonly publicUrl: string | undefined
  /** SQLite file and the generated vault key live here. */
  readonly dataDir: string
  /** A 32-byte key (base64url or hex); default: generated at first start and kept in the data dir. */
  readonly vaultKey: string | undefined
  /** Access-token lifetime of the sandboxes and the Example Corp server, seconds. */
  readonly accessTokenSeconds: number
  /** Pause between background Refresher sweeps, milliseconds. */
  readonly refresherIntervalMs: number
  /** Worker processes doing the background refresh work, sharing the SQLite file (0: the web process refreshes). */
  readonly workers: number
  /** The stand-ins hold each refresh answer this long (ms), so that refreshes are in flight long enough to interrupt. */
  readonly refreshDelayMs: number
  /** Real HeyGen instead of the sandbox. */
  readonly heygen: RealHeyGen | undefined
  /** Real HighLevel instead of the sandbox. */
  readonly highlevel: RealHighLevel | undefined
}

/** A setting is missing or malformed; the message names the variable, never its value. */
export class ConfigError extends Error {
  readonly variable: string
  constructor(variable: string, message: string) {
    super(`${variable}: ${message}`)
    this.name = "ConfigError"
    this.variable = variable
  }
}

export const DEFAULT_PORT = 3000
export const DEFAULT_ACCESS_TOKEN_SECONDS = 40
export const DEFAULT_REFRESHER_INTERVAL_SECONDS = 5
export const DEFAULT_WORKERS = 3
export const DEFAULT_REFRESH_DELAY_MS = 1500
export const DEFAULT_HIGHLEVEL_SCOPES = [
  "locations.readonly",
  "users.readonly",
  "companies.readonly",
  "oauth.readonly",
  "oauth.write"
]

/** `apps/demo/.latchkey`: ignored by git (the repository ignores `.latchkey`). */
export const defaultDataDir = resolve(import.meta.dirname, "..", ".latchkey")

type Env = Readonly<Record<string, string | undefined>>

const value = (env: Env, name: string): string | undefined => {
  const v = env[name]?.trim()
  return v === undefined || v === "" ? undefined : v
}

const integer = (env: Env, name: string, fallback: number, min: number, max: number): number => {
  const raw = value(env, name)
  if (raw === undefined) return fallback
  if (!/^\d+$/.test(raw)) throw new ConfigError(name, "must be a whole number")
  const n = Number(raw)
  if (n < min || n > max) throw new ConfigError(name, `must be between ${min} and ${max}`)
  return n
}

const absoluteUrl = (env: Env, name: string): string | undefined => {
  const raw = value(env, name)
  if (raw === undefined) return undefined
  let url: URL
  try {
    url = new URL(raw)
  } catch {
    throw new ConfigError(name, "must be an absolute URL")
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") throw new ConfigError(name, "must be http(s)")
  if (url.hash) throw new ConfigError(name, "must not have a fragment")
  return url.href
}

const scopes = (raw: string | undefined): ReadonlyArray<string> | undefined =>
  raw === undefined ? undefined : raw.split(/[\s,]+/).filter((s) => s.length > 0)

/** All variables of a group must be set together (so a typo does not silently fall back to the sandbox). */
const group = (env: Env, names: ReadonlyArray<string>): boolean => {
  const set = names.filter((n) => value(env, n) !== undefined)
  if (set.length === 0) return false
  const missing = names.filter((n) => value(env, n) === undefined)
  if (missing.length > 0) {
    throw new ConfigError(
      missing[0]!,
      `is required when ${set.join(", ")} ${set.length > 1 ? "are" : "is"} set`
    )
  }
  return true
}

export const readConfig = (env: Env = process.env): DemoConfig => {
  const heygenReal = group(env, ["HEYGEN_CLIENT_ID", "HEYGEN_REDIRECT_URI"])
  const highlevelReal = group(env, [
    "HIGHLEVEL_CLIENT_ID",
    "HIGHLEVEL_CLIENT_SECRET",
    "HIGHLEVEL_REDIRECT_URI"
  ])
  const userType = value(env, "HIGHLEVEL_USER_TYPE") ?? "Location"
  if (userType !== "Location" && userType !== "Company") {
    throw new ConfigError("HIGHLEVEL_USER_TYPE", "must be Location or Company")
  }
  const vaultKey = value(env, "LATCHKEY_VAULT_KEY")
  if (vaultKey !== undefined) {
    const bytes = /^[0-9a-f]{64}$/i.test(vaultKey)
      ? Buffer.from(vaultKey, "hex")
      : Buffer.from(vaultKey, "base64url")
    if (bytes.length !== 32) throw new ConfigError("LATCHKEY_VAULT_KEY", "must be 32 bytes, base64url or hex")
  }
  return {
    port: integer(env, "PORT", DEFAULT_PORT, 0, 65535),
    publicUrl: absoluteUrl(env, "PUBLIC_URL"),
    dataDir: resolve(value(env, "DEMO_DATA_DIR") ?? defaultDataDir),
    vaultKey,
    accessTokenSeconds: integer(env, "DEMO_ACCESS_TOKEN_SECONDS", DEFAULT_ACCESS_TOKEN_SECONDS, 2, 86_400),
    refresherIntervalMs:
      integer(env, "DEMO_REFRESHER_INTERVAL_SECONDS", DEFAULT_REFRESHER_INTERVAL_SECONDS, 1, 3600) * 1000,
    workers: integer(env, "DEMO_WORKERS", DEFAULT_WORKERS, 0, 8),
    refreshDelayMs: integer(env, "DEMO_REFRESH_DELAY_MS", DEFAULT_REFRESH_DELAY_MS, 0, 10_000),
    heygen: heygenReal
      ? {
          clientId: value(env, "HEYGEN_CLIENT_ID")!,
          redirectUri: absoluteUrl(env, "HEYGEN_REDIRECT_URI")!,
          scopes: scopes(value(env, "HEYGEN_SCOPES"))
        }
      : undefined,
    highlevel: highlevelReal
      ? {
          clientId: value(env, "HIGHLEVEL_CLIENT_ID")!,
          clientSecret: value(env, "HIGHLEVEL_CLIENT_SECRET")!,
          redirectUri: absoluteUrl(env, "HIGHLEVEL_REDIRECT_URI")!,
          scopes: scopes(value(env, "HIGHLEVEL_SCOPES")) ?? DEFAULT_HIGHLEVEL_SCOPES,
          userType
        }
      : undefined
  }
}
