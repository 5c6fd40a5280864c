// Changelog lines for `changeset version`: @changesets/cli's own format (the changeset's text after its commit),
// except that the Latchkey packages a release moves to are listed once, not once per changeset behind them.
export default {
  getReleaseLine: async (changeset) => {
    const [first, ...rest] = changeset.summary.split("\n").map((line) => line.trimEnd())
    const commit = changeset.commit ? `${changeset.commit.slice(0, 7)}: ` : ""
    return [`- ${commit}${first}`, ...rest.map((line) => (line ? `  ${line}` : ""))].join("\n")
  },
  getDependencyReleaseLine: async (_changesets, dependencies) =>
    dependencies.length === 0
      ? ""
      : `- Updated dependencies: ${dependencies.map((d) => `${d.name}@${d.newVersion}`).join(", ")}`
}
