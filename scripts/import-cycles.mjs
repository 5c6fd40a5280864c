#!/usr/bin/env node
// The import graph of each package's src/ — type-only imports included — must have no cycle: a
// module that depends on itself through others cannot be understood, tested or moved on its own.
// Prints each cycle found (as a path) and exits 1; prints one line per package and exits 0 otherwise.
// Also: a provider package (packages/provider-*, examples/provider-*) imports core only through its
// provider-facing entry points (`@latchkey/core/provider`, `/sandbox`, `/testing`), never the engine.
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs"
import { dirname, join, normalize, relative } from "node:path"

const root = new URL("..", import.meta.url).pathname
const packages = ["packages", "apps", "examples"].flatMap((group) =>
  existsSync(join(root, group))
    ? readdirSync(join(root, group))
        .map((name) => join(root, group, name, "src"))
        .filter((dir) => existsSync(dir))
    : []
)

const IMPORT = /(?:^|\n)\s*(?:import|export)\s+(?:type\s+)?(?:[\s\S]*?\sfrom\s+)?["'](\.{1,2}\/[^"']+)["']/g
const DYNAMIC = /import\(\s*["'](\.{1,2}\/[^"']+)["']\s*\)/g

const filesOf = (dir) =>
  readdirSync(dir).flatMap((name) => {
    const path = join(dir, name)
    if (statSync(path).isDirectory()) return filesOf(path)
    return /\.(ts|mts|tsx)$/.test(name) && !name.endsWith(".d.ts") ? [path] : []
  })

const CORE = /(?:from|import)\s*\(?\s*["']@latchkey\/core(\/[^"']*)?["']/g
const PROVIDER_ENTRIES = new Set(["/provider", "/sandbox", "/testing"])

let failed = false
for (const src of packages) {
  const pkg = relative(root, dirname(src))
  if (/(^|\/)provider-[^/]+$/.test(pkg)) {
    for (const file of filesOf(src)) {
      for (const match of readFileSync(file, "utf8").matchAll(CORE)) {
        if (!PROVIDER_ENTRIES.has(match[1] ?? "")) {
          failed = true
          console.error(
            `provider import   ${relative(root, file)}: "@latchkey/core${match[1] ?? ""}" (use @latchkey/core/provider)`
          )
        }
      }
    }
  }
  const files = new Set(filesOf(src))
  const graph = new Map()
  for (const file of files) {
    const text = readFileSync(file, "utf8")
    const deps = new Set()
    for (const pattern of [IMPORT, DYNAMIC]) {
      for (const match of text.matchAll(pattern)) {
        const target = normalize(join(dirname(file), match[1]))
        const resolved = [
          target,
          target.replace(/\.js$/, ".ts"),
          `${target}.ts`,
          join(target, "index.ts")
        ].find((candidate) => files.has(candidate))
        if (resolved !== undefined) deps.add(resolved)
      }
    }
    graph.set(file, deps)
  }
  // Depth-first search for back edges; each cycle is reported once, from its first module.
  const state = new Map()
  const stack = []
  const cycles = []
  const visit = (file) => {
    state.set(file, "open")
    stack.push(file)
    for (const dep of graph.get(file) ?? []) {
      if (state.get(dep) === "open") cycles.push([...stack.slice(stack.indexOf(dep)), dep])
      else if (!state.has(dep)) visit(dep)
    }
    stack.pop()
    state.set(file, "done")
  }
  for (const file of [...files].sort()) if (!state.has(file)) visit(file)
  const name = relative(root, dirname(src))
  if (cycles.length === 0) {
    console.log(`no import cycle  ${name} (${files.size} modules)`)
    continue
  }
  failed = true
  for (const cycle of cycles) {
    console.error(`import cycle     ${name}: ${cycle.map((f) => relative(src, f)).join(" -> ")}`)
  }
}
process.exit(failed ? 1 : 0)
