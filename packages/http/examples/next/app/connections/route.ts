// app/connections/route.ts: the signed-in user's linked accounts.
import { connections } from "../../lib/latchkey.ts"

export const dynamic = "force-dynamic"

export const GET = (request: Request) => connections(request)
