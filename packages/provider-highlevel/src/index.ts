export * as HighLevel from "./HighLevel.ts"
export { LocationError } from "./Locations.ts"
export { WebhookError } from "./Webhooks.ts"
