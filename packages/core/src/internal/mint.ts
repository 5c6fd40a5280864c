/**
 * One minting request (`ProviderDefinition.mint`): the provider's request, sent with the parent's
 * credential through the provider's `apiFetch` to one of its credential origins, its answer read as a
 * token response and every failure classified as the refresh engine classifies a refresh's:
 * `transient` / `rate_limited` (retried within the lease), `invalid_response`, `invalid_grant` (the
 * provider refuses to mint for this account: link it again) and `parent_token_invalid` (the parent's
 * access token was refused: refresh the parent once and mint again).
 */
import { Effect } from "effect"
import type { LatchkeyConfigShape } from "../Config.ts"
import { ProtocolFailure, parseRetryAfter } from "../OAuth.ts"
import type { Credential, MintContext, Provider } from "../Provider.ts"
import { type TokenResponse, unsafeResponse } from "../TokenSet.ts"
import { allowsCredentials, proofsFor, sendScoped } from "./credentialScope.ts"

export type MintFailure =
  | { readonly _tag: "ParentTokenInvalid" }
  | { readonly _tag: "Failed"; readonly failure: ProtocolFailure }

const readJson = async (response: Response): Promise<unknown> => {
  try {
    return await response.json()
  } catch {
    return undefined
  }
}

export const mint = (
  provider: Provider,
  parent: Credential,
  context: MintContext,
  config: Pick<LatchkeyConfigShape, "fetch" | "requestTimeoutMs">,
  /** Now, on the engine's clock (for an HTTP-date `Retry-After`). */
  now: number
): Effect.Effect<TokenResponse, MintFailure> =>
  Effect.tryPromise({
    try: async (): Promise<TokenResponse> => {
      const source = provider.mint
      if (source === undefined) {
        throw new ProtocolFailure("unsupported", `${provider.name} does not mint tokens`, {
          maybeProcessed: false
        })
      }
      const request = source.request(context)
      const url = new URL(request.url, provider.apiBaseUrl)
      if (!allowsCredentials(provider, url)) {
        throw new ProtocolFailure(
          "unsupported",
          `minting: ${url.protocol}//${url.host} is not one of ${provider.name}'s API origins`,
          { maybeProcessed: false }
        )
      }
      let response: Response
      try {
        response = await sendScoped(
          provider,
          provider.apiFetch ? provider.apiFetch(config.fetch) : config.fetch,
          url,
          { ...request.init, signal: AbortSignal.timeout(config.requestTimeoutMs) },
          provider.authorizeRequest(parent),
          proofsFor(parent)
        )
      } catch (cause) {
        const timedOut = (cause as { name?: string })?.name === "TimeoutError"
        // Minting spends nothing: a lost answer is asked again, so it is merely transient.
        throw new ProtocolFailure("transient", `minting: ${timedOut ? "timed out" : "network error"}`, {
          maybeProcessed: true
        })
      }
      const body = await readJson(response)
      const retryAfterMs = parseRetryAfter(response.headers.get("retry-after"), now)
      if (response.ok) {
        const token = body as TokenResponse | undefined
        if (typeof token?.access_token !== "string" || token.access_token.length === 0) {
          throw new ProtocolFailure(
            "invalid_response",
            `minting: ${provider.name} answered ${response.status} without an access token`,
            { status: response.status, maybeProcessed: true }
          )
        }
        const problem = unsafeResponse(token)
        if (problem !== undefined) {
          throw new ProtocolFailure("invalid_response", `minting: ${problem}`, {
            status: response.status,
            maybeProcessed: true
          })
        }
        // A minted token is renewed by minting again: a refresh token in the answer is not kept.
        const { refresh_token: _, refresh_token_expires_in: __, ...rest } = token
        return rest as TokenResponse
      }
      const verdict = provider.classifyResponse({ status: response.status, headers: response.headers, body })
      if (verdict === "token_invalid") throw { _tag: "ParentTokenInvalid" } satisfies MintFailure
      const message = (body as { message?: unknown } | undefined)?.message
      const said = typeof message === "string" ? `: ${message.slice(0, 200)}` : ""
      if (verdict === "rate_limited" || response.status === 429) {
        throw new ProtocolFailure("rate_limited", `minting: rate limited (${response.status})`, {
          status: response.status,
          retryAfterMs,
          maybeProcessed: false
        })
      }
      if (response.status >= 500) {
        throw new ProtocolFailure("transient", `minting: server error ${response.status}${said}`, {
          status: response.status,
          retryAfterMs,
          maybeProcessed: true
        })
      }
      throw new ProtocolFailure(
        "invalid_grant",
        `${provider.name} refused to mint a token for ${context.accountId} (${response.status}${said})`,
        { status: response.status, maybeProcessed: true }
      )
    },
    catch: (e): MintFailure =>
      (e as MintFailure)?._tag === "ParentTokenInvalid"
        ? { _tag: "ParentTokenInvalid" }
        : {
            _tag: "Failed",
            failure:
              e instanceof ProtocolFailure
                ? e
                : new ProtocolFailure("transient", "minting: unexpected failure", { maybeProcessed: true })
          }
  })
