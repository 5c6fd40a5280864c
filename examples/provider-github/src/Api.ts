/**
 * The two GitHub API calls the provider makes: `GET /user` to identify the account, and
 * `DELETE /applications/{client_id}/grant` to revoke (GitHub's own revocation, not RFC 7009).
 */
import type { Provider } from "@latchkey/core/provider"
import { Redacted } from "effect"
import { z } from "zod"

/** What `GET /user` answers (the fields this provider reads). */
const User = z.object({
  id: z.number().int(),
  login: z.string().min(1),
  name: z.string().nullish(),
  email: z.string().nullish(),
  avatar_url: z.string().nullish(),
  html_url: z.string().nullish()
})

/** The account: the numeric `id` (stable; logins can be renamed), labelled by the `login`. */
export const identifyUser: Provider.ProviderDefinition["identify"] = async ({ fetch }) => {
  const response = await fetch("/user")
  if (!response.ok) throw new Error(`GET /user answered ${response.status}`)
  const user = User.parse(await response.json())
  return {
    accountId: String(user.id),
    label: user.login,
    profile: {
      login: user.login,
      ...(user.name ? { name: user.name } : {}),
      ...(user.email ? { email: user.email } : {}),
      ...(user.avatar_url ? { avatarUrl: user.avatar_url } : {}),
      ...(user.html_url ? { htmlUrl: user.html_url } : {})
    }
  }
}

/**
 * Revoke by deleting the grant (`DELETE <applications>/{client_id}/grant`, HTTP Basic client
 * credentials, the access token in a JSON body): every token of the grant ends. True on 204.
 */
export const deleteGrant =
  (
    applications: string,
    headers: Readonly<Record<string, string>>
  ): NonNullable<Provider.ProviderDefinition["revoke"]> =>
  async ({ tokens, clientId, clientSecret, fetch }) => {
    if (clientSecret === undefined) return false
    const basic = Buffer.from(`${clientId}:${Redacted.value(clientSecret)}`).toString("base64")
    const response = await fetch(`${applications}/${encodeURIComponent(clientId)}/grant`, {
      method: "DELETE",
      headers: { ...headers, authorization: `Basic ${basic}`, "content-type": "application/json" },
      body: JSON.stringify({ access_token: Redacted.value(tokens.accessToken) })
    })
    await response.body?.cancel()
    return response.status === 204
  }
