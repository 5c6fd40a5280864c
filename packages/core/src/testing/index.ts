/**
 * `@latchkey/core/testing`: conformance suites for the plugins of Latchkey.
 */
export * from "./providerConformance.ts"
export * from "./storeConformance.ts"
