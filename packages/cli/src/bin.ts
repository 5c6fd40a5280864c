#!/usr/bin/env node
/** `latchkey`: the operator command. `latchkey --help` lists the commands. */
import { enableCompileCache } from "node:module"

// Node keeps the compiled code of the command's modules on disk: later starts are faster.
enableCompileCache()
await import("./main.ts")
