/**
 * Credentials go only where the provider said its API lives (RFC 9700 §4.9, §2.2): a request is sent
 * with the auth headers only to one of the provider's `credentialOrigins` (https, or plain http on a
 * loopback host), and redirects are followed here, by hand, so that a hop to any other origin goes
 * out without them. A request whose first URL is elsewhere is refused before anything is sent.
 */
import type { Credential, Provider } from "../Provider.ts"
import * as Dpop from "./dpop.ts"

/** The origin of `url` may receive the provider's credentials. */
export const allowsCredentials = (provider: Provider, url: URL): boolean =>
  (url.protocol === "https:" || url.protocol === "http:") && provider.credentialOrigins.includes(url.origin)

const MAX_REDIRECTS = 10

/**
 * The DPoP proofs a credential needs (a `DPoP`-type access token), made with its connection's key;
 * undefined for bearer tokens and API keys.
 */
export const proofsFor = (
  credential: Credential
): ((method: string, url: URL) => Promise<string>) | undefined => {
  if (credential.kind !== "oauth" || !/^dpop$/i.test(credential.tokenType)) return undefined
  const key = Dpop.keyOf(credential.accessToken)
  if (key === undefined) throw new TypeError("the connection's DPoP key is not loaded")
  return (method, url) => Dpop.proof(key, method, url, credential.accessToken, Dpop.nonceFor(url.origin))
}

/**
 * Send `url` with the credential headers `auth`, following redirects by hand (at most 10): each hop
 * keeps the headers only while it stays on one of the provider's credential origins; once a hop leaves
 * them, the request goes on without the headers (and does not get them back). 303, and 301/302 after a
 * POST, become a GET without a body, as browsers do. `init.redirect` of `manual` or `error` is honoured.
 */
export const sendScoped = async (
  provider: Provider,
  fetchImpl: typeof fetch,
  url: URL,
  init: RequestInit,
  auth: Readonly<Record<string, string>>,
  /** A DPoP proof for one hop (RFC 9449: bound to its method and URL), for sender-constrained tokens. */
  proofFor?: ((method: string, url: URL) => Promise<string>) | undefined
): Promise<Response> => {
  const names = [...Object.keys(auth).map((k) => k.toLowerCase()), ...(proofFor ? ["dpop"] : [])]
  const headers = new Headers(init.headers)
  for (const [k, v] of Object.entries(auth)) headers.set(k, v)
  if (init.redirect === "manual" || init.redirect === "error") {
    if (proofFor) headers.set("dpop", await proofFor((init.method ?? "GET").toUpperCase(), url))
    return fetchImpl(url, { ...init, headers })
  }
  let current = url
  let method = (init.method ?? "GET").toUpperCase()
  let body = init.body
  let credentialed = true
  let nonceRetried = false
  for (let hop = 0; ; hop++) {
    if (credentialed && proofFor) headers.set("dpop", await proofFor(method, current))
    const response = await fetchImpl(current, {
      ...init,
      method,
      headers,
      ...(body !== undefined ? { body } : { body: null }),
      redirect: "manual"
    })
    const nonce = credentialed && proofFor ? response.headers.get("dpop-nonce") : null
    if (nonce !== null) {
      Dpop.rememberNonce(current.origin, nonce)
      // RFC 9449 §9: the resource server wants a nonce in the proof; send the same request once more.
      if (
        !nonceRetried &&
        response.status === 401 &&
        /use_dpop_nonce/.test(response.headers.get("www-authenticate") ?? "")
      ) {
        nonceRetried = true
        await response.body?.cancel()
        hop--
        continue
      }
    }
    const location = response.headers.get("location")
    if (response.status < 300 || response.status > 399 || response.status === 304 || location === null) {
      return response
    }
    if (hop >= MAX_REDIRECTS) {
      await response.body?.cancel()
      throw new TypeError("fetch failed: too many redirects")
    }
    await response.body?.cancel()
    const next = new URL(location, current)
    if (
      response.status === 303 ||
      ((response.status === 301 || response.status === 302) && method === "POST")
    ) {
      method = method === "HEAD" ? "HEAD" : "GET"
      body = undefined
      headers.delete("content-type")
      headers.delete("content-length")
    }
    if (credentialed && !allowsCredentials(provider, next)) {
      credentialed = false
      for (const name of names) headers.delete(name)
      // A cookie or authorization the caller set itself is not ours to forward elsewhere either.
      headers.delete("authorization")
      headers.delete("cookie")
    }
    current = next
  }
}
