/**
 * Identifying the linked account from a user-info endpoint (OpenID Connect UserInfo, or any JSON
 * `GET` answering `sub`/`id` and `email`/`name`): the generic provider's default `identify`.
 */
import type { Provider } from "@latchkey/core/provider"

/** The account in a user-info body: `sub` (or `id`, `user_id`), labelled by email, name or login. */
export const readIdentity = (body: Record<string, unknown>): Provider.AccountIdentity => {
  const id = body.sub ?? body.id ?? body.user_id
  if (id === undefined || id === null || String(id).length === 0) {
    throw new Error("the user-info response has no sub or id")
  }
  const accountId = String(id)
  const label = [body.email, body.name, body.preferred_username, body.login, body.username].find(
    (v): v is string => typeof v === "string" && v.length > 0
  )
  const profile: Record<string, unknown> = {}
  for (const key of ["email", "name", "preferred_username", "login", "username", "picture"]) {
    if (typeof body[key] === "string") profile[key] = body[key]
  }
  return { accountId, label: label ?? accountId, profile }
}

/**
 * `identify` by `GET`ting `userinfo` — or, when undefined, the discovered `userinfo_endpoint` — with
 * the new access token, and reading the body with `readIdentity`.
 */
export const identifyFromUserinfo =
  (userinfo: string | undefined): Provider.ProviderDefinition["identify"] =>
  async ({ fetch, userinfoEndpoint }) => {
    const url = userinfo ?? userinfoEndpoint
    if (url === undefined) {
      throw new Error("no user-info URL: give userinfoUrl (or endpoints.userinfo) or an identify function")
    }
    const response = await fetch(url)
    if (!response.ok) throw new Error(`user-info answered ${response.status}`)
    return readIdentity((await response.json()) as Record<string, unknown>)
  }
