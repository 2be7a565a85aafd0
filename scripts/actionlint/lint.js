// Lint workflow files with actionlint; prints JSON findings (tests/unit/test_ci.py filters them).
// Usage: node scripts/actionlint/lint.js FILE...
const path = require("path");
const fs = require("fs");
const base = path.join(__dirname, "node_modules", "@tktco", "node-actionlint");
const { runLintForFiles } = require(path.join(base, "build/run-lint.js"));
const files = process.argv.slice(2).map((p) => ({ path: p, data: fs.readFileSync(p, "utf8") }));
runLintForFiles(files).then((r) => { console.log(JSON.stringify(r.map(({data, ...x}) => x))); });
