import { cliSuite } from "./support.ts"

cliSuite("sqlite")
