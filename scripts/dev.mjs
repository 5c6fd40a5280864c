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

// No telemetry notices or update banners from turbo (or anything else honouring DO_NOT_TRACK).
const env = {
  ...process.env,
  TURBO_TELEMETRY_DISABLED: "1",
  DO_NOT_TRACK: "1",
  TURBO_NO_UPDATE_NOTIFIER: "1"
}
const run = (cmd, args, options = {}) => {
  const r = spawnSync(cmd, args, { cwd: root, stdio: "inherit", env, ...options })
  return r.status ?? 1
}
// npx fetches pnpm into its cache on first use, which takes a few silent seconds: say so once.
let pnpmAnnounced = false
const pnpm = (...args) => {
  if (!pnpmAnnounced) {
    pnpmAnnounced = true
    console.error(`${PNPM[1]} via npx (fetched from the npm registry on first use)…`)
  }
  return run("npx", [...PNPM, ...args])
}

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
    ["import cycles", () => run(process.execPath, ["scripts/import-cycles.mjs"])],
    [
      "tests",
      // Passing packages print nothing here (their summary follows); a failing one prints its whole log.
      // Three packages at a time: the suites mostly wait (real servers, leases, processes), so they
      // share two cores well; each uses its own PostgreSQL schemas and Redis key prefixes.
      () => pnpm("exec", "turbo", "run", "test", "--continue", "--concurrency=3", "--output-logs=errors-only")
    ],
    ["consumer check", () => run(process.execPath, ["scripts/consumer-check.mjs"])]
  ]
  const failed = []
  for (const [name, step] of steps) {
    console.error(`\n=== ${name} ===`)
    if (step() !== 0) failed.push(name)
  }
  // Every package's vitest writes a JSON report: one summary line per package, then their sum.
  let passed = 0
  let failedTests = 0
  let skipped = 0
  const rows = []
  for (const file of readdirSync(join(artifacts, "vitest")).sort()) {
    const report = JSON.parse(readFileSync(join(artifacts, "vitest", file), "utf8"))
    const pending = report.numPendingTests + (report.numTodoTests ?? 0)
    // A test file that crashed before its tests ran counts as one failure.
    const crashed = report.testResults.filter(
      (r) => r.status === "failed" && !r.assertionResults.some((a) => a.status === "failed")
    ).length
    passed += report.numPassedTests
    failedTests += report.numFailedTests + crashed
    skipped += pending
    const end = Math.max(report.startTime, ...report.testResults.map((r) => r.endTime ?? report.startTime))
    // Failed tests, and test files that failed as a whole (a crash before any test ran).
    const failures = report.testResults.flatMap((r) => {
      const tests = r.assertionResults.filter((a) => a.status === "failed").map((a) => a.fullName)
      if (tests.length > 0 || r.status !== "failed") return tests
      const file = r.name.slice(r.name.lastIndexOf("/") + 1)
      return [`${file}: ${(r.message ?? "").split("\n").find((l) => l.trim().length > 0) ?? "failed"}`]
    })
    rows.push({
      name: file.replace(/\.json$/, ""),
      text: `${report.numPassedTests} passed, ${report.numFailedTests + crashed} failed${pending ? `, ${pending} skipped` : ""}`,
      seconds: ((end - report.startTime) / 1000).toFixed(1),
      failures
    })
  }
  if (rows.length > 0) {
    console.log("\n=== summary ===")
    const width = Math.max(...rows.map((r) => r.name.length))
    for (const row of rows) {
      console.log(
        `${row.failures.length > 0 ? "✗" : "✓"} ${row.name.padEnd(width)}  ${row.text}  (${row.seconds} s)`
      )
      for (const name of row.failures) console.log(`    ✗ ${name}`)
    }
  }
  if (failed.length > 0) console.error(`\nfailed steps: ${failed.join(", ")}`)
  console.log(`\n${passed} passed, ${failedTests} failed${skipped ? `, ${skipped} skipped` : ""}`)
  process.exit(failed.length > 0 || failedTests > 0 || passed === 0 ? 1 : 0)
}
console.error("usage: node scripts/dev.mjs demo|test")
process.exit(2)
