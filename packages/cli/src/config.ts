/**
 * The app's Latchkey options, loaded from the module it points at (`--config ./latchkey.config.ts`;
 * Node 24 runs TypeScript directly): its default export, or an export named `options`, either the
 * options themselves or a function (sync or async) returning them.
 */
import { resolve } from "node:path"
import { pathToFileURL } from "node:url"
import type { LatchkeyOptions } from "@latchkey/core"

export class ConfigError extends Error {
  override readonly name = "ConfigError"
}

export const loadOptions = async (path: string): Promise<LatchkeyOptions> => {
  let module: Record<string, unknown>
  try {
    module = (await import(pathToFileURL(resolve(path)).href)) as Record<string, unknown>
  } catch (error) {
    const text = error instanceof Error ? error.message : String(error)
    throw new ConfigError(`cannot load ${path}: ${text}`)
  }
  let value = module.default ?? module.options
  if (typeof value === "function") value = await (value as () => unknown)()
  const options = value as Partial<LatchkeyOptions> | undefined
  if (typeof options !== "object" || options === null || !Array.isArray(options.providers)) {
    throw new ConfigError(
      `${path} must export the Latchkey options ({ providers, store, vault }) as its default export or as "options"`
    )
  }
  return options as LatchkeyOptions
}
