/**
 * The sandbox's side of HighLevel app webhooks: its own Ed25519 and RSA key pairs (the public halves
 * are what an app configures, as it would HighLevel's published keys), INSTALL / UNINSTALL payloads in
 * HighLevel's shape, signed over the exact bytes sent, and delivery by POST to the app's URL.
 */
import { generateKeyPairSync, type KeyObject, randomUUID, sign } from "node:crypto"

export type Signing = "ed25519" | "rsa" | "both" | "none" | "invalid"

export interface WebhookKeys {
  /** PEM (SPKI) public keys, for `HighLevel.Webhooks.make({ ed25519PublicKey, rsaPublicKey })`. */
  readonly ed25519PublicKey: string
  readonly rsaPublicKey: string
}

export interface Delivery {
  readonly url: string
  readonly status: number
  readonly body: string
  readonly payload: Record<string, unknown>
}

export interface DeliverOptions {
  /** Which signature headers to send (default `both`); `invalid` signs with a foreign key. */
  readonly signing?: Signing
  /** Override payload fields, e.g. an old `timestamp` or a repeated `webhookId`. */
  readonly payload?: Readonly<Record<string, unknown>>
}

export const makeSigner = (now: () => number) => {
  const ed = generateKeyPairSync("ed25519")
  const rsa = generateKeyPairSync("rsa", { modulusLength: 2048 })
  const foreign = generateKeyPairSync("ed25519")
  const keys: WebhookKeys = {
    ed25519PublicKey: ed.publicKey.export({ type: "spki", format: "pem" }).toString(),
    rsaPublicKey: rsa.publicKey.export({ type: "spki", format: "pem" }).toString()
  }
  const sig = (algorithm: string | null, body: Buffer, key: KeyObject) =>
    sign(algorithm, body, key).toString("base64")

  const headers = (body: Buffer, signing: Signing): Record<string, string> => {
    switch (signing) {
      case "none":
        return {}
      case "ed25519":
        return { "x-ghl-signature": sig(null, body, ed.privateKey) }
      case "rsa":
        return { "x-wh-signature": sig("sha256", body, rsa.privateKey) }
      case "both":
        return {
          "x-ghl-signature": sig(null, body, ed.privateKey),
          "x-wh-signature": sig("sha256", body, rsa.privateKey)
        }
      case "invalid":
        return { "x-ghl-signature": sig(null, body, foreign.privateKey) }
    }
  }

  const deliver = async (
    url: string,
    base: Record<string, unknown>,
    options: DeliverOptions = {}
  ): Promise<Delivery> => {
    const payload = {
      ...base,
      timestamp: new Date(now()).toISOString(),
      webhookId: randomUUID(),
      ...options.payload
    }
    const raw = Buffer.from(JSON.stringify(payload), "utf8")
    const response = await fetch(url, {
      method: "POST",
      headers: { "content-type": "application/json", ...headers(raw, options.signing ?? "both") },
      body: raw,
      signal: AbortSignal.timeout(10_000)
    })
    return { url, status: response.status, body: await response.text(), payload }
  }

  return { keys, deliver, headers }
}
