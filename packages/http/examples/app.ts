/**
 * What every framework example shares: one Latchkey instance, the route handlers, and who is signed
 * in. The session here is a plain `session=<user id>` cookie to keep the examples short: use your
 * own session system's lookup in `owner`.
 */
import { createLatchkey } from "@latchkey/core"
import { handlers } from "@latchkey/http"
import { highlevelWebhook } from "@latchkey/http/highlevel"
import { HighLevel } from "@latchkey/provider-highlevel"
import { options } from "./latchkey.config.ts"

const sessionUser = (request: Request): string | undefined =>
  /(?:^|;\s*)session=([^;]+)/.exec(request.headers.get("cookie") ?? "")?.[1]

export const createApp = () => {
  const latchkey = createLatchkey(options())
  const webhooks = HighLevel.Webhooks.make({
    ed25519PublicKey: process.env.HIGHLEVEL_WEBHOOK_ED25519_KEY!,
    appId: HighLevel.appIdOf(process.env.HIGHLEVEL_CLIENT_ID!)
  })
  const auth = handlers({
    latchkey,
    owner: async (request) => sessionUser(request),
    defaultReturnTo: "/connections",
    webhooks: {
      // Your users a HighLevel location belongs to; every install here is user-1's.
      highlevel: highlevelWebhook({ latchkey, webhooks, owners: () => ["user-1"] })
    }
  })
  /** GET /connections: the signed-in user's linked accounts (no token values in a summary). */
  const connections = async (request: Request): Promise<Response> => {
    const owner = sessionUser(request)
    if (owner === undefined) return new Response("sign in", { status: 401 })
    return Response.json(await latchkey.connections(owner))
  }
  return { latchkey, auth, connections }
}
