// lib/latchkey.ts: one Latchkey instance and its route handlers for the whole Next.js app.
import { createApp } from "../../app.ts"

export const { latchkey, auth, connections } = createApp()
