/**
 * Latchkey's typed errors and events in plain words for the page. Built from error reasons, the
 * provider's own error code and description, and statuses only: never a token, secret or code.
 */
import type { Connection, Events } from "@latchkey/core"

export interface Plain {
  readonly title: string
  readonly text: string
}

interface TaggedLike {
  readonly _tag?: unknown
  readonly reason?: unknown
  readonly message?: unknown
  readonly providerError?: unknown
  readonly providerErrorDescription?: unknown
  readonly status?: unknown
  readonly code?: unknown
}

const said = (e: TaggedLike): string => {
  const code = typeof e.providerError === "string" ? e.providerError : undefined
  const description =
    typeof e.providerErrorDescription === "string" ? e.providerErrorDescription.slice(0, 300) : undefined
  if (code && description) return ` It said: “${description}” (${code}).`
  if (code) return ` Its error code: ${code}.`
  return ""
}

/** Why linking an account failed. */
export const authorizationFailure = (error: unknown, providerName: string): Plain => {
  const e = (error ?? {}) as TaggedLike
  const title = `${providerName} account not linked`
  if (e._tag !== "AuthorizationError") return unexpected(error, title)
  switch (e.reason) {
    case "access_denied":
      // oidc-provider's pages (Example Corp) say which one Cancel was pressed on; the sandboxes deny on consent.
      return /sign-in|log ?in|cancel/i.test(
        typeof e.providerErrorDescription === "string" ? e.providerErrorDescription : ""
      )
        ? {
            title,
            text: `You cancelled signing in at ${providerName}, so nothing was linked. Choose “Link another account” to try again.`
          }
        : {
            title,
            text: `You declined on ${providerName}’s consent page, so nothing was linked. Choose “Link another account” to try again.`
          }
    case "missing_state":
    case "unknown_state":
    case "reused_state":
      return {
        title,
        text: `This return from ${providerName} does not match a link you started here (or it was used already). Nothing was linked; start again from this page.`
      }
    case "expired_state":
      return {
        title,
        text: `The link to ${providerName} took longer than 10 minutes and expired. Start again.`
      }
    case "foreign_state":
      return {
        title,
        text: `This link was started by another demo user. Sign in as that user to finish it, or start again.`
      }
    case "missing_code":
      return { title, text: `${providerName} came back without an authorization code.${said(e)}` }
    case "iss_mismatch":
      return {
        title,
        text: `The answer did not come from ${providerName}’s server (RFC 9207 issuer check), so it was refused.`
      }
    case "invalid_grant":
      return {
        title,
        text: `${providerName} refused the authorization code: it expired or was used already. Try linking again.${said(e)}`
      }
    case "invalid_client":
      return {
        title,
        text: `${providerName} did not accept this app’s client credentials. Check the client id and secret.${said(e)}`
      }
    case "transient":
      return {
        title,
        text: `${providerName} could not be reached or had a temporary problem. Try again in a moment.`
      }
    case "identity_failed":
      return {
        title,
        text: `${providerName} issued tokens, but the account could not be identified, so nothing was stored.`
      }
    case "provider_error":
      return { title, text: `${providerName} reported an error.${said(e) || " It gave no details."}` }
    case "unknown_provider":
      return { title, text: "This provider is not configured in the demo." }
    default:
      return { title, text: `${providerName} refused the link.${said(e)}` }
  }
}

/** Why a refresh, an API call or an unlink failed. */
export const operationFailure = (error: unknown, providerName: string, what: string): Plain => {
  const e = (error ?? {}) as TaggedLike
  const title = `${what} failed`
  switch (e._tag) {
    case "ReauthorizationRequired":
      return {
        title: "Reconnect needed",
        text:
          e.reason === "refresh_token_expired"
            ? `The refresh token expired, so ${providerName} must be linked again. Choose Reconnect.`
            : e.reason === "no_refresh_token"
              ? `${providerName} gave no refresh token, so the account must be linked again when its token expires. Choose Reconnect.`
              : `${providerName} no longer accepts this account’s authorization, so it must be linked again. Choose Reconnect.${said(e)}`
      }
    case "RefreshError":
      return {
        title,
        text:
          e.reason === "rate_limited"
            ? `${providerName} is rate limiting refreshes. The tokens are intact; Latchkey tries again later.`
            : e.reason === "lease_timeout"
              ? "Another refresh of this account is under way. Try again in a moment."
              : `${providerName} could not be reached or answered with an error. The tokens are intact; Latchkey tries again later.`
      }
    case "ApiError":
      return {
        title,
        text:
          e.reason === "forbidden_origin"
            ? `The request was not sent: its address is not one of ${providerName}’s API origins.`
            : e.reason === "timeout"
              ? `${providerName} did not answer in time.`
              : `${providerName} could not be reached.`
      }
    case "ConnectionNotFound":
      return { title, text: "This account is no longer linked." }
    case "InstanceClosed":
      return { title, text: "The demo is restarting. Try again in a moment." }
    case "StoreError":
      return { title, text: "The demo’s token store is unavailable right now. Try again in a moment." }
    case "VaultError":
      return {
        title,
        text: "The stored tokens could not be decrypted: the vault key is not the one they were sealed with."
      }
    default:
      return unexpected(error, title)
  }
}

/** A provider API answer that is not 2xx, in plain words. */
export const apiStatus = (status: number, providerName: string): string => {
  if (status >= 200 && status < 300) return `${providerName} answered ${status}.`
  if (status === 401) return `${providerName} rejected the access token (401), even after a refresh.`
  if (status === 402) return `${providerName} says the account is out of credits (402).`
  if (status === 403) return `${providerName} refused: this account may not see that resource (403).`
  if (status === 404) return `${providerName} does not know that resource (404).`
  if (status === 429) return `${providerName} is rate limiting this account (429).`
  if (status >= 500) return `${providerName} had a server error (${status}).`
  return `${providerName} refused the request (${status}).`
}

const unexpected = (error: unknown, title: string): Plain => {
  const tag = (error as TaggedLike | undefined)?._tag
  return {
    title,
    text: `Something unexpected went wrong${typeof tag === "string" ? ` (${tag})` : ""}. The server log has details.`
  }
}

export type RefreshedBy = "refresher" | "you" | "api" | "worker"

export const refreshedByText: Record<RefreshedBy, string> = {
  refresher: "by the background Refresher",
  worker: "by a refresh worker",
  you: "on request (Refresh now)",
  api: "on demand, during an API call"
}

/** One line of the activity feed for an event. */
export const eventText = (
  event: Events.LatchkeyEvent,
  label: string,
  providerName: string,
  refreshedBy: RefreshedBy | undefined,
  worker?: string | undefined
): { readonly kind: "success" | "error" | "info"; readonly text: string } => {
  const who = `${providerName} · ${label}`
  const by =
    refreshedBy === "worker" && worker !== undefined
      ? `by ${worker}`
      : refreshedByText[refreshedBy ?? "refresher"]
  switch (event.type) {
    case "linked":
      return { kind: "success", text: `${who}: ${event.relinked ? "reconnected" : "linked"}` }
    case "refreshed":
      return {
        kind: event.recovered ? "success" : "info",
        text: event.recovered
          ? `${who}: an interrupted refresh recovered ${by} (its one resend was accepted); nothing lost`
          : `${who}: tokens refreshed ${by}`
      }
    case "refresh_failed":
      return {
        kind: "error",
        text:
          event.reason === "in_doubt"
            ? `${who}: a refresh is in doubt (its holder went silent); Latchkey waits before it resends${worker ? ` (${worker})` : ""}`
            : event.reason === "answer_lost"
              ? `${who}: the answer to a refresh was lost${worker ? ` (${worker})` : ""}; Latchkey resends it once`
              : `${who}: refresh failed${event.retryable ? ", will retry (tokens intact)" : ""}`
      }
    case "needs_reauth":
      return event.reason === "refresh_interrupted"
        ? { kind: "error", text: `${who}: refresh interrupted, reconnect needed. ${event.message}` }
        : { kind: "error", text: `${who}: ${providerName} no longer accepts the grant; reconnect needed` }
    case "revoked":
      return { kind: "error", text: `${who}: access revoked at ${providerName}` }
    case "unlinked":
      return {
        kind: "info",
        text: `${who}: unlinked${event.revokedAtProvider ? `, and revoked at ${providerName}` : ""}`
      }
    case "reconnected":
      return { kind: "success", text: `${who}: reconnected (was ${event.previous.state})` }
    case "degraded":
      return { kind: "error", text: `${who}: refreshes failing (${event.reason}); Latchkey keeps retrying` }
    case "recovered":
      return { kind: "success", text: `${who}: refreshes work again after ${event.failures} failed` }
  }
}

/** The reason a connection needs reconnecting, from its last error. */
export const lastErrorText = (c: Connection.ConnectionSummary, providerName: string): string | undefined => {
  const e = c.lastError
  if (e === undefined) return undefined
  const description = e.description ? ` (“${e.description.slice(0, 200)}”)` : ""
  if (c.status === "needs_reauth") {
    if (e.code === "refresh_interrupted") return e.description ?? "A refresh was interrupted."
    if (e.code === "invalid_grant")
      return `${providerName} rejected the refresh token: the grant was revoked or has ended${description}.`
    if (e.code === "refresh_token_expired") return "The refresh token expired."
    if (e.code === "no_refresh_token")
      return `${providerName} gave no refresh token and the access token expired.`
    return `${providerName} refused to refresh: ${e.code}${description}.`
  }
  if (c.status === "revoked") return `${providerName} reported that access was revoked.`
  return `Last refresh attempt failed (${e.code}); the tokens are intact and Latchkey retries.`
}
