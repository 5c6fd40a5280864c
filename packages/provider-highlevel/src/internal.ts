/** Facts about HighLevel shared by the provider, location tokens, the rate limiter and the sandbox. */
import { z } from "zod"

/** The API version every call must name (without it HighLevel answers 401 "version header was not found"). */
export const API_VERSION = "2021-07-28"
export const MARKETPLACE_URL = "https://marketplace.gohighlevel.com"
export const WHITE_LABEL_MARKETPLACE_URL = "https://marketplace.leadconnectorhq.com"
export const API_URL = "https://services.leadconnectorhq.com"
export const ACCESS_TOKEN_SECONDS = 86_399
export const REFRESH_TOKEN_SECONDS = 365 * 24 * 3600

export type UserType = "Location" | "Company"

/** The fields of HighLevel's token response kept with the connection (`locationToken` answers included). */
export const TokenExtras = z.looseObject({
  userType: z.enum(["Location", "Company"]).optional(),
  locationId: z.string().optional(),
  companyId: z.string().optional(),
  userId: z.string().optional(),
  planId: z.string().optional(),
  approvedLocations: z.array(z.string()).optional(),
  isBulkInstallation: z.boolean().optional()
})
export type TokenExtras = z.infer<typeof TokenExtras>

/** The app id HighLevel expects in `/oauth/installedLocations`: the client id up to its first `-`. */
export const appIdOf = (clientId: string): string => clientId.split("-")[0]!

/** Which account a token belongs to: its location, or for agency tokens its company. */
export const accountOf = (extras: TokenExtras, fallback: UserType): { userType: UserType; id: string } => {
  const userType = extras.userType ?? fallback
  const id = userType === "Company" ? extras.companyId : extras.locationId
  if (!id)
    throw new Error(`the token response names no ${userType === "Company" ? "companyId" : "locationId"}`)
  return { userType, id }
}
