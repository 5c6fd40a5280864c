import { cliSuite } from "./support.ts"

cliSuite("postgres")
