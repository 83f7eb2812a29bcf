#!/usr/bin/env bash
# Install everything the tests need on a fresh machine, idempotently:
#   - Debian packages: prometheus (server + promtool), kcat, git, kubectl-free kustomize is not
#     needed (the GitOps writer renders with `kubectl kustomize` when kubectl is present and with
#     the Python kustomize fallback otherwise; see docs/gitops.md)
#   - a virtualenv in .venv with the project and its test extras
#   - the Apache Kafka broker jars from Maven Central (cached in ~/.cache/kubefinops)
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v prometheus >/dev/null || need_apt+=(prometheus)
command -v promtool >/dev/null || need_apt+=(prometheus)
command -v kcat >/dev/null || need_apt+=(kcat)
command -v git >/dev/null || need_apt+=(git)
command -v java >/dev/null || need_apt+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need_apt+=(maven)
if ((${#need_apt[@]})); then
  echo "install: apt-get install ${need_apt[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# The Debian package enables a system service on machines with systemd; the tests start their own.
command -v systemctl >/dev/null && systemctl disable --now prometheus >/dev/null 2>&1 || true

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".[test]"

scripts/fetch-kafka.sh >/dev/null
echo "install: ok" >&2
