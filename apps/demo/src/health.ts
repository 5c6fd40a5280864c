/**
 * A connection's health for the cards — active, degraded, needs reconnect, revoked — with a
 * machine-readable reason: the engine's own `ConnectionSummary.health` (recorded in the connection by
 * whichever process refreshed it, so it covers every worker of the fleet), put in words here.
 */
export type CardHealth =
  | { readonly state: "active" }
  | {
      readonly state: "degraded"
      /** The last failure's reason (`transient`, `rate_limited`, `invalid_response`, …). */
      readonly reason: string
      /** Failed refreshes in a row since the last success. */
      readonly failures: number
      /** When the first of them failed (epoch ms). */
      readonly since: number
      /** When the engine tries again at the earliest (epoch ms). */
      readonly nextAttemptAt?: number | undefined
    }
  | { readonly state: "needs_reauth"; readonly reason: string; readonly since?: number | undefined }
  | { readonly state: "revoked"; readonly reason: string; readonly since?: number | undefined }

/** A health's reason in plain words (the machine-readable reason is shown beside it). */
export const healthText = (h: CardHealth, providerName: string): string => {
  switch (h.state) {
    case "active":
      return "Refreshes succeed."
    case "degraded": {
      const why =
        h.reason === "transient"
          ? `${providerName} could not be reached or answered with a server error`
          : h.reason === "rate_limited"
            ? `${providerName} is rate limiting refreshes`
            : h.reason === "invalid_response"
              ? `${providerName} answered with something that is not a token response`
              : h.reason === "invalid_client"
                ? `${providerName} refused the app’s client credentials`
                : `refreshes at ${providerName} fail`
      const tries = `${h.failures} refresh attempt${h.failures === 1 ? "" : "s"} failed`
      return `${why}: ${tries}. The grant is good and the tokens are intact; Latchkey keeps retrying and the card turns Active again at the next successful refresh.`
    }
    case "needs_reauth":
      return h.reason === "invalid_grant"
        ? `${providerName} no longer accepts the grant.`
        : h.reason === "refresh_interrupted"
          ? "A refresh was interrupted and its one resend was refused."
          : h.reason === "refresh_token_expired"
            ? "The refresh token expired."
            : h.reason === "no_refresh_token"
              ? `${providerName} gave no refresh token and the access token expired.`
              : `${providerName} must be linked again.`
    case "revoked":
      return `Access was revoked (${h.reason.replace(/^revoked_/, "").replaceAll("_", " ")}).`
  }
}
