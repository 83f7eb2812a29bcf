#!/usr/bin/env bash
# Install everything the tests need on a fresh machine, idempotently:
#   - Debian packages: prometheus (server + promtool), kcat, git, Java 17 + Maven (to fetch the
#     Kafka broker), chromium (opens the HTML report in a browser test)
#   - a virtualenv in .venv with the project and its test extras
#   - the Apache Kafka broker jars from Maven Central (cached in ~/.cache/kubefinops)
# `kubectl` (for `kubectl kustomize`) comes with the machine image; it is in no registry we reach.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v prometheus >/dev/null || need_apt+=(prometheus)
command -v promtool >/dev/null || need_apt+=(prometheus)
command -v kcat >/dev/null || need_apt+=(kcat)
command -v git >/dev/null || need_apt+=(git)
command -v java >/dev/null || need_apt+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need_apt+=(maven)
command -v chromium >/dev/null || need_apt+=(chromium)
if ((${#need_apt[@]})); then
  echo "install: apt-get install ${need_apt[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# The Debian package enables a system service on machines with systemd; the tests start their own.
command -v systemctl >/dev/null && systemctl disable --now prometheus >/dev/null 2>&1 || true

if ! command -v kubectl >/dev/null; then
  echo "install: kubectl is missing (the GitOps writer renders overlays with 'kubectl kustomize')" >&2
  exit 1
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".[test]"

scripts/fetch-kafka.sh >/dev/null
echo "install: ok" >&2
