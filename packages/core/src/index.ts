export * as ApiClient from "./ApiClient.ts"
export * as AuthorizationFlow from "./AuthorizationFlow.ts"
export * as Config from "./Config.ts"
export * as Connection from "./Connection.ts"
export * as ConnectionStore from "./ConnectionStore.ts"
export * as Connections from "./Connections.ts"
export * as Declarative from "./Declarative.ts"
export * as Errors from "./Errors.ts"
export {
  ApiError,
  AuthorizationError,
  ConnectionNotFound,
  InstanceClosed,
  type LatchkeyError,
  ProviderDefinitionError,
  ReauthorizationRequired,
  RefreshError,
  StoreError,
  VaultError
} from "./Errors.ts"
export * as EventLog from "./EventLog.ts"
export * as Events from "./Events.ts"
export * as Latchkey from "./Latchkey.ts"
export { createLatchkey, type LatchkeyClient, type LatchkeyOptions } from "./Latchkey.ts"
export * as LifecycleEvents from "./LifecycleEvents.ts"
export * as OAuth from "./OAuth.ts"
export * as Protocol from "./Protocol.ts"
export * as Provider from "./Provider.ts"
export * as Providers from "./Providers.ts"
export * as Refresher from "./Refresher.ts"
export * as SqliteStore from "./SqliteStore.ts"
export * as Telemetry from "./Telemetry.ts"
export * as TokenManager from "./TokenManager.ts"
export * as TokenSet from "./TokenSet.ts"
export * as Vault from "./VaultNamespace.ts"
export * as Webhooks from "./Webhooks.ts"
