/**
 * The three providers the demo links, each either on its local stand-in (the default) or on the real
 * service: HeyGen (sandbox or real), HighLevel (sandbox or real) and "Example Corp", the generic
 * provider against an in-process oidc-provider.
 */
import { randomBytes } from "node:crypto"
import type { Connection, LatchkeyClient, Provider as ProviderNs } from "@latchkey/core"
import type { FaultSpec } from "@latchkey/core/sandbox"

type Provider = ProviderNs.Provider

import { Generic } from "@latchkey/provider-generic"
import { HeyGen } from "@latchkey/provider-heygen"
import { defaultUsers, type HeyGenSandbox, startHeyGenSandbox } from "@latchkey/provider-heygen/sandbox"
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

/**
 * How a worker process rebuilds a provider (JSON only: it crosses the IPC channel, never a log).
 * Options are those of `HeyGen.provider`, `HighLevel.provider` and `Generic.provider`.
 */
export type ProviderSettings =
  | { readonly kind: "heygen"; readonly options: HeyGen.HeyGenOptions }
  | { readonly kind: "highlevel"; readonly options: HighLevel.HighLevelOptions }
  | { readonly kind: "generic"; readonly options: Generic.GenericOptions }

export const providerFromSettings = (settings: ProviderSettings): Provider => {
  switch (settings.kind) {
    case "heygen":
      return HeyGen.provider(settings.options)
    case "highlevel":
      return HighLevel.provider(settings.options)
    case "generic":
      return Generic.provider(settings.options)
  }
}

/** What the provider saw of one account's refresh tokens (sandboxes and Example Corp only). */
export interface RefreshTokenUse {
  /** Refresh requests received for this account. */
  readonly requests: number
  /** The most times any one refresh token was presented (1 when each expiry was refreshed once). */
  readonly maxPerToken: number
  /** Refresh tokens presented more than once. */
  readonly sentTwice: number
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
  readonly provider: Provider
  /** The same provider, for a worker process to rebuild. */
  readonly settings: ProviderSettings
  /** Stand-ins only: how the provider saw this account's refresh tokens. */
  refreshTokenUse?(connection: Summary): RefreshTokenUse
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
  /**
   * Sandboxes only: the sandbox's own fault switch answers the next `count` refresh requests (any
   * account's) with 503 Service Unavailable, then refreshes work again.
   */
  failNextRefreshes?(count: number): void
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

/** A fault that applies to every matching request. */
const FOREVER = Number.MAX_SAFE_INTEGER

/**
 * Queue `count` 503 answers for the refresh endpoint ahead of the demo's standing refresh delay: a
 * sandbox applies the first matching fault it was given, so the delay is queued again after them.
 */
const failRefreshes = (
  server: { inject(fault: FaultSpec): void; clearFaults(): void },
  match: { readonly endpoint: string; readonly grantType?: string },
  count: number,
  delayMs: number
) => {
  server.clearFaults()
  server.inject({ ...match, fault: "status", status: 503, times: count })
  if (delayMs > 0) server.inject({ ...match, fault: "delay", ms: delayMs, times: FOREVER })
}

/** The first day of the month after `now` (UTC), when a monthly subscription's credits reset. */
export const nextMonthlyReset = (now: number): string => {
  const d = new Date(now)
  return new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + 1, 1)).toISOString().replace(".000Z", "Z")
}

/** The HeyGen sandbox's users, with reset dates that follow the clock instead of fixed ones. */
const usersWithCurrentDates = (now: number) =>
  defaultUsers.map((u) => {
    const sub = u.data.subscription as { credits?: Record<string, { resets_at?: string | null }> } | null
    if (!sub?.credits) return u
    const credits = Object.fromEntries(
      Object.entries(sub.credits).map(([k, v]) => [
        k,
        v.resets_at ? { ...v, resets_at: nextMonthlyReset(now) } : v
      ])
    )
    return { ...u, data: { ...u.data, subscription: { ...sub, credits } } }
  })

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
        users: usersWithCurrentDates(Date.now()),
        lifetimes: { accessTokenSeconds: config.accessTokenSeconds }
      })
  if (sandbox && config.refreshDelayMs > 0) {
    sandbox.inject({ endpoint: "refresh", fault: "delay", ms: config.refreshDelayMs, times: FOREVER })
  }
  const options: HeyGen.HeyGenOptions = {
    clientId: config.heygen?.clientId ?? sandbox!.clientId,
    redirectUri,
    ...(sandbox ? { urls: sandbox.urls } : {}),
    ...(config.heygen?.scopes ? { scopes: config.heygen.scopes } : {})
  }
  const provider = HeyGen.provider(options)
  const setup: ProviderSetup = {
    id: "heygen",
    name: "HeyGen",
    monogram: "HG",
    mode: sandbox ? "sandbox" : "real",
    tagline: "Public client with PKCE · refreshes at a separate URL",
    displayScopes: provider.scopes,
    provider,
    settings: { kind: "heygen", options },
    ...(sandbox
      ? { refreshTokenUse: (c: Summary) => sandbox.registry.refreshTokenUse({ accountId: c.accountId }) }
      : {}),
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
          },
          failNextRefreshes: (count: number) =>
            failRefreshes(sandbox, { endpoint: "refresh" }, count, config.refreshDelayMs)
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
        // The demo's app installs into sub-accounts (user_type Location): the page offers locations only.
        distribution: "Location",
        lifetimes: { accessTokenSeconds: config.accessTokenSeconds }
      })
  if (sandbox && config.refreshDelayMs > 0) {
    sandbox.oauth.inject({
      endpoint: "token",
      grantType: "refresh_token",
      fault: "delay",
      ms: config.refreshDelayMs,
      times: FOREVER
    })
  }
  const options: HighLevel.HighLevelOptions = real
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
  const provider = HighLevel.provider(options)
  const setup: ProviderSetup = {
    id: "highlevel",
    name: "HighLevel",
    monogram: "HL",
    mode: sandbox ? "sandbox" : "real",
    tagline: "Client secret · single-use refresh tokens, valid a year",
    displayScopes: provider.scopes,
    provider,
    settings: { kind: "highlevel", options },
    ...(sandbox
      ? {
          refreshTokenUse: (c: Summary) =>
            sandbox.oauth.registry.refreshTokenUse({
              grant: (g) =>
                g.data.locationId === c.accountId ||
                (g.data.userType === "Company" && g.data.companyId === c.accountId)
            })
        }
      : {}),
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
          },
          failNextRefreshes: (count: number) =>
            failRefreshes(
              sandbox.oauth,
              { endpoint: "token", grantType: "refresh_token" },
              count,
              config.refreshDelayMs
            )
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
    refreshAnswerDelayMs: config.refreshDelayMs,
    accounts: EXAMPLE_ACCOUNTS
  })
  const options: Generic.GenericOptions = {
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
  }
  const provider = Generic.provider(options)
  const setup: ProviderSetup = {
    id: "example",
    name: "Example Corp",
    monogram: "EC",
    mode: "sandbox",
    tagline: "Any OAuth 2.0 server, here oidc-provider · client secret (Basic)",
    displayScopes: ["read", "write", "admin"],
    provider,
    settings: { kind: "generic", options },
    refreshTokenUse: (c) => server.refreshTokenUse(c.accountId),
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
