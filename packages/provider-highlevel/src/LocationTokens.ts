/**
 * Location tokens as a credential source (`Provider.MintSource`): an agency (Company) token mints a
 * one-day token for one of its locations with `POST /oauth/locationToken`. A location token has no
 * refresh token; the engine mints it again from the agency token (which it keeps refreshed) when it
 * nears expiry, under the location connection's single flight and lease: one mint per expiry.
 */
import type { Provider } from "@latchkey/core/provider"
import type { TokenExtras } from "./internal.ts"

const companyOf = (parent: Provider.MintContext["parent"]) => (parent.extras as TokenExtras).companyId

export const locationTokens: Provider.MintSource = {
  canMint: (parent) => (parent.extras as TokenExtras).userType === "Company" && Boolean(companyOf(parent)),
  request: ({ parent, accountId }) => ({
    url: "/oauth/locationToken",
    init: {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded", accept: "application/json" },
      body: new URLSearchParams({ companyId: companyOf(parent) ?? "", locationId: accountId })
    }
  }),
  extras: ({ parent, accountId }) => ({
    userType: "Location",
    locationId: accountId,
    companyId: companyOf(parent)
  })
}
