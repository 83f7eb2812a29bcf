#!/usr/bin/env bash
# The demo command: a virtualenv with the project and its embedded broker, then `kubefinops demo`.
# Needs only Python 3.11+ (no Java, no Docker, no services).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q -e ".[embedded]"
exec .venv/bin/kubefinops demo "$@"
