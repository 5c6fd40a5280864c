/**
 * The examples' Latchkey options, read from the environment as an app would: HeyGen and HighLevel,
 * each pointed at another host (the sandboxes in the tests) through its base-URL options.
 *
 * Each provider has its own redirect URI (`<APP_URL>/oauth/<provider>/callback`, registered with that
 * provider): neither HeyGen nor HighLevel sends RFC 9207 `iss` in its callback, so a shared one would
 * leave the callback unable to tell which server answered (a mix-up attack, RFC 9700 §4.4), and
 * `createLatchkey` refuses it. `auth.fetch` serves every provider's redirect URI path.
 */
import type { LatchkeyOptions } from "@latchkey/core"
import { HeyGen } from "@latchkey/provider-heygen"
import { HighLevel } from "@latchkey/provider-highlevel"

const env = (name: string): string => {
  const value = process.env[name]
  if (value === undefined || value === "") throw new Error(`set ${name}`)
  return value
}
const optional = (name: string) => process.env[name] || undefined

export const options = (): LatchkeyOptions => {
  const heygenUrl = optional("HEYGEN_URL") // one host for app, auth and api (the sandbox)
  const highlevelUrl = optional("HIGHLEVEL_URL") // marketplace and API host (the sandbox)
  const appUrl = env("APP_URL").replace(/\/$/, "") // https://app.example.com
  return {
    providers: [
      HeyGen.provider({
        clientId: env("HEYGEN_CLIENT_ID"),
        redirectUri: `${appUrl}/oauth/heygen/callback`,
        ...(heygenUrl ? { urls: { app: heygenUrl, auth: heygenUrl, api: heygenUrl } } : {})
      }),
      HighLevel.provider({
        clientId: env("HIGHLEVEL_CLIENT_ID"),
        clientSecret: env("HIGHLEVEL_CLIENT_SECRET"),
        redirectUri: `${appUrl}/oauth/highlevel/callback`, // also where marketplace installs arrive
        scopes: ["locations.readonly", "oauth.readonly"],
        ...(highlevelUrl ? { marketplaceUrl: highlevelUrl, apiUrl: highlevelUrl } : {})
      })
    ],
    ...(process.env.LATCHKEY_KEY ? { vault: { keys: [{ id: "k1", key: process.env.LATCHKEY_KEY }] } } : {})
  }
}

export default options
