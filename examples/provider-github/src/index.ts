export * as GitHub from "./GitHub.ts"
