#!/usr/bin/env bash
# The one test command (README, `make test`, .ci/run): install, lint, type-check, test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
export PATH="$PWD/.venv/bin:$PATH"
echo "== ruff" && ruff check . && ruff format --check .
echo "== import contracts" && lint-imports
echo "== mypy" && mypy
echo "== pytest" && pytest -q -p no:cacheprovider "$@"
