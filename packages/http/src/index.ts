export {
  type FailureCode,
  type Handler,
  type Handlers,
  type HandlersOptions,
  handlers
} from "./handlers.ts"
export { safeReturnPath } from "./returnPath.ts"
