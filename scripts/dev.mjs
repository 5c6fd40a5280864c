#!/usr/bin/env node
// The two quick-start commands, runnable on a fresh machine with only Node.js 24 and npm:
//   npm run demo   installs dependencies (pnpm, frozen lockfile) if needed, then starts the demo
//   npm test       installs if needed, then typechecks, lints and runs every test suite
// pnpm comes from the npm registry through npx (no corepack needed).
import { spawnSync } from "node:child_process"
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs"
import { join } from "node:path"

const root = new URL("..", import.meta.url).pathname
const PNPM = ["--yes", "pnpm@12.21.0"]
const major = Number(process.versions.node.split(".")[0])
if (major < 24) {
  console.error(
    `Latchkey needs Node.js 24 or newer; this is ${process.version}. (On Linux: bash scripts/setup-node.sh)`
  )
  process.exit(1)
}

const run = (cmd, args, options = {}) => {
  const r = spawnSync(cmd, args, { cwd: root, stdio: "inherit", ...options })
  return r.status ?? 1
}
const pnpm = (...args) => run("npx", [...PNPM, ...args])

const installed = () => {
  const marker = join(root, "node_modules", ".modules.yaml")
  return existsSync(marker) && statSync(marker).mtimeMs >= statSync(join(root, "pnpm-lock.yaml")).mtimeMs
}
if (!installed()) {
  console.error("installing dependencies (pnpm, frozen lockfile)…")
  if (pnpm("install", "--frozen-lockfile") !== 0) process.exit(1)
}

const command = process.argv[2]
if (command === "demo") {
  process.exit(pnpm("--filter", "@latchkey/demo", "start"))
}
if (command === "test") {
  const artifacts = join(root, "test-artifacts")
  rmSync(join(artifacts, "vitest"), { recursive: true, force: true })
  mkdirSync(join(artifacts, "vitest"), { recursive: true })
  const steps = [
    ["typecheck", () => pnpm("exec", "turbo", "run", "typecheck", "--continue", "--output-logs=errors-only")],
    ["lint", () => pnpm("exec", "biome", "check", ".")],
    [
      "tests",
      () => pnpm("exec", "turbo", "run", "test", "--continue", "--concurrency=1", "--output-logs=full")
    ],
    ["consumer check", () => run(process.execPath, ["scripts/consumer-check.mjs"])]
  ]
  const failed = []
  for (const [name, step] of steps) {
    console.error(`\n=== ${name} ===`)
    if (step() !== 0) failed.push(name)
  }
  // Every package's vitest writes a JSON report; sum them into one closing line.
  let passed = 0
  let failedTests = 0
  let skipped = 0
  for (const file of readdirSync(join(artifacts, "vitest"))) {
    const report = JSON.parse(readFileSync(join(artifacts, "vitest", file), "utf8"))
    passed += report.numPassedTests
    failedTests += report.numFailedTests
    skipped += report.numPendingTests + (report.numTodoTests ?? 0)
  }
  if (failed.length > 0) console.error(`\nfailed steps: ${failed.join(", ")}`)
  console.log(`\n${passed} passed, ${failedTests} failed${skipped ? `, ${skipped} skipped` : ""}`)
  process.exit(failed.length > 0 || failedTests > 0 || passed === 0 ? 1 : 0)
}
console.error("usage: node scripts/dev.mjs demo|test")
process.exit(2)
