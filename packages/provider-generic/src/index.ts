export * as Generic from "./Generic.ts"
