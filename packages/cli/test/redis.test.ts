import { cliSuite } from "./support.ts"

cliSuite("redis")
