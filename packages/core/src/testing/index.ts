/**
 * `@latchkey/core/testing`: conformance suites for the plugins of Latchkey.
 */

export * as Hostile from "./hostile.ts"
export * from "./modifyStored.ts"
export * from "./oauthConnection.ts"
export * from "./otlpReceiver.ts"
export * from "./providerConformance.ts"
export * from "./securityConformance.ts"
export * from "./storeConformance.ts"
export { unreachableProvider, watchRecorder } from "./storeKit.ts"
