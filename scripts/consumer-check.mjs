#!/usr/bin/env node
// The consumer check: Latchkey's packages as someone outside the monorepo gets them.
//
//   node scripts/consumer-check.mjs        (a step of `npm test`; exits non-zero when any check fails)
//
// 1. build      turbo builds every public package (dist/: ESM JavaScript and .d.ts)
// 2. pack       `pnpm pack` of each public package into a temporary folder (pnpm applies publishConfig and turns
//               workspace: ranges into real ones; npm does neither, which is why packing is pnpm's)
// 3. manifests  each packed package.json: exports with `types` first, files, sideEffects, engines, license,
//               repository, description, no workspace: range; the tarball holds dist/ only (no sources, no
//               maps); its dependencies are exactly what its dist/ imports (nothing declared and unused)
// 4. publint + attw (@arethetypeswrong/cli, ESM-only profile) on every tarball: zero errors
// 5. install    a scratch app in the OS temp folder (outside the workspace: no pnpm, no workspace links, no
//               tsconfig paths) gets every tarball with plain `npm install`; `npm ls` must be clean and every
//               entry point must import (`@latchkey/core/testing` only with its optional peer vitest); every
//               bin (`latchkey`) runs `--help` from node_modules/.bin. The app also installs what an app using
//               @latchkey/http's README has: fastify (the optional peer @latchkey/http/fastify's types import),
//               express with its types, and hono, at the versions the http examples are tested with
// 6. readme types  every ```ts block of README.md and of each public package's README is type-checked there
//               with `tsc --strict`. Blocks are wrapped, not edited: the names a README leaves to the reader
//               (`request`, `providers`, `vaultKey`, ...) are declared in readme/free-variables.d.ts, and a
//               fragment that uses a package's export without importing it (`HeyGen.provider(...)` below the
//               import of the package) gets that import added. Nothing is skipped: a block that does not
//               compile fails the check and must be fixed in the README.
// 7. readme run every block followed by "It prints ..." runs with Node from the installed tarballs (the HeyGen
//               and HighLevel examples, against their sandboxes) and must print exactly that
// 8. minimal app  core + provider-generic + the SQLite store, installed alone: links an account's first step
//               against SQLite, and its node_modules holds no test machinery (vitest, vite, oidc-provider)
// 9. provider guide  docs/providers.md followed as written (steps 1-6: npm install @latchkey/core effect zod
//               from the tarball, the package.json, tsconfigs, the Acme provider, the declarative file, the
//               sandbox, the conformance suites with vitest, the build, the pack and a clean install)
// 10. release   `changeset version` in a scratch copy of the repository (versions, internal ranges and a
//               CHANGELOG.md entry for every changeset), `changeset publish-plan` and
//               `pnpm publish -r --dry-run` (never a real publish)
// Then the packed, unpacked and installed (with dependencies) size of each package and of the minimal app.
//
// `--keep` keeps the temporary folder (its path is printed) to look into a failure.
import { execFile } from "node:child_process"
import {
  cpSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync
} from "node:fs"
import { tmpdir } from "node:os"
import { dirname, join, relative } from "node:path"
import { gunzipSync } from "node:zlib"

const root = new URL("..", import.meta.url).pathname.replace(/\/$/, "")
const PNPM = ["--yes", "pnpm@12.21.0"]
const bin = (name) => join(root, "node_modules", ".bin", name)
const work = mkdtempSync(join(tmpdir(), "latchkey-consumer-"))
const started = Date.now()

// npm started by `npm test` passes npm_* settings to its children; a user's shell has none of them.
const env = Object.fromEntries(
  Object.entries(process.env).filter(
    ([k]) => !/^npm_/i.test(k) && k !== "INIT_CWD" && k !== "PNPM_SCRIPT_SRC_DIR"
  )
)
Object.assign(env, {
  npm_config_audit: "false",
  npm_config_fund: "false",
  npm_config_update_notifier: "false",
  npm_config_prefer_offline: "true",
  npm_config_loglevel: "error",
  NO_COLOR: "1"
})

// ---------------------------------------------------------------------------------------------------------------
// helpers

const fail = (message) => {
  throw new Error(message)
}

/** Runs a command; rejects with its output unless it exits 0 (or `ok` accepts the result). */
const run = (cmd, args, { cwd = root, timeout = 180_000, ok = (r) => r.status === 0 } = {}) =>
  new Promise((resolve, reject) => {
    execFile(cmd, args, { cwd, env, timeout, maxBuffer: 64 * 1024 * 1024 }, (error, stdout, stderr) => {
      const r = { status: error ? (typeof error.code === "number" ? error.code : 1) : 0, stdout, stderr }
      if (error && typeof error.code === "string") {
        reject(new Error(`${cmd} ${args.join(" ")}: ${error.message}`))
      } else if (!ok(r)) {
        const why = error?.killed ? `timed out after ${timeout / 1000} s` : `exited ${r.status}`
        reject(new Error(`${cmd} ${args.join(" ")} (in ${cwd}) ${why}\n${tail(stdout)}${tail(stderr)}`))
      } else resolve(r)
    })
  })
const runAsync = (cmd, args, options) => run(cmd, args, { ...options, ok: () => true })
const pnpm = (args, options) => run("npx", [...PNPM, ...args], options)
const tail = (text, lines = 40) => {
  const all = (text ?? "").trimEnd().split("\n")
  return all.length === 1 && all[0] === "" ? "" : `${all.slice(-lines).join("\n")}\n`
}
/** Sizes as npm prints them: kB = 1000 bytes, MB = 1000 kB. */
const kB = (bytes) => (bytes >= 1e6 ? `${(bytes / 1e6).toFixed(1)} MB` : `${(bytes / 1e3).toFixed(1)} kB`)

/** Files of a .tgz: Map<path without "package/", Buffer>. */
const readTarball = (file) => {
  const data = gunzipSync(readFileSync(file))
  const files = new Map()
  let offset = 0
  let longName
  while (offset + 512 <= data.length) {
    const header = data.subarray(offset, offset + 512)
    if (header.every((b) => b === 0)) break
    const field = (start, length) =>
      header
        .subarray(start, start + length)
        .toString("utf8")
        .replace(/\0.*$/s, "")
    const size = Number.parseInt(field(124, 12).trim() || "0", 8)
    const type = field(156, 1)
    const prefix = field(345, 155)
    const name = longName ?? (prefix ? `${prefix}/${field(0, 100)}` : field(0, 100))
    longName = undefined
    const body = data.subarray(offset + 512, offset + 512 + size)
    if (type === "L") longName = body.toString("utf8").replace(/\0.*$/s, "")
    else if (type === "0" || type === "") files.set(name.replace(/^package\//, ""), Buffer.from(body))
    offset += 512 + Math.ceil(size / 512) * 512
  }
  return files
}

/** Bytes of every file under dir; `skipNodeModules` leaves out nested packages. */
const dirSize = (dir, skipNodeModules = false) => {
  let total = 0
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name)
    if (entry.isSymbolicLink()) continue
    if (entry.isDirectory()) {
      if (skipNodeModules && entry.name === "node_modules") continue
      total += dirSize(path, skipNodeModules)
    } else total += lstatSync(path).size
  }
  return total
}

/** A package and everything npm installed for it: { bytes, packages }. */
const installedSize = (appDir, name) => {
  const resolveFrom = (fromDir, dep) => {
    let dir = fromDir
    for (;;) {
      const candidate = join(dir, "node_modules", dep)
      if (existsSync(join(candidate, "package.json"))) return candidate
      if (dir === appDir || dir === dirname(dir)) return undefined
      dir = dirname(dir)
    }
  }
  const seen = new Set()
  const queue = [resolveFrom(appDir, name) ?? fail(`${name} is not installed in ${appDir}`)]
  let bytes = 0
  while (queue.length > 0) {
    const dir = queue.shift()
    if (seen.has(dir)) continue
    seen.add(dir)
    bytes += dirSize(dir, true)
    const manifest = JSON.parse(readFileSync(join(dir, "package.json"), "utf8"))
    const optionalPeers = manifest.peerDependenciesMeta ?? {}
    const deps = [
      ...Object.keys(manifest.dependencies ?? {}),
      ...Object.keys(manifest.optionalDependencies ?? {}),
      ...Object.keys(manifest.peerDependencies ?? {}).filter((p) => !optionalPeers[p]?.optional)
    ]
    for (const dep of deps) {
      const found = resolveFrom(dir, dep)
      if (found) queue.push(found)
      else if (!manifest.optionalDependencies?.[dep])
        fail(`${manifest.name}: dependency ${dep} is not installed`)
    }
  }
  return { bytes, packages: seen.size }
}

/** The fenced block of `lang` that follows `marker` in `text` (an indented fence loses its indentation). */
const blockAfter = (text, marker, lang, from = 0) => {
  const at = text.indexOf(marker, from)
  if (at < 0) fail(`"${marker}" not found`)
  const fence = new RegExp(`^( *)\`\`\`${lang}\n`, "gm")
  fence.lastIndex = at
  const open = fence.exec(text) ?? fail(`no \`\`\`${lang} block after "${marker}"`)
  const indent = open[1]
  const start = open.index + open[0].length
  const end = text.indexOf(`\n${indent}\`\`\``, start - 1)
  if (end < 0) fail(`the \`\`\`${lang} block after "${marker}" is not closed`)
  return text
    .slice(start, end + 1)
    .split("\n")
    .map((line) => (line.startsWith(indent) ? line.slice(indent.length) : line))
    .join("\n")
}

/**
 * The module specifiers a compiled file (.js or .d.ts) loads: static `import ... from "x"`, `import "x"`,
 * `export ... from "x"` statements (at the start of a line, as tsc emits them) and `import("x")` with a
 * string literal (dynamic imports, and import types in .d.ts). Only the clause of a statement (names,
 * braces, commas, `* as`, `type`) may stand between the keyword and the string, so text in a string or a
 * template (`["tokens from", at(c.obtainedAt)]`) is never taken for an import.
 */
const moduleSpecifiers = (code) => {
  const specs = []
  const text = code.replace(/\/\*[\s\S]*?\*\//g, "").replace(/^\s*\/\/.*$/gm, "")
  const statement = /^[ \t]*(?:import|export)\b(?:[ \t]+type)?(?:[\s\w$*,{}]*?\bfrom)?\s*["']([^"'\n]+)["']/gm
  for (const [, spec] of text.matchAll(statement)) specs.push(spec)
  for (const [, spec] of text.matchAll(/(?<![\w$.])import\s*\(\s*["']([^"'\n]+)["']\s*[,)]/g))
    specs.push(spec)
  return specs
}

// ---------------------------------------------------------------------------------------------------------------
// steps

const results = []
const step = async (name, fn) => {
  const t0 = Date.now()
  const result = { name }
  results.push(result) // the summary lists steps in the order they started
  process.stderr.write(`--- ${name}\n`)
  try {
    const detail = await fn()
    Object.assign(result, { ok: true, seconds: ((Date.now() - t0) / 1000).toFixed(1), detail })
    process.stderr.write(`ok  ${name} (${result.seconds} s)${detail ? `: ${detail}` : ""}\n`)
    return true
  } catch (error) {
    const message = String(error?.message ?? error)
    Object.assign(result, {
      ok: false,
      seconds: ((Date.now() - t0) / 1000).toFixed(1),
      detail: message
        .split("\n")
        .slice(0, message.split("\n")[0].endsWith(":") ? 2 : 1)
        .join(" ")
    })
    process.stderr.write(`FAIL ${name} (${result.seconds} s)\n${message}\n`)
    return false
  }
}

const packageDirs = readdirSync(join(root, "packages"))
  .map((d) => join(root, "packages", d))
  .filter((d) => existsSync(join(d, "package.json")))
const publicPackages = packageDirs
  .map((dir) => ({ dir, manifest: JSON.parse(readFileSync(join(dir, "package.json"), "utf8")) }))
  .filter((p) => !p.manifest.private)
  .map((p) => ({ ...p, name: p.manifest.name }))
const byName = new Map(publicPackages.map((p) => [p.name, p]))
const tarballs = join(work, "tarballs")
const app = join(work, "app")
const minimal = join(work, "minimal-app")
const guide = join(work, "guide")
mkdirSync(tarballs)

const ok = { build: false, pack: false, install: false }

ok.build = await step("build", async () => {
  const filters = publicPackages.flatMap((p) => ["--filter", p.name])
  await pnpm(["exec", "turbo", "run", "build", ...filters, "--output-logs=errors-only"])
  return `${publicPackages.length} packages`
})

ok.pack =
  ok.build &&
  (await step("pack (pnpm pack)", async () => {
    // dist/ was just built; prepack (the same build) runs when a maintainer packs by hand.
    const filters = publicPackages.flatMap((p) => ["--filter", p.name])
    const r = await pnpm([
      "-r",
      ...filters,
      "pack",
      "--pack-destination",
      tarballs,
      "--json",
      "--config.ignore-scripts=true"
    ])
    const packed = JSON.parse(r.stdout.slice(r.stdout.indexOf("[")))
    for (const p of publicPackages) {
      p.tarball = (
        packed.find((t) => t.name === p.name) ?? fail(`pnpm pack made no tarball of ${p.name}`)
      ).filename
      p.packedBytes = lstatSync(p.tarball).size
      p.files = readTarball(p.tarball)
      p.unpackedBytes = [...p.files.values()].reduce((n, b) => n + b.length, 0)
      p.packed = JSON.parse(p.files.get("package.json").toString("utf8"))
    }
    return publicPackages.map((p) => `${p.name} ${kB(p.packedBytes)}`).join(", ")
  }))

// Three lanes at once: the npm installs and the registry wait more than they compute.
const laneChecks = async () => {
  await step("packed manifests and contents", () => {
    const problems = []
    for (const p of publicPackages) {
      const m = p.packed
      const say = (msg) => problems.push(`${p.name}: ${msg}`)
      if (JSON.stringify(m).includes("workspace:"))
        say("a workspace: range is left in the packed package.json")
      for (const field of ["description", "license"]) if (!m[field]) say(`no ${field}`)
      if (!m.repository?.url || !m.repository?.directory) say("no repository url and directory")
      if (m.type !== "module") say('type is not "module"')
      if (m.sideEffects !== false) say("sideEffects is not false")
      if (!/^>=\s*24(\.|$)/.test(m.engines?.node ?? "")) say(`engines.node is ${m.engines?.node}, not >=24`)
      if (!Array.isArray(m.files)) say("no files list")
      if (m.scripts?.prepack || m.scripts?.postinstall || m.scripts?.install)
        say("an install or pack script ships")
      for (const [entry, target] of Object.entries(m.exports ?? fail(`${p.name}: no exports`))) {
        if (typeof target !== "object" || Object.keys(target)[0] !== "types")
          say(`exports["${entry}"]: types not first`)
        for (const file of Object.values(target)) {
          if (!p.files.has(file.replace(/^\.\//, "")))
            say(`exports["${entry}"] names ${file}, not in the tarball`)
        }
      }
      for (const file of p.files.keys()) {
        const allowed =
          ["package.json", "README.md", "LICENSE"].includes(file) || /^dist\/.*\.(js|d\.ts)$/.test(file)
        if (!allowed) say(`ships ${file}`)
        if (file.endsWith(".js") && !p.files.has(file.replace(/\.js$/, ".d.ts"))) say(`${file} has no .d.ts`)
      }
      if (!p.files.has("LICENSE")) say("no LICENSE file")
      // The main entry never loads the sandbox kit or the test suites (the ./sandbox and ./testing entries).
      const main = m.exports["."]?.default?.replace(/^\.\//, "")
      const reached = new Set()
      for (const queue = main ? [main] : []; queue.length > 0; ) {
        const file = queue.shift()
        if (reached.has(file) || !p.files.has(file)) continue
        reached.add(file)
        for (const spec of moduleSpecifiers(p.files.get(file).toString("utf8"))) {
          if (/^\.{1,2}\//.test(spec)) queue.push(join(dirname(file), spec))
        }
      }
      for (const file of reached) {
        if (/^dist\/(sandbox|testing)(\/|\.)/.test(file)) say(`the main entry loads ${file}`)
      }
      if (main && reached.size < 2 && p.name === "@latchkey/core")
        say("could not follow the main entry's imports")
      // Dependencies are exactly what dist/ imports (types included): none unused, none missing.
      const imported = new Set()
      for (const [file, body] of p.files) {
        if (!/\.(js|d\.ts)$/.test(file)) continue
        for (const spec of moduleSpecifiers(body.toString("utf8"))) {
          if (spec.startsWith(".") || spec.startsWith("node:")) continue
          const name = spec.startsWith("@") ? spec.split("/").slice(0, 2).join("/") : spec.split("/")[0]
          if (name !== m.name) imported.add(name)
        }
      }
      const declared = new Set([
        ...Object.keys(m.dependencies ?? {}),
        ...Object.keys(m.peerDependencies ?? {})
      ])
      const typesOf = (dep) => (dep.startsWith("@types/") ? dep.slice("@types/".length) : undefined)
      for (const dep of declared) {
        if (!imported.has(dep) && !imported.has(typesOf(dep))) say(`declares ${dep} but never imports it`)
      }
      for (const dep of imported) if (!declared.has(dep)) say(`imports ${dep} but does not declare it`)
    }
    if (problems.length > 0) fail(problems.join("\n"))
    return `${publicPackages.length} manifests, ${publicPackages.reduce((n, p) => n + p.files.size, 0)} files`
  })

  await step("publint and attw", async () => {
    const checks = publicPackages.flatMap((p) => [
      { p, tool: "publint", args: [bin("publint"), ["run", "--strict", p.tarball]] },
      {
        p,
        tool: "attw",
        args: [
          bin("attw"),
          [p.tarball, "--profile", "esm-only", "--no-color", "--no-emoji", "--format", "ascii"]
        ]
      }
    ])
    const failures = []
    const queue = [...checks]
    await Promise.all(
      [1, 2].map(async () => {
        for (let c = queue.shift(); c; c = queue.shift()) {
          const r = await runAsync(...c.args)
          c.output = `${r.stdout}${r.stderr}`
          if (r.status !== 0) failures.push(`${c.tool} ${c.p.name}:\n${tail(c.output)}`)
          else if (c.tool === "publint" && !/All good!/.test(c.output)) c.p.publintNotes = tail(c.output, 10)
        }
      })
    )
    for (const p of publicPackages)
      if (p.publintNotes) process.stderr.write(`publint notes, ${p.name}:\n${p.publintNotes}`)
    if (failures.length > 0) fail(failures.join("\n"))
    return `${publicPackages.length} x publint --strict, ${publicPackages.length} x attw --profile esm-only: 0 errors`
  })

  await step("release: changeset version (scratch copy), publish plan, publish dry run", release)
  await step("minimal app: core + provider-generic + SQLite", async () => {
    mkdirSync(minimal)
    writeFileSync(
      join(minimal, "package.json"),
      `${JSON.stringify({ name: "latchkey-minimal", version: "1.0.0", private: true, type: "module" }, null, 2)}\n`
    )
    // README.md's install command, as written, each @latchkey package taken from its tarball.
    const install = blockAfter(readFileSync(join(root, "README.md"), "utf8"), "## Install", "sh")
      .split("\n")
      .find((line) => line.startsWith("npm install "))
      ?.replace(/\s+#.*$/, "")
    if (install !== "npm install @latchkey/core @latchkey/provider-generic") {
      fail(
        `README.md's install command is "${install}", not core + provider-generic (update this check with it)`
      )
    }
    const specs = install
      .split(/\s+/)
      .slice(2)
      .map(
        (name) => byName.get(name)?.tarball ?? fail(`README.md installs ${name}, which is not packed here`)
      )
    await run("npm", ["install", ...specs], { cwd: minimal })
    const testMachinery = ["vitest", "@vitest", "vite", "@effect/vitest", "oidc-provider", "playwright-core"]
    const found = testMachinery.filter((m) => existsSync(join(minimal, "node_modules", m)))
    if (found.length > 0) fail(`a production install pulled test machinery: ${found.join(", ")}`)
    writeFileSync(
      join(minimal, "app.ts"),
      `import { createLatchkey, SqliteStore } from "@latchkey/core"
import { Generic } from "@latchkey/provider-generic"

const latchkey = createLatchkey({
  providers: [
    Generic.provider({
      id: "example",
      clientId: "app",
      clientSecret: "secret",
      redirectUri: "https://app.example.com/oauth/callback",
      endpoints: {
        issuer: "https://auth.example.com",
        authorization: "https://auth.example.com/oauth/authorize",
        token: "https://auth.example.com/oauth/token",
        userinfo: "https://auth.example.com/oauth/userinfo"
      }
    })
  ],
  store: SqliteStore.make({ path: "./latchkey.db" })
})
const { url } = await latchkey.startAuthorization({ providerId: "example", ownerId: "user-42" })
console.log(new URL(url).origin + new URL(url).pathname)
await latchkey.close()
`
    )
    const r = await run(process.execPath, ["app.ts"], { cwd: minimal })
    if (r.stdout.trim() !== "https://auth.example.com/oauth/authorize") fail(`app.ts printed ${r.stdout}`)
    if (!existsSync(join(minimal, "latchkey.db"))) fail("no SQLite file was written")
    return "started an authorization stored in SQLite; no vitest, vite or oidc-provider installed"
  })
}

const laneApp = async () => {
  ok.install = await step("npm install of the tarballs in a scratch app", async () => {
    mkdirSync(app)
    writeFileSync(
      join(app, "package.json"),
      `${JSON.stringify({ name: "latchkey-consumer", version: "1.0.0", private: true, type: "module" }, null, 2)}\n`
    )
    const typescript = JSON.parse(
      readFileSync(join(root, "node_modules/typescript/package.json"), "utf8")
    ).version
    const effect = byName.get("@latchkey/core").packed.dependencies.effect
    // The frameworks @latchkey/http's README mounts the handlers on, at the versions its examples are tested
    // with: what an app using those entry points has installed (fastify is the optional peer that
    // @latchkey/http/fastify's types import; an app that never imports that entry point needs none of them).
    const httpDev = JSON.parse(readFileSync(join(root, "packages/http/package.json"), "utf8")).devDependencies
    const frameworks = ["fastify", "express", "@types/express", "hono"].map((f) => `${f}@${httpDev[f]}`)
    // The packages, effect (the README examples import it) and the compiler for the README check, in one go.
    const tools = [`typescript@${typescript}`, "@types/node@24"]
    await run(
      "npm",
      ["install", ...publicPackages.map((p) => p.tarball), `effect@${effect}`, ...frameworks, ...tools],
      { cwd: app }
    )
    await run("npm", ["ls", "--all"], { cwd: app })
    // Every entry point imports from node_modules; /testing needs its optional peer vitest, and says so.
    const entries = publicPackages.flatMap((p) =>
      Object.keys(p.packed.exports).map((e) => `${p.name}${e.slice(1)}`)
    )
    const script = `
      const failures = []
      for (const entry of ${JSON.stringify(entries)}) {
        try {
          const module = await import(entry)
          if (Object.keys(module).length === 0) failures.push(entry + ": no exports")
        } catch (error) {
          const needsVitest = entry.endsWith("/testing") && error.code === "ERR_MODULE_NOT_FOUND" && /'vitest'/.test(error.message)
          if (!needsVitest) failures.push(entry + ": " + error.message)
        }
      }
      if (failures.length) { console.error(failures.join("\\n")); process.exit(1) }`
    writeFileSync(join(app, "import-every-entry.mjs"), script)
    await run(process.execPath, ["import-every-entry.mjs"], { cwd: app })
    // Every bin a package declares runs from node_modules/.bin, as `npx <name>` would start it.
    const bins = publicPackages.flatMap((p) => Object.keys(p.packed.bin ?? {}))
    for (const name of bins) {
      const help = await run(join(app, "node_modules", ".bin", name), ["--help"], { cwd: app })
      if (!help.stdout.includes("USAGE")) fail(`${name} --help printed no usage:\n${tail(help.stdout)}`)
    }
    return `${entries.length} entry points import (${entries.filter((e) => e.endsWith("/testing")).length} of them need vitest); ${bins.map((b) => `${b} --help`).join(", ") || "no bin"} runs`
  })
  if (!ok.install) return
  await step("README examples type-check (tsc --strict)", async () => {
    const readmes = [join(root, "README.md"), ...publicPackages.map((p) => join(p.dir, "README.md"))]
    const impliedImports = {
      createLatchkey: "@latchkey/core",
      SqliteStore: "@latchkey/core",
      Declarative: "@latchkey/core",
      Provider: "@latchkey/core",
      Generic: "@latchkey/provider-generic",
      HeyGen: "@latchkey/provider-heygen",
      HighLevel: "@latchkey/provider-highlevel",
      PostgresStore: "@latchkey/store-postgres",
      RedisStore: "@latchkey/store-redis",
      Effect: "effect",
      Redacted: "effect"
    }
    const dir = join(app, "readme")
    mkdirSync(dir)
    writeFileSync(
      join(dir, "free-variables.d.ts"),
      `// What the README examples leave to the reader: your request, your providers, your secrets.
import type { IncomingHttpHeaders } from "node:http"
import type { LatchkeyClient, Provider } from "@latchkey/core"
import type { Handlers } from "@latchkey/http"

declare global {
  /** The request your redirect URI received (Fetch API). */
  const request: Request
  /** The same in node:http / Express style. */
  const req: { readonly url: string; readonly headers: IncomingHttpHeaders }
  const providers: ReadonlyArray<Provider.Provider>
  /** A Latchkey instance created elsewhere in your app. */
  const latchkey: LatchkeyClient
  /** A 32-byte key, base64. */
  const vaultKey: string
  const connectionString: string
  const ownerId: string
  const clientId: string
  const agencyConnectionId: string
  const locationConnectionId: string
  const rawBody: string
  const ed25519PublicKey: string
  const rsaPublicKey: string
  function tenantsOf(companyId: string | undefined, locationId: string | undefined): ReadonlyArray<string>
  /** Your session system: the signed-in user of a request, if any. */
  function getSession(request: Request): Promise<{ readonly userId: string } | undefined>
  /** Route handlers created elsewhere in your app (\`handlers({ latchkey, owner })\`). */
  const auth: Handlers
}
export {}
`
    )
    const written = []
    const origins = new Map()
    for (const readme of readmes) {
      const text = readFileSync(readme, "utf8")
      const slug = relative(root, dirname(readme)).replace(/^packages\//, "") || "root"
      let n = 0
      for (const match of text.matchAll(/^```ts\n([\s\S]*?)^```$/gm)) {
        n += 1
        const code = match[1]
        const line = text.slice(0, match.index).split("\n").length
        const imports = Object.entries(impliedImports)
          .filter(([name]) => new RegExp(`\\b${name}\\b`).test(code))
          .filter(([name]) => !new RegExp(`^import[^;]*\\b${name}\\b[^;]*from`, "m").test(code))
          .map(([name, from]) => `import { ${name} } from "${from}"\n`)
          .join("")
        const file = `${slug}-${n}.ts`
        writeFileSync(join(dir, file), `// ${relative(root, readme)}:${line}\n${imports}${code}\nexport {}\n`)
        written.push(file)
        // tsc's line in the wrapped file -> the README's line (the fence is at `line`)
        origins.set(file, {
          readme: relative(root, readme),
          offset: line - 1 - imports.split("\n").length + 1
        })
      }
    }
    writeFileSync(
      join(app, "tsconfig.json"),
      `${JSON.stringify(
        {
          compilerOptions: {
            target: "es2024",
            module: "nodenext",
            moduleResolution: "nodenext",
            types: ["node"],
            strict: true,
            noEmit: true,
            skipLibCheck: false
          },
          include: ["readme"]
        },
        null,
        2
      )}\n`
    )
    const tsc = await runAsync(
      join(app, "node_modules", ".bin", "tsc"),
      ["-p", "tsconfig.json", "--strict"],
      {
        cwd: app
      }
    )
    if (tsc.status !== 0) {
      const located = `${tsc.stdout}${tsc.stderr}`.replace(
        /readme\/([\w.-]+\.ts)\((\d+),(\d+)\)/g,
        (all, file, l, c) => {
          const origin = origins.get(file)
          return origin ? `${origin.readme}:${Number(l) + origin.offset}:${c} (${all})` : all
        }
      )
      fail(`tsc --strict found errors in README examples:\n${tail(located)}`)
    }
    return `${written.length} blocks from ${readmes.length} READMEs, library types checked too (no skipLibCheck)`
  })

  await step("README examples run from the tarballs", async () => {
    const runnable = []
    for (const p of publicPackages) {
      const text = readFileSync(join(p.dir, "README.md"), "utf8")
      for (const match of text.matchAll(/^```ts\n([\s\S]*?)^```$/gm)) {
        const after = text.slice(match.index + match[0].length)
        const next = after.search(/^```ts$/m)
        const between = next < 0 ? after : after.slice(0, next)
        const prints =
          between.match(/It prints:?\s*\n+```\w*\n([\s\S]*?)```/) ?? between.match(/It prints `([^`]+)`/)
        if (prints) runnable.push({ name: `${p.name} README`, code: match[1], expected: prints[1].trim() })
      }
    }
    if (runnable.length < 2)
      fail(`expected the HeyGen and HighLevel examples, found ${runnable.length} runnable blocks`)
    mkdirSync(join(app, "run"))
    const outcomes = await Promise.all(
      runnable.map(async (r, i) => {
        const file = join(app, "run", `example-${i + 1}.ts`)
        writeFileSync(file, r.code)
        const out = await runAsync(process.execPath, [file], { cwd: app, timeout: 30_000 })
        const okRun = out.status === 0 && out.stdout.trim() === r.expected && out.stderr.trim() === ""
        return okRun
          ? undefined
          : `${r.name}: exit ${out.status}\nexpected:\n${r.expected}\ngot:\n${out.stdout}${out.stderr}`
      })
    )
    const failures = outcomes.filter(Boolean)
    if (failures.length > 0) fail(failures.join("\n"))
    return runnable.map((r) => `${r.name} printed ${JSON.stringify(r.expected.split("\n")[0])}`).join("; ")
  })
}

const laneGuide = async () => {
  await step("docs/providers.md, steps 1-6, against the tarballs", async () => {
    const doc = readFileSync(join(root, "docs/providers.md"), "utf8")
    const core = byName.get("@latchkey/core").tarball
    mkdirSync(guide)
    // 1. Create the package: the commands as written, @latchkey/core taken from its tarball.
    const commands = blockAfter(doc, "## 1. Create the package", "sh")
    if (!/^npm install @latchkey\/core effect zod$/m.test(commands))
      fail("step 1 no longer installs @latchkey/core effect zod")
    await run("bash", ["-euc", commands.replaceAll("npm install @latchkey/core", `npm install ${core}`)], {
      cwd: guide
    })
    const pkgDir = join(guide, "latchkey-provider-acme")
    const manifest = JSON.parse(readFileSync(join(pkgDir, "package.json"), "utf8"))
    const parts = JSON.parse(blockAfter(doc, "`package.json` — the parts that matter", "json"))
    writeFileSync(join(pkgDir, "package.json"), `${JSON.stringify({ ...manifest, ...parts }, null, 2)}\n`)
    const tsconfigAt = doc.indexOf("`tsconfig.json` (type checking")
    writeFileSync(join(pkgDir, "tsconfig.json"), blockAfter(doc, "`tsconfig.json` (type checking", "json"))
    const first = doc.indexOf("```json", tsconfigAt)
    writeFileSync(join(pkgDir, "tsconfig.build.json"), blockAfter(doc, "```", "json", first + 7))
    writeFileSync(join(pkgDir, "vitest.config.ts"), blockAfter(doc, "`vitest.config.ts`:", "ts"))
    // 2-5. The provider, the declarative file, the sandbox and the conformance tests.
    writeFileSync(join(pkgDir, "src/Acme.ts"), blockAfter(doc, "One file, `src/Acme.ts`", "ts"))
    writeFileSync(join(pkgDir, "src/index.ts"), blockAfter(doc, "and `src/index.ts`:", "ts"))
    mkdirSync(join(pkgDir, "providers"))
    writeFileSync(
      join(pkgDir, "providers/acme.yaml"),
      blockAfter(doc, "## 3. Or describe it in a file", "yaml")
    )
    writeFileSync(join(pkgDir, "src/sandbox.ts"), blockAfter(doc, "`src/sandbox.ts`:", "ts"))
    writeFileSync(
      join(pkgDir, "test/conformance.test.ts"),
      blockAfter(doc, "`test/conformance.test.ts`:", "ts")
    )
    writeFileSync(
      join(pkgDir, "test/declarative.test.ts"),
      blockAfter(doc, "`test/declarative.test.ts`:", "ts")
    )
    await run("npm", ["run", "typecheck"], { cwd: pkgDir })
    const vitest = await run("npx", ["vitest", "run", "--reporter=json", "--outputFile=vitest.json"], {
      cwd: pkgDir
    })
    const report = JSON.parse(readFileSync(join(pkgDir, "vitest.json"), "utf8"))
    if (report.numFailedTests > 0 || report.numPassedTests < 20) {
      fail(
        `conformance: ${report.numPassedTests} passed, ${report.numFailedTests} failed\n${tail(vitest.stdout)}`
      )
    }
    // 6. Publish it: pack, install the tarball in a clean folder, import it (everything but the publish).
    const publish = blockAfter(doc, "## 6. Publish it", "sh")
      .split("\n")
      .map((l) => l.replace(/\s+#.*$/, "").trim())
      .filter((l) => l && !l.startsWith("npm run typecheck") && !/publish/.test(l))
      .map((l) =>
        l.replaceAll(
          "/path/to/latchkey-provider-acme-0.1.0.tgz",
          join(pkgDir, "latchkey-provider-acme-0.1.0.tgz")
        )
      )
    const packed = await run("bash", ["-euc", publish.join("\n")], { cwd: pkgDir })
    if (!packed.stdout.includes("provider")) fail(`the packed provider did not import:\n${packed.stdout}`)
    return `npm install, typecheck, ${report.numPassedTests} conformance checks passed (${report.numPendingTests} skipped), built, packed, installed and imported`
  })
}

async function release() {
  // changeset version on a copy of the committed tree plus this checkout's changes to .changeset and manifests
  const copy = join(work, "release")
  mkdirSync(copy)
  for (const entry of [".changeset", "package.json", "pnpm-workspace.yaml"])
    cpSync(join(root, entry), join(copy, entry), { recursive: true })
  for (const dir of ["packages", "apps", "examples", "bench"]) {
    if (!existsSync(join(root, dir))) continue
    const manifests =
      dir === "bench" ? [join(root, dir)] : readdirSync(join(root, dir)).map((d) => join(root, dir, d))
    for (const d of manifests) {
      if (!existsSync(join(d, "package.json"))) continue
      mkdirSync(join(copy, relative(root, d)), { recursive: true })
      cpSync(join(d, "package.json"), join(copy, relative(root, d), "package.json"))
    }
  }
  symlinkSync(join(root, "node_modules"), join(copy, "node_modules"))
  const changesets = readdirSync(join(root, ".changeset"))
    .filter((f) => f.endsWith(".md") && f !== "README.md")
    .map((f) => {
      const text = readFileSync(join(root, ".changeset", f), "utf8")
      const front =
        text.match(/^---\n([\s\S]*?)\n---\n([\s\S]*)$/) ?? fail(`.changeset/${f}: no front matter`)
      const releases = front[1]
        .split("\n")
        .map((l) => l.match(/^"(.+)": (major|minor|patch)$/) ?? fail(`.changeset/${f}: bad line ${l}`))
      return {
        file: f,
        releases: releases.map(([, name, type]) => ({ name, type })),
        summary: front[2].trim()
      }
    })
  await run(bin("changeset"), ["version"], { cwd: copy })
  const rank = { patch: 1, minor: 2, major: 3 }
  const bump = (version, type) => {
    const [major, minor, patch] = version.split(".").map(Number)
    if (type === "major") return major === 0 ? `0.${minor + 1}.0` : `${major + 1}.0.0`
    if (type === "minor") return major === 0 && minor === 0 ? "0.1.0" : `${major}.${minor + 1}.0`
    return `${major}.${minor}.${patch + 1}`
  }
  const problems = []
  const versions = []
  for (const p of publicPackages) {
    const after = JSON.parse(readFileSync(join(copy, relative(root, p.dir), "package.json"), "utf8"))
    const mine = changesets.flatMap((c) =>
      c.releases.filter((r) => r.name === p.name).map((r) => ({ ...r, c }))
    )
    if (mine.length === 0) continue
    const type = mine.reduce((t, r) => (rank[r.type] > rank[t] ? r.type : t), "patch")
    // 0.x: changesets bumps minor for a breaking change only when asked to; we only check what it wrote.
    const expected =
      type === "major" && p.manifest.version.startsWith("0.")
        ? `${Number(p.manifest.version.split(".")[0]) + 1}.0.0`
        : bump(p.manifest.version, type)
    if (after.version !== expected)
      problems.push(`${p.name}: ${p.manifest.version} -> ${after.version}, expected ${expected}`)
    versions.push(`${p.name} ${p.manifest.version} -> ${after.version}`)
    for (const [dep, range] of Object.entries(after.dependencies ?? {})) {
      if (byName.has(dep) && !range.startsWith("workspace:"))
        problems.push(`${p.name}: ${dep} is ${range}, not a workspace: range`)
    }
    const changelog = join(copy, relative(root, p.dir), "CHANGELOG.md")
    if (!existsSync(changelog)) {
      problems.push(`${p.name}: no CHANGELOG.md`)
      continue
    }
    const log = readFileSync(changelog, "utf8")
    if (!log.startsWith(`# ${p.name}\n\n## ${after.version}\n`))
      problems.push(`${p.name}: CHANGELOG.md does not start with ## ${after.version}`)
    for (const { c } of mine) {
      if (!log.includes(c.summary.split("\n")[0]))
        problems.push(`${p.name}: CHANGELOG.md lacks .changeset/${c.file}`)
    }
  }
  if (readdirSync(join(copy, ".changeset")).some((f) => f.endsWith(".md") && f !== "README.md")) {
    problems.push("changeset version left changesets behind")
  }
  if (problems.length > 0) fail(problems.join("\n"))
  // What `pnpm release` (changeset publish) would publish, and pnpm's own dry run of it.
  const plan = await pnpm(["exec", "changeset", "publish-plan"])
  for (const p of publicPackages)
    if (!`${plan.stdout}${plan.stderr}`.includes(`- ${p.name}@`)) fail(`publish-plan does not list ${p.name}`)
  const dry = await pnpm(["publish", "-r", "--dry-run", "--no-git-checks", "--config.ignore-scripts=true"])
  const published = [...`${dry.stdout}${dry.stderr}`.matchAll(/📦 (@?[^@\s]+)@/g)].map((m) => m[1]).sort()
  const expected = publicPackages.map((p) => p.name).sort()
  if (JSON.stringify(published) !== JSON.stringify(expected))
    fail(`pnpm publish -r --dry-run would publish ${published.join(", ")}`)
  return `${changesets.length} changesets: ${versions.join(", ")}; publish dry run: ${published.length} packages, no private one`
}

if (ok.pack) await Promise.all([laneChecks(), laneApp(), laneGuide()])

// ---------------------------------------------------------------------------------------------------------------
// sizes and summary

if (ok.pack) {
  const rows = [["package", "packed", "unpacked", "installed with dependencies"]]
  for (const p of publicPackages) {
    const installed = ok.install ? installedSize(app, p.name) : undefined
    rows.push([
      p.name,
      kB(p.packedBytes),
      kB(p.unpackedBytes),
      installed ? `${kB(installed.bytes)} (${installed.packages} packages)` : "-"
    ])
  }
  if (existsSync(join(minimal, "node_modules", "@latchkey", "core"))) {
    const packages = readdirSync(join(minimal, "node_modules")).flatMap((d) =>
      d.startsWith("@")
        ? readdirSync(join(minimal, "node_modules", d)).map((s) => `${d}/${s}`)
        : d.startsWith(".")
          ? []
          : [d]
    )
    rows.push([
      "minimal app (core + provider-generic + SQLite)",
      "",
      "",
      `${kB(dirSize(join(minimal, "node_modules")))} (${packages.length} packages)`
    ])
  }
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)))
  console.log(`\nsizes (bytes of files; installed = the package and every package npm installs for it)`)
  for (const r of rows)
    console.log(r.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  "))
}

const failed = results.filter((r) => !r.ok)
console.log(`\nconsumer check (${((Date.now() - started) / 1000).toFixed(0)} s):`)
for (const r of results)
  console.log(`  ${r.ok ? "ok  " : "FAIL"} ${r.name} (${r.seconds} s)${r.detail ? ` — ${r.detail}` : ""}`)
if (!ok.build || !ok.pack) console.log("  (later steps need the build and the tarballs)")
if (process.argv.includes("--keep")) console.log(`  kept ${work}`)
else rmSync(work, { recursive: true, force: true })
process.exit(failed.length > 0 || !ok.install ? 1 : 0)
