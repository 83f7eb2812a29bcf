#!/usr/bin/env bash
# Build Prometheus 3.x from the Go module proxy (no release tarball is reachable here; Debian has
# 2.42) and print the binary's path.  Used by `bench/bench_oneshot.py --prometheus`: from 3.16 on,
# `totalQueryableSamples` counts what a subquery's inner expression reads (prometheus#19165) and
# `samplesRead` (3.13, #18081) counts storage reads, so KRR's subqueries are logged at their real
# cost.  Not needed by the tests.  Takes ~9 min on 2 cores the first time (Go 1.25+), then cached
# in ~/.cache/kubefinops/prometheus-<version>/.
#   scripts/prometheus3.sh [module version, default v0.316.0 = Prometheus 3.16.0]
set -euo pipefail
version=${1:-v0.316.0}
dest="${XDG_CACHE_HOME:-$HOME/.cache}/kubefinops/prometheus-$version"
if [ ! -x "$dest/bin/prometheus" ]; then
  command -v go >/dev/null || { echo "prometheus3: needs Go (https://go.dev/dl)" >&2; exit 1; }
  mkdir -p "$dest"
  echo "prometheus3: building github.com/prometheus/prometheus/cmd/prometheus@$version" >&2
  # Prometheus 3.x's Go module versions are v0.3MM.P for release 3.MM.P; stamped so that
  # /api/v1/status/buildinfo (and the bench's header) names the release
  minor=${version#v0.3}
  release="3.${minor%%.*}.${version##*.}"
  GOBIN="$dest/bin" GOFLAGS=-trimpath go install \
    -ldflags "-X github.com/prometheus/common/version.Version=$release" \
    "github.com/prometheus/prometheus/cmd/prometheus@$version" >&2
fi
echo "$dest/bin/prometheus"
