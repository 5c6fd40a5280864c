/**
 * A running count of the hostile inputs the security tests try, by class, and how each behaved.
 * Each test file prints its tally when it ends (the numbers quoted in the security notes).
 */
export type Outcome = "refused" | "neutralised" | "accepted"

const tally = new Map<string, Record<Outcome, number>>()

/** Record one hostile input of `klass` and what Latchkey did with it. */
export const record = (klass: string, outcome: Outcome): void => {
  const row = tally.get(klass) ?? { refused: 0, neutralised: 0, accepted: 0 }
  row[outcome]++
  tally.set(klass, row)
}

export const report = (file: string): string => {
  const lines = [...tally].map(
    ([klass, r]) =>
      `  ${klass}: ${r.refused + r.neutralised + r.accepted} (refused ${r.refused}, neutralised ${r.neutralised}, accepted ${r.accepted})`
  )
  const total = [...tally.values()].reduce((n, r) => n + r.refused + r.neutralised + r.accepted, 0)
  return `hostile inputs in ${file}: ${total}\n${lines.join("\n")}`
}
