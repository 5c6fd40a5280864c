export { cli } from "./commands.ts"
export { ConfigError, loadOptions } from "./config.ts"
