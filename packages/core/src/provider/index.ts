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
export * as Declarative from "../Declarative.ts"
export { ProviderDefinitionError } from "../Errors.ts"
export * as Provider from "../Provider.ts"
export type { TokenSet } from "../TokenSet.ts"
