/**
 * The installed-locations API client of agency (Company) connections: `GET /oauth/installedLocations`
 * lists the locations the app is installed in, and `link` / `linkAll` link each as its own connection
 * with a location token minted from the agency token (`AuthorizationFlow.linkMinted`; accountId =
 * locationId, label from `GET /locations/{id}`, `kind: "minted"`, `parentId` = the agency connection).
 *
 * Nothing else is needed afterwards: the engine renews a location token by minting it again from the
 * agency token (see LocationTokens.ts), so `latchkey.accessToken` and `latchkey.fetch` work on these
 * connections as on any other, and the Refresher keeps them fresh.
 */
import {
  ApiClient,
  AuthorizationFlow,
  type ConnectionSummary,
  connection,
  type LatchkeyClient,
  type LatchkeyError,
  type LatchkeyServices,
  Providers
} from "@latchkey/core/provider"
import { Effect, Schema } from "effect"
import { z } from "zod"
import { appIdOf } from "./internal.ts"

export const LocationErrorReason = Schema.Literals([
  "not_an_agency_connection",
  "request_failed",
  "invalid_response"
])
export type LocationErrorReason = typeof LocationErrorReason.Type

/** Listing the installed locations failed; nothing was stored. */
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

const locationError = (reason: LocationErrorReason, connectionId: string, message: string, status?: number) =>
  new LocationError({ reason, connectionId, message, ...(status !== undefined ? { status } : {}) })

/** The agency connection, its company id and its provider (fails unless it holds a Company token). */
const agencyOf = Effect.fnUntraced(function* (agencyConnectionId: string) {
  const agency = yield* connection(agencyConnectionId)
  const companyId = agency.profile?.companyId
  if (agency.profile?.userType !== "Company" || typeof companyId !== "string" || !companyId) {
    return yield* locationError(
      "not_an_agency_connection",
      agencyConnectionId,
      `Connection ${agencyConnectionId} is not an agency (Company) connection`
    )
  }
  const provider = yield* (yield* Providers).get(agency.providerId)
  return { companyId, provider }
})

/** The locations of the agency's company; by default only those the app is installed in. */
export const installed = Effect.fn("HighLevel.Locations.installed")(function* (
  agencyConnectionId: string,
  options: { readonly includeNotInstalled?: boolean } = {}
): Effect.fn.Return<ReadonlyArray<InstalledLocation>, LocationError | LatchkeyError, LatchkeyServices> {
  const { companyId, provider } = yield* agencyOf(agencyConnectionId)
  const api = yield* ApiClient.ApiClient
  const query = new URLSearchParams({ companyId, appId: appIdOf(provider.clientId) })
  if (!options.includeNotInstalled) query.set("isInstalled", "true")
  const response = yield* api.fetch(agencyConnectionId, `/oauth/installedLocations?${query}`)
  const what = "GET /oauth/installedLocations"
  if (!response.ok) {
    yield* Effect.promise(async () => response.body?.cancel())
    return yield* locationError(
      "request_failed",
      agencyConnectionId,
      `${what} answered ${response.status}`,
      response.status
    )
  }
  const body = yield* Effect.promise(() => response.json().catch(() => undefined))
  const parsed = InstalledResponse.safeParse(body)
  if (!parsed.success) {
    return yield* locationError("invalid_response", agencyConnectionId, `${what}: unexpected response shape`)
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

export interface LinkResult {
  readonly connection: ConnectionSummary
  /**
   * `agency`: stored with a location token minted from the agency token. `direct`: the location was
   * already linked with its own OAuth grant (and a refresh token), which is kept as it is.
   */
  readonly source: "agency" | "direct"
  readonly relinked: boolean
}

/** Link one location of the agency as its own connection (same owner as the agency connection). */
export const link = Effect.fn("HighLevel.Locations.link")(function* (
  agencyConnectionId: string,
  locationId: string
): Effect.fn.Return<LinkResult, LocationError | LatchkeyError, LatchkeyServices> {
  yield* agencyOf(agencyConnectionId)
  const flow = yield* AuthorizationFlow.AuthorizationFlow
  const result = yield* flow.linkMinted({ parentId: agencyConnectionId, accountId: locationId })
  return {
    connection: result.connection,
    source: result.kept ? "direct" : "agency",
    relinked: result.relinked
  } satisfies LinkResult
})

/** Link every location the app is installed in (or the ones named). */
export const linkAll = Effect.fn("HighLevel.Locations.linkAll")(function* (
  agencyConnectionId: string,
  locationIds?: ReadonlyArray<string>
): Effect.fn.Return<ReadonlyArray<LinkResult>, LocationError | LatchkeyError, LatchkeyServices> {
  const ids = locationIds ?? (yield* installed(agencyConnectionId)).map((l) => l.id)
  const results: Array<LinkResult> = []
  for (const id of ids) results.push(yield* link(agencyConnectionId, id))
  return results
})

/** The same operations with Promises, on a `createLatchkey` instance. */
export const client = (latchkey: LatchkeyClient) => ({
  installed: (agencyConnectionId: string, options?: { readonly includeNotInstalled?: boolean }) =>
    latchkey.run(installed(agencyConnectionId, options)),
  link: (agencyConnectionId: string, locationId: string) =>
    latchkey.run(link(agencyConnectionId, locationId)),
  linkAll: (agencyConnectionId: string, locationIds?: ReadonlyArray<string>) =>
    latchkey.run(linkAll(agencyConnectionId, locationIds))
})
