/**
 * The three providers the demo links, each either on its local stand-in (the default) or on the real
 * service: HeyGen (sandbox or real), HighLevel (sandbox or real) and "Example Corp", the generic
 * provider against an in-process oidc-provider.
 */
import { randomBytes } from "node:crypto"
import type { Connection, LatchkeyClient, Provider } from "@latchkey/core"
import { Generic } from "@latchkey/provider-generic"
import { HeyGen } from "@latchkey/provider-heygen"
import { type HeyGenSandbox, startHeyGenSandbox } from "@latchkey/provider-heygen/sandbox"
import { HighLevel } from "@latchkey/provider-highlevel"
import {
  type HighLevelSandbox,
  startSandbox as startHighLevelSandbox
} from "@latchkey/provider-highlevel/sandbox"
import { type OidcServer, startOidcServer } from "@latchkey/testkit-oidc"
import type { DemoConfig } from "./config.ts"

type Summary = Connection.ConnectionSummary

/** One fact shown on a card, e.g. `Plan: enterprise`. */
export interface Fact {
  readonly label: string
  readonly value: string
}

export interface ProviderSetup {
  readonly id: string
  readonly name: string
  /** Two letters shown as the provider's mark. */
  readonly monogram: string
  readonly mode: "sandbox" | "real"
  /** One line under the provider's name. */
  readonly tagline: string
  /** Scopes shown in the group header. */
  readonly displayScopes: ReadonlyArray<string>
  readonly provider: Provider.Provider
  /** The path of the redirect URI: the demo serves the callback there. */
  readonly callbackPath: string
  /** Origin of the authorization page (allowed as a form target by the CSP). */
  readonly authorizationOrigin: string
  /** What "Call the API" requests for a connection. */
  apiRequest(connection: Summary): { readonly url: string; readonly label: string }
  /** Facts read live from the provider's API (e.g. HeyGen's plan and credits). */
  liveFacts?(latchkey: LatchkeyClient, connection: Summary): Promise<ReadonlyArray<Fact>>
  /** Facts from what was stored at link time. */
  storedFacts(connection: Summary): ReadonlyArray<Fact>
  /** Sandboxes only: the provider ends this account's grant, as if the user removed the app there. */
  revokeAtProvider?(connection: Summary): Promise<boolean>
  close(): Promise<void>
}

export interface Providers {
  readonly setups: ReadonlyArray<ProviderSetup>
  /** The running stand-ins, for tests and sandbox tools. */
  readonly sandboxes: {
    readonly heygen: HeyGenSandbox | undefined
    readonly highlevel: HighLevelSandbox | undefined
    readonly example: OidcServer
  }
  close(): Promise<void>
}

const origin = (url: string) => new URL(url).origin
const str = (v: unknown): string | undefined => (typeof v === "string" && v.length > 0 ? v : undefined)

const formatAmount = (n: number) => n.toLocaleString("en-US", { maximumFractionDigits: 2 })
const formatDate = (iso: string) => {
  const d = new Date(iso)
  return Number.isNaN(d.getTime())
    ? iso
    : d.toLocaleDateString("en-GB", { day: "numeric", month: "short", year: "numeric", timeZone: "UTC" })
}

/** Plan and credits from HeyGen's `GET /v3/users/me`. */
export const heygenFacts = (user: HeyGen.HeyGenUser): ReadonlyArray<Fact> => {
  const c = HeyGen.credits(user)
  const facts: Array<Fact> = []
  if (c.plan !== null) facts.push({ label: "Plan", value: c.plan })
  else if (c.billingType === "usage_based") facts.push({ label: "Billing", value: "usage-based" })
  if (c.remaining !== null) {
    facts.push({
      label: c.billingType === "wallet" ? "Wallet balance" : "Credits left",
      value: c.unit === "usd" ? `$${c.remaining.toFixed(2)}` : formatAmount(c.remaining)
    })
  }
  if (c.resetsAt !== null) facts.push({ label: "Resets", value: formatDate(c.resetsAt) })
  return facts
}

const heygen = async (config: DemoConfig, origin_: string) => {
  const callbackPath = config.heygen ? new URL(config.heygen.redirectUri).pathname : "/oauth/heygen/callback"
  const redirectUri = config.heygen?.redirectUri ?? `${origin_}${callbackPath}`
  const sandbox = config.heygen
    ? undefined
    : await startHeyGenSandbox({
        redirectUris: [redirectUri],
        lifetimes: { accessTokenSeconds: config.accessTokenSeconds }
      })
  const provider = HeyGen.provider({
    clientId: config.heygen?.clientId ?? sandbox!.clientId,
    redirectUri,
    ...(sandbox ? { urls: sandbox.urls } : {}),
    ...(config.heygen?.scopes ? { scopes: config.heygen.scopes } : {})
  })
  const setup: ProviderSetup = {
    id: "heygen",
    name: "HeyGen",
    monogram: "HG",
    mode: sandbox ? "sandbox" : "real",
    tagline: "Public client with PKCE · refreshes at a separate URL",
    displayScopes: provider.scopes,
    provider,
    callbackPath,
    authorizationOrigin: origin(provider.endpoints!.authorization),
    apiRequest: () => ({ url: "/v3/users/me", label: "GET /v3/users/me" }),
    liveFacts: async (latchkey, c) => heygenFacts(await HeyGen.account(latchkey, c.id)),
    storedFacts: (c) => {
      const name = str(c.profile?.name)
      return name ? [{ label: "Name", value: name }] : []
    },
    ...(sandbox
      ? {
          revokeAtProvider: async (c: Summary) => {
            let revoked = false
            for (const grant of sandbox.registry.grants({ accountId: c.accountId })) {
              revoked = sandbox.registry.revokeGrant(grant.id) || revoked
            }
            return revoked
          }
        }
      : {}),
    close: () => sandbox?.close() ?? Promise.resolve()
  }
  return { setup, sandbox }
}

const highlevel = async (config: DemoConfig, origin_: string) => {
  const real = config.highlevel
  const callbackPath = real ? new URL(real.redirectUri).pathname : "/oauth/highlevel/callback"
  const redirectUri = real?.redirectUri ?? `${origin_}${callbackPath}`
  const sandbox = real
    ? undefined
    : await startHighLevelSandbox({
        redirectUris: [redirectUri],
        lifetimes: { accessTokenSeconds: config.accessTokenSeconds }
      })
  const provider = HighLevel.provider(
    real
      ? {
          clientId: real.clientId,
          clientSecret: real.clientSecret,
          redirectUri,
          scopes: real.scopes,
          userType: real.userType
        }
      : {
          ...sandbox!.providerOptions,
          scopes: [
            "locations.readonly",
            "users.readonly",
            "companies.readonly",
            "oauth.readonly",
            "oauth.write"
          ]
        }
  )
  const setup: ProviderSetup = {
    id: "highlevel",
    name: "HighLevel",
    monogram: "HL",
    mode: sandbox ? "sandbox" : "real",
    tagline: "Client secret · single-use refresh tokens, valid a year",
    displayScopes: provider.scopes,
    provider,
    callbackPath,
    authorizationOrigin: origin(provider.endpoints!.authorization),
    apiRequest: (c) =>
      c.profile?.userType === "Company"
        ? { url: `/companies/${encodeURIComponent(c.accountId)}`, label: "GET /companies/{companyId}" }
        : { url: `/locations/${encodeURIComponent(c.accountId)}`, label: "GET /locations/{locationId}" },
    storedFacts: (c) => {
      const p = c.profile ?? {}
      const facts: Array<Fact> = p.userType === "Company" ? [{ label: "Install", value: "agency" }] : []
      const email = str(p.email)
      const timezone = str(p.timezone)
      if (email) facts.push({ label: "E-mail", value: email })
      if (timezone) facts.push({ label: "Time zone", value: timezone })
      return facts
    },
    ...(sandbox
      ? {
          revokeAtProvider: async (c: Summary) => {
            const target =
              c.profile?.userType === "Company" ? { companyId: c.accountId } : { locationId: c.accountId }
            await sandbox.uninstall(target)
            return true
          }
        }
      : {}),
    close: () => sandbox?.close() ?? Promise.resolve()
  }
  return { setup, sandbox }
}

const EXAMPLE_ACCOUNTS = {
  alice: { name: "Alice Example", email: "alice@example.com" },
  bob: { name: "Bob Example", email: "bob@example.com" }
}

const example = async (config: DemoConfig, origin_: string) => {
  const callbackPath = "/oauth/example/callback"
  const redirectUri = `${origin_}${callbackPath}`
  const clientSecret = randomBytes(24).toString("base64url")
  const server = await startOidcServer({
    redirectUris: [redirectUri],
    clients: [
      {
        client_id: "latchkey-demo",
        client_secret: clientSecret,
        token_endpoint_auth_method: "client_secret_basic"
      }
    ],
    accessTokenTtl: config.accessTokenSeconds,
    accounts: EXAMPLE_ACCOUNTS
  })
  const provider = Generic.provider({
    id: "example",
    name: "Example Corp",
    clientId: "latchkey-demo",
    clientSecret,
    clientAuth: "client_secret_basic",
    redirectUri,
    endpoints: server.endpoints,
    // openid + offline_access make oidc-provider issue a refresh token; prompt=consent shows its consent page.
    scopes: ["openid", "offline_access", "email", "profile", "read", "write", "admin"],
    authorizationParams: { prompt: "consent" }
  })
  const setup: ProviderSetup = {
    id: "example",
    name: "Example Corp",
    monogram: "EC",
    mode: "sandbox",
    tagline: "Any OAuth 2.0 server, here oidc-provider · client secret (Basic)",
    displayScopes: ["read", "write", "admin"],
    provider,
    callbackPath,
    authorizationOrigin: origin(server.endpoints.authorization),
    apiRequest: () => ({ url: server.endpoints.userinfo, label: "GET /me (user info)" }),
    storedFacts: (c) => {
      const granted = c.scopes.filter((s) => s === "read" || s === "write" || s === "admin")
      const name = str(c.profile?.name)
      return [
        ...(name ? [{ label: "Name", value: name }] : []),
        { label: "Scopes", value: granted.length > 0 ? granted.join(" ") : "none of read, write, admin" }
      ]
    },
    close: () => server.close()
  }
  return { setup, server }
}

/** Start the stand-ins and build the providers. `origin` is where the demo itself is reachable. */
export const startProviders = async (config: DemoConfig, origin_: string): Promise<Providers> => {
  const started: Array<{ close(): Promise<void> }> = []
  try {
    const h = await heygen(config, origin_)
    started.push(h.setup)
    const l = await highlevel(config, origin_)
    started.push(l.setup)
    const e = await example(config, origin_)
    started.push(e.setup)
    const setups = [h.setup, l.setup, e.setup]
    return {
      setups,
      sandboxes: { heygen: h.sandbox, highlevel: l.sandbox, example: e.server },
      close: async () => {
        await Promise.allSettled(setups.map((s) => s.close()))
      }
    }
  } catch (error) {
    await Promise.allSettled(started.map((s) => s.close()))
    throw error
  }
}
