/**
 * `@latchkey/core/testing`: conformance suites for the plugins of Latchkey.
 */
export * from "./providerConformance.ts"
