export * as HeyGen from "./HeyGen.ts"
