/**
 * The providers registered with one Latchkey instance, by id.
 */
import { Context, Effect, Layer } from "effect"
import { type AuthorizationError, ProviderDefinitionError } from "./Errors.ts"
import { registeredProvider } from "./Protocol.ts"
import type { Provider } from "./Provider.ts"

export interface ProvidersShape {
  readonly all: ReadonlyArray<Provider>
  readonly get: (providerId: string) => Effect.Effect<Provider, AuthorizationError>
  readonly find: (providerId: string) => Provider | undefined
}

export const make = (providers: ReadonlyArray<Provider>): ProvidersShape => {
  const byId = new Map<string, Provider>()
  for (const p of providers) {
    if (byId.has(p.id)) {
      throw new ProviderDefinitionError({
        providerId: p.id,
        field: "id",
        message: `Provider id "${p.id}" is registered twice; give each instance its own id`
      })
    }
    byId.set(p.id, p)
  }
  // Mix-up (RFC 9700 §4.4): a code delivered to a shared redirect URI can only be told apart by `iss`.
  const byRedirect = new Map<string, Provider>()
  for (const p of byId.values()) {
    const other = byRedirect.get(p.redirectUri)
    if (other !== undefined && !(other.requireIss === true && p.requireIss === true)) {
      throw new ProviderDefinitionError({
        providerId: p.id,
        field: "redirectUri",
        message: `Providers "${other.id}" and "${p.id}" share the redirect URI ${p.redirectUri}: give each its own, or set requireIss on both (their servers must send RFC 9207 iss)`
      })
    }
    byRedirect.set(p.redirectUri, p)
  }
  return {
    all: [...byId.values()],
    find: (id) => byId.get(id),
    get: (id) => Effect.fromResult(registeredProvider((providerId) => byId.get(providerId), id))
  }
}

export class Providers extends Context.Service<Providers, ProvidersShape>()("@latchkey/core/Providers") {
  /** Fails with `ProviderDefinitionError` when the providers cannot be registered together. */
  static readonly layer = (providers: ReadonlyArray<Provider>) =>
    Layer.effect(
      Providers,
      Effect.try({
        try: () => make(providers),
        catch: (e) =>
          e instanceof ProviderDefinitionError
            ? e
            : new ProviderDefinitionError({
                providerId: "(providers)",
                field: "providers",
                message: String(e)
              })
      })
    )
}
