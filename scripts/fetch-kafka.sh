#!/usr/bin/env bash
# Fetch the Apache Kafka broker jars (KRaft, no ZooKeeper) from Maven Central into a cache
# outside the repo and print the libs directory on stdout (everything else goes to stderr).
#
#   scripts/fetch-kafka.sh            -> ~/.cache/kubefinops/kafka-3.9.2/libs
#   KUBEFINOPS_KAFKA_VERSION=4.1.2 scripts/fetch-kafka.sh
#
# Kafka is in neither Debian nor PyPI; Maven Central has every module, so a tiny generated pom
# depending on org.apache.kafka:kafka_2.13 plus `mvn dependency:copy-dependencies` gives the
# same class path as the binary distribution's libs/ (what kafka-storage.sh and
# kafka-server-start.sh put on `java -cp`; kafka.tools.StorageTool is in kafka_2.13 itself, so
# kafka-tools and its Connect/Jetty tree are not needed). The broker logs through SLF4J 1.7;
# the Log4j 2 binding (log4j-slf4j-impl + log4j-core, as in the 4.x distribution) is added for
# every version so one log4j2.properties works for 3.9 and 4.x.
#
# Version: Kafka 3.9.2 (KRaft; the last 3.x line), not 4.x, because of SCRAM with kcat:
#   Kafka 4.1.2 was tried first and works with aiokafka 0.14 (SCRAM-SHA-256 produce, consume,
#   admin, group commits), but Kafka 4.x enforces the strict SCRAM nonce check of RFC 5802 and
#   librdkafka < 2.6.1 sends a wrong nonce (fixed upstream in confluentinc/librdkafka#4895).
#   Debian bookworm's kcat links librdkafka 2.0.2, so `kcat` (our topic-inspection tool, and
#   any librdkafka client older than 2.6.1) gets "invalid credentials" from a 4.x broker with
#   the right password. 3.9.2 accepts aiokafka, faust and Debian's kcat alike. The broker
#   config used by tests/harness/kafka.py is the same for both (KRaft, `format --standalone`,
#   `--add-scram`), so KUBEFINOPS_KAFKA_VERSION=4.1.2 runs everything except the kcat checks.
#
# Idempotent: a marker file records a complete fetch; a second run prints the path and exits.
# Safe to run concurrently (flock). Maven's own repository also lives in the cache, so
# `rm -rf ~/.cache/kubefinops/kafka-*  ~/.cache/kubefinops/m2` is a true cold start.
set -euo pipefail

VERSION="${KUBEFINOPS_KAFKA_VERSION:-3.9.2}"
LOG4J_VERSION="2.24.3"
CACHE="${KUBEFINOPS_CACHE:-$HOME/.cache/kubefinops}"
DEST="$CACHE/kafka-$VERSION"
LIBS="$DEST/libs"
MARKER="$DEST/.complete"

mkdir -p "$CACHE"

complete() {
    [[ -f "$MARKER" ]] && compgen -G "$LIBS/kafka_2.13-$VERSION.jar" >/dev/null
}

if complete; then
    echo "$LIBS"
    exit 0
fi

command -v mvn >/dev/null || { echo "fetch-kafka: maven (mvn) is required: apt-get install -y maven" >&2; exit 2; }
command -v java >/dev/null || { echo "fetch-kafka: java 17+ is required: apt-get install -y openjdk-17-jre-headless" >&2; exit 2; }

exec 9>"$CACHE/.kafka-$VERSION.lock"
flock 9
if complete; then  # another process finished the fetch while we waited for the lock
    echo "$LIBS"
    exit 0
fi

WORK="$(mktemp -d "$CACHE/.fetch-kafka-XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

cat >"$WORK/pom.xml" <<POM
<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0"
         xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
         xsi:schemaLocation="http://maven.apache.org/POM/4.0.0 https://maven.apache.org/xsd/maven-4.0.0.xsd">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.kubefinops</groupId>
  <artifactId>kafka-broker-libs</artifactId>
  <version>$VERSION</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>$LOG4J_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>$LOG4J_VERSION</version>
    </dependency>
  </dependencies>
</project>
POM

echo "fetch-kafka: downloading Kafka $VERSION jars into $LIBS" >&2
start=$(date +%s)
if ! mvn -q -B -Dstyle.color=never -f "$WORK/pom.xml" \
    -Dmaven.repo.local="$CACHE/m2" \
    org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
    -DincludeScope=runtime \
    -DoutputDirectory="$WORK/libs" >"$WORK/mvn.log" 2>&1; then
    cat "$WORK/mvn.log" >&2
    echo "fetch-kafka: mvn failed (Maven Central reachable? version $VERSION exists?)" >&2
    exit 1
fi

[[ -f "$WORK/libs/kafka_2.13-$VERSION.jar" ]] || { echo "fetch-kafka: kafka_2.13-$VERSION.jar missing after mvn" >&2; exit 1; }

rm -rf "$DEST"
mkdir -p "$DEST"
mv "$WORK/libs" "$LIBS"
count=$(find "$LIBS" -name '*.jar' | wc -l)
printf 'kafka %s\njars %s\nfetched %s\n' "$VERSION" "$count" "$(date -u +%FT%TZ)" >"$MARKER"
echo "fetch-kafka: $count jars in $(( $(date +%s) - start ))s" >&2
echo "$LIBS"
