/**
 * Return paths: where a user is sent back to after linking or unlinking. Only a path on the app's own
 * origin is accepted, so that a crafted `returnTo` cannot turn the callback into an open redirect.
 */

const BASE = "http://return-path.invalid"

/**
 * The value as a same-origin path (`/settings?tab=1`), or undefined when it is not one.
 *
 * Refused: anything not starting with exactly one `/` (absolute URLs, `//host`, `javascript:`), any
 * backslash (browsers read `/\evil.example` as `//evil.example`), control characters and whitespace,
 * and paths that normalize to two leading slashes (`/.//evil.example` becomes `//evil.example`, which a
 * browser follows to another host). The result is the normalized path, query and fragment.
 */
export const safeReturnPath = (value: unknown): string | undefined => {
  if (typeof value !== "string" || value.length === 0 || value.length > 2048) return undefined
  if (!value.startsWith("/") || value.startsWith("//")) return undefined
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what is refused
  if (/[\\\s\u0000-\u001f\u007f]/.test(value)) return undefined
  let url: URL
  try {
    url = new URL(value, BASE)
  } catch {
    return undefined
  }
  if (url.origin !== BASE) return undefined
  if (url.pathname.startsWith("//") || url.pathname.includes("\\")) return undefined
  return `${url.pathname}${url.search}${url.hash}`
}

/** `path` with extra query parameters (the path is already safe). */
export const withQuery = (path: string, params: Readonly<Record<string, string>>): string => {
  const url = new URL(path, BASE)
  for (const [k, v] of Object.entries(params)) url.searchParams.set(k, v)
  return `${url.pathname}${url.search}${url.hash}`
}
