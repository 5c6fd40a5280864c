/**
 * DPoP (RFC 9449): sender-constrained tokens for providers that declare `dpop: true`. Each connection
 * has its own ES256 key pair, made when its authorization starts, sealed with the PKCE verifier in the
 * pending record and then with the connection's extras (never in the clear in a store, never in a
 * summary, event or error). Token requests carry a proof made by openid-client; API requests carry
 * one made here, bound to the access token (`ath`), the method and the URL of every hop.
 *
 * The refresh engine calls `OAuth.refresh` with the refresh token only, so the key of the connection
 * being refreshed is found by the token: every time a connection's tokens are opened (`fromRecord`)
 * or made (`fromResponse`), its tokens' SHA-256 digests are remembered with its key, in a bounded
 * per-process map. The process that refreshes has always just loaded the connection.
 */
import { hash, randomUUID } from "node:crypto"

/** Where the sealed key lives in a connection's extras (removed from `tokens.extras` when opened). */
export const EXTRAS_KEY = "latchkey:dpop"

const ALG = { name: "ECDSA", namedCurve: "P-256" } as const

/** A new key pair, as the private JWK (which holds the public coordinates too), JSON. */
export const generateKey = async (): Promise<string> => {
  const pair = await crypto.subtle.generateKey(ALG, true, ["sign", "verify"])
  const jwk = await crypto.subtle.exportKey("jwk", pair.privateKey)
  return JSON.stringify({ kty: jwk.kty, crv: jwk.crv, x: jwk.x, y: jwk.y, d: jwk.d })
}

interface Imported {
  readonly pair: CryptoKeyPair
  readonly publicJwk: { kty: string; crv: string; x: string; y: string }
}

const imported = new Map<string, Promise<Imported>>()

/** The key pair of a private JWK (JSON), imported once per process. */
export const keyPair = (privateJwk: string): Promise<Imported> => {
  const cached = imported.get(privateJwk)
  if (cached !== undefined) return cached
  const jwk = JSON.parse(privateJwk) as { kty: string; crv: string; x: string; y: string; d: string }
  const publicJwk = { kty: jwk.kty, crv: jwk.crv, x: jwk.x, y: jwk.y }
  const made: Promise<Imported> = Promise.all([
    crypto.subtle.importKey("jwk", jwk, ALG, false, ["sign"]),
    crypto.subtle.importKey("jwk", publicJwk, ALG, true, ["verify"])
  ]).then(([privateKey, publicKey]) => ({ pair: { privateKey, publicKey }, publicJwk }))
  remember(imported, privateJwk, made)
  return made
}

const b64url = (data: string | Uint8Array) => Buffer.from(data).toString("base64url")

/** A DPoP proof JWT for one request (RFC 9449 §4.2); `accessToken` adds its `ath`. */
export const proof = async (
  privateJwk: string,
  method: string,
  url: URL,
  accessToken?: string | undefined,
  nonce?: string | undefined
): Promise<string> => {
  const { pair, publicJwk } = await keyPair(privateJwk)
  const htu = `${url.origin}${url.pathname}`
  const header = b64url(JSON.stringify({ typ: "dpop+jwt", alg: "ES256", jwk: publicJwk }))
  const payload = b64url(
    JSON.stringify({
      jti: randomUUID(),
      htm: method.toUpperCase(),
      htu,
      iat: Math.floor(Date.now() / 1000),
      ...(accessToken !== undefined ? { ath: hash("sha256", accessToken, "base64url") } : {}),
      ...(nonce !== undefined ? { nonce } : {})
    })
  )
  const signature = await crypto.subtle.sign(
    { name: "ECDSA", hash: "SHA-256" },
    pair.privateKey,
    Buffer.from(`${header}.${payload}`)
  )
  return `${header}.${payload}.${b64url(new Uint8Array(signature))}`
}

const LIMIT = 10_000

const remember = <K, V>(map: Map<K, V>, key: K, value: V) => {
  map.delete(key)
  map.set(key, value)
  if (map.size > LIMIT) map.delete(map.keys().next().value as K)
}

/** Token digests → the private JWK of their connection. */
const byToken = new Map<string, string>()
const digest = (token: string) => hash("sha256", token, "base64url")

/** Remember the key of a connection's tokens (when they are opened or made). */
export const bind = (privateJwk: string, tokens: ReadonlyArray<string | undefined>): void => {
  for (const token of tokens)
    if (token !== undefined && token.length > 0) remember(byToken, digest(token), privateJwk)
}

/** The key bound to a token, when its connection was opened or made in this process. */
export const keyOf = (token: string): string | undefined => byToken.get(digest(token))

/** The last nonce each server gave (RFC 9449 §8: a server's nonce is used until it sends another). */
const nonces = new Map<string, string>()

export const nonceFor = (origin: string): string | undefined => nonces.get(origin)

export const rememberNonce = (origin: string, nonce: string): void => {
  if (nonce.length > 0 && nonce.length <= 1024) remember(nonces, origin, nonce)
}

/** Forget every remembered key (tests: a process that has not opened the connection yet). */
export const forgetAll = (): void => {
  byToken.clear()
  imported.clear()
  nonces.clear()
}
