/**
 * Agency (Company) connections reach their sub-accounts with location tokens:
 * `GET /oauth/installedLocations` lists the locations the app is installed in, and
 * `POST /oauth/locationToken` mints a one-day token for one of them. Each location linked this way is
 * its own connection (accountId = locationId, label from `GET /locations/{id}`), marked
 * `profile.via = "agency"`. A location token has no refresh token: when it nears expiry it is minted
 * again from the agency token (which the engine keeps refreshed), never sent to the token endpoint.
 *
 * Use `Locations.accessToken` / `Locations.fetch` (or `renewDue` on a schedule) for such connections:
 * the core ApiClient alone cannot renew a token without a refresh token and would mark the connection
 * `needs_reauth` once it expired; minting again revives it.
 */
import { randomUUID } from "node:crypto"
import {
  ApiClient,
  AuthorizationFlow,
  Config,
  Connection,
  ConnectionStore,
  Events,
  type LatchkeyClient,
  Providers,
  ReauthorizationRequired,
  TokenManager,
  TokenSet,
  Vault
} from "@latchkey/core"
import { Clock, Effect, Redacted, Schema } from "effect"
import { z } from "zod"
import { appIdOf, type TokenExtras } from "./internal.ts"

export const LocationErrorReason = Schema.Literals([
  "not_an_agency_connection",
  "request_failed",
  "invalid_response",
  "identity_failed"
])
export type LocationErrorReason = typeof LocationErrorReason.Type

/** Listing or minting location tokens failed; nothing was stored. */
export class LocationError extends Schema.TaggedError<LocationError>()("LocationError", {
  reason: LocationErrorReason,
  connectionId: Schema.String,
  message: Schema.String,
  status: Schema.optional(Schema.Number)
}) {
  get isRetryable(): boolean {
    return (
      this.reason === "request_failed" &&
      (this.status === undefined || this.status >= 500 || this.status === 429)
    )
  }
}

export interface InstalledLocation {
  readonly id: string
  readonly name: string
  readonly address: string | undefined
  readonly isInstalled: boolean
}

const InstalledResponse = z.object({
  locations: z.array(
    z.looseObject({
      _id: z.string().min(1),
      name: z.string().optional(),
      address: z.string().optional(),
      isInstalled: z.boolean().optional()
    })
  )
})

const LocationTokenResponse = z.looseObject({
  access_token: z.string().min(1),
  token_type: z.string().optional(),
  expires_in: z.union([z.number(), z.string()]).optional(),
  scope: z.string().optional(),
  locationId: z.string().optional(),
  userId: z.string().optional(),
  planId: z.string().optional()
})

const locationError = (reason: LocationErrorReason, connectionId: string, message: string, status?: number) =>
  new LocationError({ reason, connectionId, message, ...(status !== undefined ? { status } : {}) })

/** The agency connection and its company id (fails unless it holds a Company token). */
const agencyOf = Effect.fnUntraced(function* (agencyConnectionId: string) {
  const tokens = yield* TokenManager.TokenManager
  const agency = yield* tokens.get(agencyConnectionId)
  const extras = agency.tokens.extras as TokenExtras
  if (extras.userType !== "Company" || !extras.companyId) {
    return yield* locationError(
      "not_an_agency_connection",
      agencyConnectionId,
      `Connection ${agencyConnectionId} is not an agency (Company) connection`
    )
  }
  const provider = yield* (yield* Providers.Providers).get(agency.providerId)
  return { agency, companyId: extras.companyId, provider }
})

const json = (connectionId: string, what: string, response: Response) =>
  Effect.tryPromise({
    try: async () => {
      if (!response.ok) {
        await response.body?.cancel()
        throw locationError(
          "request_failed",
          connectionId,
          `${what} answered ${response.status}`,
          response.status
        )
      }
      return (await response.json()) as unknown
    },
    catch: (e) =>
      e instanceof LocationError
        ? e
        : locationError("invalid_response", connectionId, `${what}: the body is not JSON`)
  })

/** The locations of the agency's company; by default only those the app is installed in. */
export const installed = Effect.fn("HighLevel.Locations.installed")(function* (
  agencyConnectionId: string,
  options: { readonly includeNotInstalled?: boolean } = {}
) {
  const { companyId, provider } = yield* agencyOf(agencyConnectionId)
  const api = yield* ApiClient.ApiClient
  const query = new URLSearchParams({ companyId, appId: appIdOf(provider.clientId) })
  if (!options.includeNotInstalled) query.set("isInstalled", "true")
  const response = yield* api.fetch(agencyConnectionId, `/oauth/installedLocations?${query}`)
  const parsed = InstalledResponse.safeParse(
    yield* json(agencyConnectionId, "GET /oauth/installedLocations", response)
  )
  if (!parsed.success) {
    return yield* locationError(
      "invalid_response",
      agencyConnectionId,
      "GET /oauth/installedLocations: unexpected response shape"
    )
  }
  return parsed.data.locations
    .map(
      (l): InstalledLocation => ({
        id: l._id,
        name: l.name ?? l._id,
        address: l.address,
        isInstalled: l.isInstalled ?? true
      })
    )
    .filter((l) => options.includeNotInstalled || l.isInstalled)
})

/** Mint a location token from the agency token: the tokens, and who the location is. */
const mint = Effect.fnUntraced(function* (agencyConnectionId: string, locationId: string) {
  const { agency, companyId, provider } = yield* agencyOf(agencyConnectionId)
  const api = yield* ApiClient.ApiClient
  const config = yield* Config.LatchkeyConfig
  const response = yield* api.fetch(agencyConnectionId, "/oauth/locationToken", {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded", accept: "application/json" },
    body: new URLSearchParams({ companyId, locationId })
  })
  const parsed = LocationTokenResponse.safeParse(
    yield* json(agencyConnectionId, "POST /oauth/locationToken", response)
  )
  if (!parsed.success) {
    return yield* locationError(
      "invalid_response",
      agencyConnectionId,
      "POST /oauth/locationToken: the answer is not a token response"
    )
  }
  const now = yield* Clock.currentTimeMillis
  const base = TokenSet.fromResponse(provider, parsed.data, now)
  const tokens: TokenSet.TokenSet = {
    ...base,
    refreshToken: undefined,
    refreshExpiresAt: undefined,
    extras: { ...base.extras, userType: "Location", locationId, companyId }
  }
  const identity = yield* Effect.tryPromise({
    try: () =>
      provider.identify({
        tokens,
        fetch: AuthorizationFlow.authorizedFetch(
          provider,
          { kind: "oauth", accessToken: Redacted.value(tokens.accessToken), tokenType: tokens.tokenType },
          config
        )
      }),
    catch: (cause) =>
      locationError(
        "identity_failed",
        agencyConnectionId,
        `could not identify location ${locationId} (${cause instanceof Error ? cause.message : "unknown error"})`
      )
  })
  return { agency, provider, tokens, identity }
})

const isAgencyMinted = (c: Connection.Connection) => c.profile?.via === "agency"

export interface LinkResult {
  readonly connection: Connection.ConnectionSummary
  /** `agency`: stored from a location token. `direct`: the location was already linked with its own
   * OAuth grant (and a refresh token), which is kept as it is. */
  readonly source: "agency" | "direct"
  readonly relinked: boolean
}

/** Link one location of the agency as its own connection (same owner as the agency connection). */
export const link = Effect.fn("HighLevel.Locations.link")(function* (
  agencyConnectionId: string,
  locationId: string
) {
  const { agency, provider, tokens, identity } = yield* mint(agencyConnectionId, locationId)
  const store = yield* ConnectionStore.ConnectionStore
  const manager = yield* TokenManager.TokenManager
  const vault = yield* Vault.Vault
  const events = yield* Events.Events
  const profile = {
    ...identity.profile,
    via: "agency",
    agencyConnectionId,
    companyId: (tokens.extras as TokenExtras).companyId
  }
  for (let attempt = 0; ; attempt++) {
    const now = yield* Clock.currentTimeMillis
    const record = yield* store.findByAccount(agency.ownerId, provider.id, identity.accountId)
    const existing = record === undefined ? undefined : yield* manager.get(record.id)
    if (existing !== undefined && existing.status === "active" && !isAgencyMinted(existing)) {
      return { connection: Connection.summary(existing), source: "direct", relinked: false } as LinkResult
    }
    const next: Connection.Connection = {
      id: existing?.id ?? `conn_${randomUUID()}`,
      ownerId: agency.ownerId,
      providerId: provider.id,
      accountId: identity.accountId,
      label: identity.label,
      kind: "oauth",
      tokens,
      status: "active",
      version: existing ? existing.version + 1 : 1,
      createdAt: existing?.createdAt ?? now,
      updatedAt: now,
      lastRefreshAt: existing ? now : undefined,
      lastError: undefined,
      profile
    }
    const written = yield* (
      existing ? manager.write(next) : store.insert(Connection.toRecord(vault, next, null))
    ).pipe(
      Effect.as(true),
      Effect.catchTag("StoreError", (e) =>
        e.reason === "conflict" && attempt < 3 ? Effect.succeed(false) : Effect.fail(e)
      )
    )
    if (!written) continue
    const connection = Connection.summary(next)
    yield* events.publish({
      type: "linked",
      at: now,
      connectionId: connection.id,
      ownerId: connection.ownerId,
      providerId: connection.providerId,
      connection,
      relinked: existing !== undefined
    })
    return { connection, source: "agency", relinked: existing !== undefined } as LinkResult
  }
})

/** Link every location the app is installed in (or the ones named). */
export const linkAll = Effect.fn("HighLevel.Locations.linkAll")(function* (
  agencyConnectionId: string,
  locationIds?: ReadonlyArray<string>
) {
  const ids = locationIds ?? (yield* installed(agencyConnectionId)).map((l) => l.id)
  const results: Array<LinkResult> = []
  for (const id of ids) results.push(yield* link(agencyConnectionId, id))
  return results
})

/**
 * Mint the location's token again when `need` holds on the stored copy (compare-and-set; minting
 * spends nothing, so a lost race just re-reads). A connection marked `needs_reauth` only because its
 * token expired is revived; a revoked one stays revoked. When the agency itself must be linked again,
 * the location is marked `needs_reauth` too.
 */
const renew = Effect.fnUntraced(function* (
  connectionId: string,
  need: (c: Connection.Connection, now: number) => boolean
) {
  const manager = yield* TokenManager.TokenManager
  const events = yield* Events.Events
  for (let attempt = 0; ; attempt++) {
    const c = yield* manager.get(connectionId)
    if (c.status === "revoked") {
      return yield* new ReauthorizationRequired({
        reason: "revoked",
        connectionId,
        providerId: c.providerId,
        message: `Connection ${connectionId} was revoked; link the location again`
      })
    }
    const now = yield* Clock.currentTimeMillis
    if (c.status === "active" && !need(c, now)) return c
    const agencyConnectionId = String(c.profile?.agencyConnectionId ?? "")
    const minted = yield* mint(agencyConnectionId, c.accountId).pipe(
      Effect.catchTag("ReauthorizationRequired", (e) =>
        Effect.gen(function* () {
          const at = yield* Clock.currentTimeMillis
          if (c.status === "active") {
            yield* manager
              .write({
                ...c,
                status: "needs_reauth",
                version: c.version + 1,
                updatedAt: at,
                lastError: { code: "agency_needs_reauth", description: e.message, at }
              })
              .pipe(Effect.ignore)
            yield* events.publish({
              type: "needs_reauth",
              at,
              connectionId,
              ownerId: c.ownerId,
              providerId: c.providerId,
              reason: "agency_needs_reauth",
              message: `The agency connection ${agencyConnectionId} must be linked again`
            })
          }
          return yield* new ReauthorizationRequired({
            reason: e.reason,
            connectionId,
            providerId: c.providerId,
            message: `Location ${connectionId} cannot be renewed: the agency connection ${agencyConnectionId} must be linked again`
          })
        })
      )
    )
    const at = yield* Clock.currentTimeMillis
    const next: Connection.Connection = {
      ...c,
      tokens: minted.tokens,
      label: minted.identity.label,
      status: "active",
      version: c.version + 1,
      updatedAt: at,
      lastRefreshAt: at,
      lastError: undefined
    }
    const wrote = yield* manager.write(next).pipe(
      Effect.as(true),
      Effect.catchTag("StoreError", (e) =>
        e.reason === "conflict" && attempt < 3 ? Effect.succeed(false) : Effect.fail(e)
      )
    )
    if (!wrote) continue
    yield* events.publish({
      type: "refreshed",
      at,
      connectionId,
      ownerId: c.ownerId,
      providerId: c.providerId,
      expiresAt: next.tokens.expiresAt,
      refreshExpiresAt: undefined
    })
    return next
  }
})

const stale = (skewMs: number) => (c: Connection.Connection, now: number) =>
  !TokenSet.isFresh(c.tokens, now, skewMs)

/** A valid access token for any HighLevel connection; agency-minted locations are minted again when due. */
export const accessToken = Effect.fn("HighLevel.Locations.accessToken")(function* (connectionId: string) {
  const manager = yield* TokenManager.TokenManager
  const config = yield* Config.LatchkeyConfig
  const c = yield* manager.get(connectionId)
  if (!isAgencyMinted(c)) return yield* manager.accessToken(connectionId)
  return (yield* renew(connectionId, stale(config.skewMs))).tokens.accessToken
})

/**
 * `fetch` through any HighLevel connection. For agency-minted locations the token is minted again
 * first when due, and once more if the API refuses it.
 */
export const fetch = Effect.fn("HighLevel.Locations.fetch")(function* (
  connectionId: string,
  input: string | URL,
  init?: RequestInit
) {
  const manager = yield* TokenManager.TokenManager
  const api = yield* ApiClient.ApiClient
  const config = yield* Config.LatchkeyConfig
  const c = yield* manager.get(connectionId)
  if (!isAgencyMinted(c)) return yield* api.fetch(connectionId, input, init)
  const used = yield* renew(connectionId, stale(config.skewMs))
  return yield* api.fetch(connectionId, input, init).pipe(
    // The ApiClient refreshes a refused token through the token endpoint, which a location token
    // cannot use; it marks the connection needs_reauth (no_refresh_token). Mint again and retry once.
    Effect.catchIf(
      (e) => e._tag === "ReauthorizationRequired" && e.reason === "no_refresh_token",
      () =>
        renew(
          connectionId,
          (current) => Redacted.value(current.tokens.accessToken) === Redacted.value(used.tokens.accessToken)
        ).pipe(Effect.andThen(api.fetch(connectionId, input, init)))
    )
  )
})

/**
 * Mint again every agency-minted location of `ownerId` whose token is due (within the Refresher's
 * `refreshAheadMs` of expiry) or that expired into `needs_reauth`. Run it on a schedule next to the
 * Refresher; returns how many were renewed and how many failed.
 */
export const renewDue = Effect.fn("HighLevel.Locations.renewDue")(function* (
  ownerId: string,
  providerId = "highlevel"
) {
  const store = yield* ConnectionStore.ConnectionStore
  const config = yield* Config.LatchkeyConfig
  const now = yield* Clock.currentTimeMillis
  let renewed = 0
  let failed = 0
  const dueAt = (expiresAt: number, obtainedAt: number) =>
    expiresAt - Math.min(config.refreshAheadMs, (expiresAt - obtainedAt) / 2)
  for (const r of yield* store.listByOwner(ownerId)) {
    if (r.providerId !== providerId || r.profile?.via !== "agency" || r.status === "revoked") continue
    // Expired into needs_reauth through the plain ApiClient, or waiting for its agency to come back.
    const stuck =
      r.status === "needs_reauth" &&
      (r.lastError?.code === "no_refresh_token" || r.lastError?.code === "agency_needs_reauth")
    if (!stuck && (r.expiresAt === null || dueAt(r.expiresAt, r.obtainedAt) > now)) continue
    const result = yield* renew(
      r.id,
      (c, t) => c.tokens.expiresAt !== undefined && dueAt(c.tokens.expiresAt, c.tokens.obtainedAt) <= t
    ).pipe(Effect.result)
    if (result._tag === "Success") renewed++
    else failed++
  }
  return { renewed, failed }
})

/** The same operations with Promises, on a `createLatchkey` instance. */
export const client = (latchkey: LatchkeyClient) => ({
  installed: (agencyConnectionId: string, options?: { readonly includeNotInstalled?: boolean }) =>
    latchkey.run(installed(agencyConnectionId, options)),
  link: (agencyConnectionId: string, locationId: string) =>
    latchkey.run(link(agencyConnectionId, locationId)),
  linkAll: (agencyConnectionId: string, locationIds?: ReadonlyArray<string>) =>
    latchkey.run(linkAll(agencyConnectionId, locationIds)),
  accessToken: (connectionId: string) => latchkey.run(Effect.map(accessToken(connectionId), Redacted.value)),
  fetch: (connectionId: string, input: string | URL, init?: RequestInit) =>
    latchkey.run(fetch(connectionId, input, init)),
  renewDue: (ownerId: string, providerId?: string) => latchkey.run(renewDue(ownerId, providerId))
})
