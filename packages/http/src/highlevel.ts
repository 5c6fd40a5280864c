/**
 * HighLevel's app webhooks as a route handler: the delivery is verified by
 * `@latchkey/provider-highlevel`'s own `Webhooks` (Ed25519 `x-ghl-signature`, or the legacy RSA
 * `x-wh-signature`, over the raw body; stale timestamps and replayed ids refused) before anything is
 * read, then applied (an UNINSTALL marks the location's connections revoked).
 */
import type { LatchkeyClient } from "@latchkey/core"
import { HighLevel } from "@latchkey/provider-highlevel"
import type { Handler } from "./handlers.ts"

export interface HighLevelWebhookOptions {
  readonly latchkey: LatchkeyClient
  /** `HighLevel.Webhooks.make({ ed25519PublicKey, rsaPublicKey, appId })`. */
  readonly webhooks: HighLevel.Webhooks.Webhooks
  /** Your users a location or company belongs to (their connections are searched on UNINSTALL). */
  readonly owners: HighLevel.Webhooks.HandleInput["owners"]
  /** Default `"highlevel"`. */
  readonly providerId?: string | undefined
  /** Called with each applied delivery (e.g. to record an INSTALL). */
  readonly onEvent?: ((result: HighLevel.Webhooks.HandleResult) => void | Promise<void>) | undefined
  /** Told about failures other than a refused delivery; the response never carries them. */
  readonly onError?: ((error: unknown, request: Request) => void) | undefined
}

const json = (status: number, body: unknown) =>
  new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json; charset=utf-8", "cache-control": "no-store" }
  })

/**
 * `POST` a delivery: 200 once applied (and for a duplicate, already applied), 401 for a missing or
 * bad signature, a stale or foreign delivery, 500 when no key for its signature is configured.
 */
export const highlevelWebhook = (options: HighLevelWebhookOptions): Handler => {
  return async (request) => {
    if (request.method !== "POST") return json(405, { error: "method_not_allowed" })
    const body = new Uint8Array(await request.arrayBuffer())
    try {
      const result = await HighLevel.Webhooks.handleWebhook(options.latchkey, options.webhooks, {
        body,
        headers: request.headers,
        owners: options.owners,
        ...(options.providerId !== undefined ? { providerId: options.providerId } : {})
      })
      await options.onEvent?.(result)
      return json(200, { received: result.event.type, revoked: result.revoked.length })
    } catch (error) {
      if ((error as { _tag?: unknown })?._tag === "WebhookError") {
        const refused = error as InstanceType<typeof HighLevel.Webhooks.WebhookError>
        return refused.status === 200
          ? json(200, { received: "duplicate" })
          : json(refused.status, { error: refused.reason })
      }
      options.onError?.(error, request)
      return json(500, { error: "internal" })
    }
  }
}
