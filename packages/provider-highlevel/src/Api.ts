/**
 * What the HighLevel provider knows of HighLevel's API besides OAuth: the headers every call carries,
 * which refusals a new token would fix, and who a token belongs to (`identify`: the location from
 * `GET /locations/{id}`, or for agency tokens the company from `GET /companies/{id}`).
 */
import type { Provider } from "@latchkey/core/provider"
import { API_VERSION, accountOf, type TokenExtras, type UserType } from "./internal.ts"

/** A 401 that a new token would not fix: the Version header is missing, or a scope was not granted. */
const notAboutTheToken = (message: unknown) =>
  typeof message === "string" && /version header|not authorized for this scope/i.test(message)

/** Every call: the bearer token (an API key is sent the same way) and the API version. */
export const authorizeRequest = (credential: Provider.Credential): Record<string, string> => ({
  authorization:
    credential.kind === "oauth" ? `Bearer ${credential.accessToken}` : `Bearer ${credential.apiKey}`,
  version: API_VERSION
})

/**
 * A 401 about the Version header or an ungranted scope, or a 403 for a location the token cannot see,
 * is not fixed by a new token: only a rejected token is worth one refresh.
 */
export const classifyResponse = ({ status, body }: Provider.ApiResponseInfo): Provider.ApiResponseClass =>
  status === 429
    ? "rate_limited"
    : status === 401 && !notAboutTheToken((body as { message?: unknown } | undefined)?.message)
      ? "token_invalid"
      : "ok"

/**
 * HighLevel answers 401 {"error":"UnAuthorized!"} both for bad client credentials and for a code or
 * refresh token it does not accept: only the former is the client's fault; the latter ends the grant.
 */
export const classifyTokenError: NonNullable<Provider.ProviderDefinition["classifyTokenError"]> = ({
  error,
  description
}) =>
  error === "UnAuthorized!"
    ? /client credentials/i.test(description ?? "")
      ? "invalid_client"
      : "invalid_grant"
    : undefined

/** The JSON body; undefined when the token may not read it (403, or a scope not granted); throws otherwise. */
const readIfAllowed = async (
  response: Response,
  what: string
): Promise<Record<string, unknown> | undefined> => {
  if (response.ok) return (await response.json()) as Record<string, unknown>
  const body = (await response.json().catch(() => undefined)) as { message?: unknown } | undefined
  if (response.status === 403 || (response.status === 401 && notAboutTheToken(body?.message)))
    return undefined
  throw new Error(`${what} answered ${response.status}`)
}

/**
 * The account is the location named in the token response (or, for agency tokens, the company); the
 * label comes from GET /locations/{id} (GET /companies/{id}); without the scope to read it, the id is
 * the label.
 */
export const identify =
  (userType: UserType) =>
  async ({ tokens, fetch }: Provider.IdentifyContext): Promise<Provider.AccountIdentity> => {
    const extras = tokens.extras as TokenExtras
    const account = accountOf(extras, userType)
    if (account.userType === "Location") {
      const body = await readIfAllowed(
        await fetch(`/locations/${encodeURIComponent(account.id)}`),
        "GET /locations/{id}"
      )
      const location = (body?.location ?? {}) as Record<string, unknown>
      const name = typeof location.name === "string" && location.name ? location.name : account.id
      return {
        accountId: account.id,
        label: name,
        profile: {
          userType: "Location",
          locationId: account.id,
          ...(extras.companyId ? { companyId: extras.companyId } : {}),
          name,
          ...(typeof location.email === "string" ? { email: location.email } : {}),
          ...(typeof location.timezone === "string" ? { timezone: location.timezone } : {})
        }
      }
    }
    const body = await readIfAllowed(
      await fetch(`/companies/${encodeURIComponent(account.id)}`),
      "GET /companies/{id}"
    )
    const company = (body?.company ?? {}) as Record<string, unknown>
    const name = typeof company.name === "string" && company.name ? company.name : account.id
    return {
      accountId: account.id,
      label: name,
      profile: { userType: "Company", companyId: account.id, name }
    }
  }
