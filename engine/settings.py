"""Typed settings: one object, built once at start and passed explicitly.

Environment variables use the prefix ``KUBEFINOPS_`` (``KUBEFINOPS_KAFKA_BOOTSTRAP_SERVERS``…).
Secrets are ``SecretStr`` and may instead come from a mounted file (``…_FILE`` settings), the
way Kubernetes Secrets such as ``infra-kafka-user-passwords`` are mounted.  Nothing here reads
``os.environ`` at import time: :func:`load_settings` is called by the CLI.

A misconfiguration raises :class:`engine.errors.ConfigError` with one line that names the
setting and never the secret's value.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine.core.cost import Prices
from engine.core.verification import VerificationParams
from engine.errors import ConfigError

_SVC = "kubefinops.svc.cluster.local"

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


class SecurityProtocol(StrEnum):
    PLAINTEXT = "PLAINTEXT"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"
    SSL = "SSL"


class SaslMechanism(StrEnum):
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"
    PLAIN = "PLAIN"


class GitMode(StrEnum):
    DIRECT = "direct"
    BRANCH = "branch"


class TableStore(StrEnum):
    MEMORY = "memory"
    ROCKSDB = "rocksdb"


def _check_url(value: str, *, schemes: tuple[str, ...]) -> str:
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.hostname:
        raise ValueError(f"must be a URL with scheme {'/'.join(schemes)} and a host")
    try:
        _ = parts.port
    except ValueError as exc:  # e.g. "http://host:notaport"
        raise ValueError("has an invalid port") from exc
    return value.rstrip("/")


MIN_TOKEN_CHARS = 12  # the API's bearer tokens


class Settings(BaseSettings):
    """Every knob of a worker, with defaults naming the in-cluster services of the seed."""

    model_config = SettingsConfigDict(
        env_prefix="KUBEFINOPS_",
        extra="ignore",
        case_sensitive=False,
        validate_default=True,
    )

    # --- identity / runtime -------------------------------------------------------------------
    app_id: str = "kubefinops"
    data_dir: Path = Path("/var/lib/kubefinops")
    log_level: str = "info"
    web_host: str = "0.0.0.0"
    web_port: Annotated[int, Field(ge=0, le=65535)] = 6066
    web_canonical_url: str | None = None  # how peers reach this worker (routing of /api/usage)
    api_token: SecretStr | None = None  # bearer token of the policy API and POST /api/cycles
    api_token_file: Path | None = None
    # When set, the read API (/api/usage) needs this token (or the api_token) too.
    api_read_token: SecretStr | None = None
    api_read_token_file: Path | None = None

    # --- Kafka ---------------------------------------------------------------------------------
    kafka_bootstrap_servers: str = f"infra-kafka.{_SVC}:9092"
    kafka_security_protocol: SecurityProtocol | None = (
        None  # None: SASL_PLAINTEXT iff a user is set
    )
    kafka_sasl_mechanism: SaslMechanism = SaslMechanism.SCRAM_SHA_256
    kafka_username: str | None = "user1"
    kafka_password: SecretStr | None = None
    kafka_password_file: Path | None = None
    # TLS (security protocol SASL_SSL or SSL): the CA that signed the brokers' certificates and,
    # for mutual TLS, a client certificate and key (PEM files, e.g. a mounted Secret).
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_ssl_key_password: SecretStr | None = None
    kafka_ssl_check_hostname: bool = True
    # How long a starting worker waits for Kafka (backoff, one log line per attempt) before it
    # exits non-zero: a broker that starts after the pod must not crash-loop it.
    kafka_wait_seconds: Annotated[float, Field(ge=0)] = 300.0
    topic_partitions: PositiveInt = 8
    topic_replication: PositiveInt = 1
    topic_prefix: str = "kubefinops"
    broker_session_timeout: PositiveFloat = 30.0
    # Static group membership (KIP-345): a worker restarted with the same id (a container restart
    # keeps its pod name; the chart sets it by default) takes its partitions back at once instead
    # of waiting for the session timeout of its killed predecessor (bench/bench_recovery.py
    # measures both). A graceful stop still leaves the group (engine.app.leave_group_on_stop); a
    # member lost without a stop is noticed after the session timeout, as a plain one.
    kafka_group_instance_id: str | None = None
    # Standby copies of each table partition on other workers (Faust table_standby_replicas):
    # with 2+ workers a failover promotes a warm standby instead of replaying the changelog.
    table_standby_replicas: Annotated[int, Field(ge=0)] = 0
    # A table recovery that receives no record from a partition it still has to read: kicked
    # after recovery_stall_seconds (resumed and sought again, engine/app.py RecoveryWatch), and
    # if still stalled recovery_stall_unhealthy_seconds after its last record, GET /health
    # answers 503 so the liveness probe restarts the pod (0: never). 30 s / 180 s: far above a
    # healthy recovery's quietest partition (records arrive every fetch; 10,000 workloads
    # recover in ~30 s in all), and six checks after the kick before a restart.
    recovery_stall_seconds: Annotated[float, Field(ge=1)] = 30.0
    recovery_stall_unhealthy_seconds: Annotated[float, Field(ge=0)] = 180.0
    consumer_auto_offset_reset: str = "earliest"
    # Per-partition fetch size. Faust's 1 MiB default holds ~26 of our ~38 KB batches and left the
    # aggregator waiting on the network half the time (bench/bench_pipeline.py: 2.4x with 16 MiB).
    # 4 MiB since 2026-12-01, a trade: the prefetched records of every partition of the worker
    # (partitions x this) were the largest buffer of a 10,000-decision cycle, and with 16 MiB its
    # peak was 504 MiB against 418-435 at 4 MiB (bar 500); ingest from a backlog costs more at
    # 4 MiB: 700-917k samples/s (median 793k) against 819-936k (median 922k) at 16 MiB, 5 runs
    # each, alternating (docs/benchmarks.md, "The 10,000-decision cycle held as JSON"). A worker
    # with memory to spare that ingests long backlogs can set 16 MiB.
    kafka_max_fetch_bytes: PositiveInt = 4 * 1024 * 1024
    # How long the broker may hold the worker's fetch when there is nothing new. The broker answers
    # one connection's requests in order, so every offsets or metadata request the worker sends
    # while its fetch waits queues behind it: a recovery makes three in a row, up to this long
    # each. Faust's own 1,500 ms cost up to ~4.5 s of every start and rebalance, 100 ms ~0.3 s
    # (docs/benchmarks.md "Changelog preload"); an idle worker then sends ~10 empty fetches a
    # second instead of ~0.7, and the burst and ingest benchmarks did not tell the two apart.
    # 100 ms was held back for a while: in one CI run of four the memory-store SIGKILL test's
    # commits stayed short of the end. That was Faust dropping records fetched around its seek
    # to the committed offsets (shorter waits put more fetches there), fixed at any wait by
    # engine/app.py ``SeekFence``: 0 failures in 50 stress runs of that test at 100 ms with it,
    # without it 1 in 15 (and 1 in 20 with a first fence that missed one of its three cases).
    kafka_fetch_max_wait_ms: Annotated[int, Field(ge=1, le=30_000)] = 100
    # Producer batching. The aggregator writes two changelog records per metrics record (one per
    # container); at Faust's linger of 0 nearly each went out as its own produce request (1.16
    # records per stored batch) and the socket writes alone were ~8 % of the worker's CPU. 20 ms:
    # ~3.5 records per batch and 0.86-0.92x the worker's CPU per sample (bench/bench_pipeline.py,
    # docs/benchmarks.md "Ingest: value codec and producer linger"). In the 1,000-workload burst
    # of bench/bench_scale.py 10 ms / 256 KiB gave 1.2-3.6x the in-process cost against 1.6-3.6x
    # at linger 0: no measurable latency cost. Offsets are committed only after the producer is
    # flushed, whatever the linger. 256 KiB batches cut a third of the CPU of bench/bench_floor.py
    # (the burst's records with no handler work: aiokafka takes one batch per partition into a
    # produce request, and 16 KiB holds two usage values) but nothing measurable in the real
    # worker's burst, which writes at a third of that rate (10 vs 14 bursts, 2026-12-02): 16 KiB
    # stays.
    kafka_producer_linger_ms: Annotated[int, Field(ge=0, le=1000)] = 20
    kafka_producer_batch_bytes: Annotated[int, Field(ge=16 * 1024, le=1024 * 1024)] = 16 * 1024

    # --- MongoDB -------------------------------------------------------------------------------
    mongodb_uri: SecretStr = SecretStr(f"mongodb://infra-mongodb.{_SVC}:27017")
    mongodb_uri_file: Path | None = None  # the URI carries the password: mount it as a Secret
    mongodb_database: str = "kubefinops"
    history_retention_days: PositiveInt = 90

    # --- S3 / MinIO ----------------------------------------------------------------------------
    s3_endpoint_url: str = f"http://infra-minio.{_SVC}:9000"
    s3_bucket: str = "kubefinops-reports"
    s3_region: str = "us-east-1"
    s3_access_key: SecretStr | None = None
    s3_access_key_file: Path | None = None
    s3_secret_key: SecretStr | None = None
    s3_secret_key_file: Path | None = None

    # --- Prometheus ----------------------------------------------------------------------------
    prometheus_url: str = f"http://infra-monitoring-kube-prom-prometheus.{_SVC}:9090"
    # HTTP basic auth for a Prometheus behind a proxy (never in the URL: a URL is not a secret,
    # it ends up in Deployment specs and settings reprs)
    prometheus_username: str | None = None
    prometheus_password: SecretStr | None = None
    prometheus_password_file: Path | None = None
    prometheus_timeout_seconds: PositiveFloat = 30.0
    prometheus_step_seconds: PositiveInt = 60
    # The longest chunk a cycle asks for, and the most points (series x steps) one range query
    # may answer: the collector picks the longest chunk within both, asking a large fleet in
    # namespace shards (engine/core/collect.py plan_queries).  3 M points is at most ~200 MiB
    # held while one answer becomes records; a day per chunk for up to ~2,000 series per query
    # (1,000 two-container workloads), so for 10,000 workloads spread over namespaces too;
    # 2 hours for 20,000 series in one namespace (docs/collector.md "Chunk length and
    # shards").  An answer well over the budget (the count missed series) is refused while it is
    # read and its halves asked instead (engine/core/collect.py answer_bytes_cap, split_range).
    # The backtest reads at most 6-hour chunks.
    prometheus_chunk_seconds: PositiveInt = 24 * 3600
    prometheus_max_points_per_query: PositiveInt = 3_000_000
    scrape_lag_seconds: Annotated[int, Field(ge=0)] = 120
    collect_interval_seconds: PositiveFloat = 3600.0
    # kubefinops.recommendations carries a workload's recommendation when it changed (another
    # id, replicas or savings), an unchanged one again once the last published is this old, and
    # every workload once after a restart or a rebalance (engine/core/published.py); 0: every
    # recommendation of every cycle, as before.  Every cycle's recommendation is decided and
    # archived either way (MongoDB history, stats API).  6 h, as the spec's refresh: 87-88 % of
    # the hourly recommendations were unchanged in bench_scale's data, one record per workload
    # and cycle that a collector burst no longer waits for (docs/benchmarks.md).
    recommendation_refresh_seconds: Annotated[float, Field(ge=0)] = 6 * 3600.0
    collect_on_start: bool = True  # run a collection right after the first assignment
    history_days: PositiveInt = 14
    usage_window_seconds: PositiveInt = 86400
    # Decoded usage state kept in memory, least recently used dropped first (the table keeps
    # every container's compact value; a dropped one is decoded again when next needed). A
    # cycle reads each container right after its chunk, so a small cache serves the marker;
    # but the chunk's own read hits only if the worker's containers fit, and a state decoded
    # again must merge its closed days again for the summary.  24 MiB (~2,900 14-day
    # containers by the estimate, ~8.5 KiB each; ~36 MiB real) holds a 1,000-workload worker:
    # 16 MiB held 1,947 of its 2,000 containers, so in every cycle LRU evicted each one before
    # its next read (0 hits) and a burst cost 1.6x the CPU (docs/benchmarks.md, "Burst").  At
    # 64 MiB (~93 MiB real) it was the largest part of a 10,000-workload worker's memory.
    usage_cache_bytes: Annotated[int, Field(ge=0)] = 24 * 1024 * 1024
    # Where the tables keep their values (tables/store.py). ``memory``: every value decoded in the
    # Python heap, rebuilt from the whole changelog on every start. ``rocksdb``: on disk under
    # ``data_dir`` with bounded caches (the heap holds only ``usage_cache_bytes`` of decoded
    # state), and a worker restarted on the same data dir replays only the changelog's tail.
    # The chart uses rocksdb with an emptyDir (docs/deploy.md, "Table store").
    table_store: TableStore = TableStore.MEMORY
    # RocksDB memory, shared by every table partition of the worker (each partition is its own
    # database): one LRU block cache and one write-buffer (memtable) budget. Faust's own defaults
    # are 2 GiB of block cache and 3 x 64 MiB of memtables PER partition database.
    rocksdb_block_cache_bytes: Annotated[int, Field(ge=0)] = 16 * 1024 * 1024
    rocksdb_write_buffer_bytes: Annotated[int, Field(ge=1024 * 1024)] = 16 * 1024 * 1024
    # With rocksdb: a newly assigned table partition's changelog is read in bulk straight into its
    # database before Faust's record-by-record recovery (tables/preload.py; a replaced pod's
    # replay ~40x faster). false: Faust's recovery alone, as before.
    table_preload: bool = True
    # Return freed heap memory to the OS this often (glibc malloc_trim, engine/memory.py); 0: off.
    # 15 s, not 60: RSS comes down soon after a cycle instead of holding its peak for a minute
    # (at 10,000 workloads 525 MiB right after the cycle, 422 MiB past a trim). A trim with
    # nothing to give back costs ~10 ms, ~150 ms after a burst, in a thread (ctypes drops the GIL).
    malloc_trim_interval_seconds: Annotated[float, Field(ge=0)] = 15.0
    # glibc's mmap threshold (engine/memory.set_mmap_threshold): blocks this big or bigger get
    # their own mapping, given back when freed; 0: glibc's dynamic threshold, which rises to the
    # largest block freed so far (up to 32 MiB): the multi-MiB fetch responses and batches of a
    # cycle then land in the heap and hold RSS at their high-water mark. 1 MiB, 3,000 workloads
    # on RocksDB (bench/bench_scale.py, 2026-11-30): decisions-phase peak 394 MiB against
    # 411-428, right after the cycle 313 against 348-389; 10,000: right after the cycle 406 MiB
    # against 529, idle 394 against 453, peak 766 against 810 (docs/benchmarks.md "Memory: the
    # decisions peak").
    malloc_mmap_threshold_bytes: Annotated[int, Field(ge=0, le=32 * 1024 * 1024)] = 1024 * 1024
    # CPython's garbage collector (engine/memory.py): collect the young generation after this many
    # net allocations instead of 700 (0: CPython's thresholds), and freeze the objects alive when
    # the worker first becomes ready so that no later full collection walks them. A 1,000-workload
    # burst spent 0.44-0.88 s in collections with CPython's defaults, 0.06-0.10 s with these. 10,000
    # rather than 50,000 (0.00-0.09 s): cyclic garbage waits for a collection, and at 50,000 the
    # 10,000-workload worker's decisions peak was 446 MiB against 416 (default) and 438 (10,000),
    # one run each (docs/benchmarks.md, "Burst: the garbage collector").
    # At most 100 million: CPython takes a C int, and a larger value raised OverflowError at start.
    gc_gen0_threshold: Annotated[int, Field(ge=0, le=100_000_000)] = 10_000
    gc_freeze_when_ready: bool = True
    # Debug only: trace allocations with this many frames and write a heap dump to
    # ``data_dir/heap`` on SIGUSR2 (engine/memory.HeapDumps); 0 (default): off.
    debug_tracemalloc_frames: Annotated[int, Field(ge=0, le=100)] = 0
    # Fault injection for tests only: the table recovery's resume of its changelog partitions
    # is lost (they stay paused): ``once`` (the first recovery's; RecoveryWatch's kick resumes
    # them) or ``always`` (every resume during a recovery, the kick's too: the worker stays
    # stalled and /health turns 503). Empty (default): off.
    debug_lose_recovery_resume: Literal["", "once", "always"] = ""
    # Per-workload series on /metrics only for this many workloads (top by pending savings);
    # per-namespace totals cover all of them, /api/usage and the reports every one.
    metrics_top_workloads: Annotated[int, Field(ge=0)] = 100

    # --- Git / GitOps --------------------------------------------------------------------------
    git_remote_url: str | None = None
    git_branch: str = "main"
    git_mode: GitMode = GitMode.DIRECT
    git_workdir: Path = Path("/var/lib/kubefinops/gitops")
    # The Kustomize overlay the bot writes its patches into (its kubefinops/ component), from the
    # repository root.  "{namespace}" in it gives each namespace its own overlay, e.g.
    # "clusters/prod/{namespace}": what a large estate needs — kubectl kustomize is quadratic in
    # the resources of one overlay (bench/bench_apply.py, docs/gitops.md "At fleet scale").
    gitops_overlay_path: str = "smarthealth-gitops/overlays/production"
    git_username: str = "kubefinops-bot"
    git_token: SecretStr | None = None
    git_token_file: Path | None = None
    git_author_name: str = "KubeFinOps Autopilot"
    git_author_email: str = "kubefinops-bot@users.noreply.local"
    # Decisions are applied per collection cycle: once the collector's manifest count is reached,
    # or (no manifest) after this long without a new decision of the cycle...
    apply_batch_seconds: PositiveFloat = 10.0
    # ...or, when the manifest count is never reached (a dead-lettered recommendation), this long
    # after the cycle's first decision, with what it has.
    apply_cycle_timeout_seconds: PositiveFloat = 900.0

    # --- verified apply (docs/verification.md; a policy's "verification" block overrides) ------
    verification_enabled: bool = True
    verification_deadline_seconds: PositiveFloat = 1800.0  # to go live after the push
    verification_window_seconds: PositiveFloat = 7200.0  # watch after it went live
    verification_interval_seconds: PositiveFloat = 60.0  # between two checks of every watch
    # At most this many watches checked per tick (2-4 Prometheus queries each), round-robin;
    # 0 = all.  After a cycle of thousands of changes every watch is still checked, less often
    # (10,000 watches: each about every 20 ticks), instead of one tick asking 20,000+ queries.
    verification_max_checks_per_tick: Annotated[int, Field(ge=0)] = 500
    verification_penalty_seconds: Annotated[float, Field(ge=0)] = 7 * 86400.0
    verification_throttling_threshold: Annotated[float, Field(ge=0, le=1)] = 0.25
    verification_max_restarts: Annotated[int, Field(ge=0)] = 0
    verification_readiness_grace_seconds: PositiveFloat = 300.0

    # --- money ---------------------------------------------------------------------------------
    # OpenCost defaults: $0.031611 per core-hour, $0.004237 per GB-hour.
    price_cpu_core_hour: Annotated[float, Field(ge=0)] = 0.031611
    price_memory_gib_hour: Annotated[float, Field(ge=0)] = 0.004237
    currency: str = "USD"

    @field_validator("prometheus_url", "s3_endpoint_url")
    @classmethod
    def _http_url(cls, value: str, info: ValidationInfo) -> str:
        parts = urlsplit(value)
        if parts.username or parts.password:
            instead = {
                "prometheus_url": "KUBEFINOPS_PROMETHEUS_USERNAME and _PASSWORD",
                "s3_endpoint_url": "KUBEFINOPS_S3_ACCESS_KEY and KUBEFINOPS_S3_SECRET_KEY",
            }[str(info.field_name)]
            raise ValueError(f"must not embed credentials; set {instead} instead")
        return _check_url(value, schemes=("http", "https"))

    @field_validator("prometheus_username")
    @classmethod
    def _basic_auth_user(cls, value: str | None) -> str | None:
        # HTTP basic auth puts "user:password" in one header: no colon, nothing unprintable
        if value is not None and (not value or ":" in value or not value.isprintable()):
            raise ValueError("must be a non-empty user name without ':' or control characters")
        return value

    @field_validator("git_remote_url")
    @classmethod
    def _git_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if urlsplit(value).username or urlsplit(value).password:
            raise ValueError("must not embed credentials; set KUBEFINOPS_GIT_TOKEN instead")
        if value.startswith("file:///"):  # a local repository (the demo, tests)
            return value
        return _check_url(value, schemes=("http", "https"))

    @field_validator("gitops_overlay_path")
    @classmethod
    def _overlay_path(cls, value: str) -> str:
        rest = value.replace("{namespace}", "")
        if "{" in rest or "}" in rest:
            raise ValueError("the only placeholder it may hold is {namespace}")
        parts = [p for p in value.strip("/").split("/") if p]
        if not parts or value.startswith("/") or ".." in parts:
            raise ValueError("must be a relative path inside the repository, without '..'")
        return value

    @field_validator("mongodb_uri")
    @classmethod
    def _mongo_uri(cls, value: SecretStr) -> SecretStr:
        raw = value.get_secret_value()
        if not raw.startswith(("mongodb://", "mongodb+srv://")):
            raise ValueError("must start with mongodb:// or mongodb+srv://")
        return value

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _bootstrap(cls, value: str) -> str:
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"{server.strip()!r} is not host:port")
        return value

    @field_validator(
        "api_token",
        "api_read_token",
        "kafka_password",
        "git_token",
        "s3_access_key",
        "s3_secret_key",
        "kafka_ssl_key_password",
        "prometheus_password",
    )
    @classmethod
    def _not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        # An empty token is a mistake, never "no password": with KUBEFINOPS_API_TOKEN="" the API
        # would accept "Authorization: Bearer " (nothing). Unset the variable to disable it.
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("must not be empty (unset the variable instead)")
        return value

    @field_validator("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a readable file")
        return value

    @model_validator(mode="after")
    def _secrets_from_files(self) -> Settings:
        # A *_FILE setting, when given, wins over the plain one: it is how a Kubernetes Secret is
        # mounted, and a rotated Secret must not be shadowed by a stale variable or a default.
        for field, file_field in (
            ("kafka_password", "kafka_password_file"),
            ("api_token", "api_token_file"),
            ("api_read_token", "api_read_token_file"),
            ("s3_access_key", "s3_access_key_file"),
            ("s3_secret_key", "s3_secret_key_file"),
            ("git_token", "git_token_file"),
            ("mongodb_uri", "mongodb_uri_file"),
            ("prometheus_password", "prometheus_password_file"),
        ):
            path: Path | None = getattr(self, file_field)
            if path is not None:
                try:
                    secret = path.read_text(encoding="utf-8").strip()
                except OSError as exc:
                    raise ValueError(f"{file_field}: cannot read {path} ({exc.strerror})") from None
                if not secret:
                    raise ValueError(f"{file_field}: {path} is empty")
                if field == "mongodb_uri":
                    self._mongo_uri(SecretStr(secret))
                object.__setattr__(self, field, SecretStr(secret))
        if self.effective_security_protocol.startswith("SASL") and self.kafka_password is None:
            raise ValueError(
                "kafka_password: required when SASL is on "
                "(set KUBEFINOPS_KAFKA_PASSWORD or KUBEFINOPS_KAFKA_PASSWORD_FILE)"
            )
        for field in ("api_token", "api_read_token"):
            token: SecretStr | None = getattr(self, field)
            if token is not None and len(token.get_secret_value()) < MIN_TOKEN_CHARS:
                # a bearer token anyone may guess at, and one too short to be masked in logs
                raise ValueError(
                    f"{field}: at least {MIN_TOKEN_CHARS} characters (e.g. openssl rand -hex 32)"
                )
        if (self.prometheus_username is None) != (self.prometheus_password is None):
            raise ValueError(
                "prometheus_password: basic auth needs both a user and a password (set both "
                "KUBEFINOPS_PROMETHEUS_USERNAME and KUBEFINOPS_PROMETHEUS_PASSWORD[_FILE])"
            )
        if (self.kafka_ssl_certfile is None) != (self.kafka_ssl_keyfile is None):
            raise ValueError(
                "kafka_ssl_certfile: a client certificate needs its key and the other way round "
                "(set both KUBEFINOPS_KAFKA_SSL_CERTFILE and KUBEFINOPS_KAFKA_SSL_KEYFILE)"
            )
        return self

    # --- derived ---------------------------------------------------------------------------------
    @property
    def effective_security_protocol(self) -> SecurityProtocol:
        if self.kafka_security_protocol is not None:
            return self.kafka_security_protocol
        return (
            SecurityProtocol.SASL_PLAINTEXT if self.kafka_username else SecurityProtocol.PLAINTEXT
        )

    def topic(self, name: str) -> str:
        """Full topic name, e.g. ``topic("metrics") == "kubefinops.metrics"``."""
        return f"{self.topic_prefix}.{name}"

    @property
    def history_seconds(self) -> int:
        return self.history_days * 86400

    @property
    def verification_defaults(self) -> VerificationParams:
        """The worker-wide defaults a policy's ``verification`` block overrides."""
        return VerificationParams(
            deadline=self.verification_deadline_seconds,
            window=self.verification_window_seconds,
            penalty=self.verification_penalty_seconds,
            throttling=self.verification_throttling_threshold,
            restarts=self.verification_max_restarts,
            readiness_grace=self.verification_readiness_grace_seconds,
        )

    @property
    def prices(self) -> Prices:
        """The unit prices the cost model uses (the core takes these, never the settings)."""
        return Prices(
            cpu_core_hour=self.price_cpu_core_hour,
            memory_gib_hour=self.price_memory_gib_hour,
            currency=self.currency,
        )


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "settings"
    msg = str(first["msg"]).removeprefix("Value error, ")
    if ":" in msg.split(" ")[0]:  # model-level messages already name their setting
        return f"invalid setting {msg}"
    env = f"KUBEFINOPS_{loc.upper()}" if loc != "settings" else loc
    return f"invalid setting {loc} ({env}): {msg}"


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment plus explicit overrides; one clear line on error."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
