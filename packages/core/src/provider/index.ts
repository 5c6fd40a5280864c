/**
 * `@latchkey/core/provider`: the provider-facing entry point — what a provider package needs to
 * describe a provider, and nothing of the engine (no TokenManager, vault, store or connection
 * internals). A provider package imports from here; its sandbox from `@latchkey/core/sandbox`, its
 * tests from `@latchkey/core/testing`.
 *
 * - `Provider`: `Provider.make` and the contract's types (`ProviderDefinition`, `Provider`,
 *   `Credential`, `IdentifyContext`, `AccountIdentity`, `ApiResponseInfo`, `ApiResponseClass`,
 *   `RevokeContext`, `Endpoints`, `TokenErrorCode`) and schema (`TokenErrorCodeSchema`);
 * - `Declarative`: providers from JSON/YAML (`fromObject`, `parse`, `load`, `valueAt`, `DeclarativeError`);
 * - `ProviderDefinitionError`, what `Provider.make` throws for an invalid definition;
 * - `TokenSet`, the tokens `identify` and `revoke` are given.
 */

/*
 * For a provider package's own helpers (its API clients and link flows), beside the definition:
 * - the credential sources' types (`Provider.CredentialSource`, `Provider.MintSource`,
 *   `Provider.MintContext`, `Provider.ClientCredentialsSource`) are in `Provider`;
 * - `AuthorizationFlow`: the link flows a provider may offer (`completeProviderInitiated`,
 *   `linkMinted`, `linkClientCredentials`) and their results;
 * - `ApiClient`: requests through a connection (its credential, renewed by the engine);
 * - `Providers`: the providers registered on the instance (a provider's own settings, by id);
 * - `connection(id)`, `connections(ownerId)`: summaries (no token); `markRevoked(id)` (an uninstall
 *   webhook); `ConnectionStore`, the store contract (e.g. its `claimOnce` for webhook replay guards);
 *   `LatchkeyClient`, the Promise API's type.
 */
export * as ApiClient from "../ApiClient.ts"
export * as AuthorizationFlow from "../AuthorizationFlow.ts"
export type { ConnectionSummary } from "../Connection.ts"
export * as ConnectionStore from "../ConnectionStore.ts"
export * as Declarative from "../Declarative.ts"
export {
  AuthorizationError,
  ConnectionNotFound,
  type LatchkeyError,
  ProviderDefinitionError,
  ReauthorizationRequired,
  type StoreError,
  type VaultError
} from "../Errors.ts"
export {
  connection,
  connections,
  type LatchkeyClient,
  type LatchkeyServices,
  markRevoked
} from "../Latchkey.ts"
export * as Provider from "../Provider.ts"
export { Providers } from "../Providers.ts"
/** The errors a request through a connection may end with (`ApiClient.fetch`). */
export type { TokenError } from "../TokenManager.ts"
export type { TokenSet } from "../TokenSet.ts"
