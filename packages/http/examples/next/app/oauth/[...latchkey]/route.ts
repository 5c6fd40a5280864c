// app/oauth/[...latchkey]/route.ts: every Latchkey route below /oauth (start, callback, install,
// unlink, webhooks). Next.js calls route handlers with a Web Request; the handlers answer a Response.
import { auth } from "../../../lib/latchkey.ts"

export const dynamic = "force-dynamic"

export const GET = (request: Request) => auth.fetch(request)
export const POST = (request: Request) => auth.fetch(request)
