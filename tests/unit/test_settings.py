"""Settings: defaults name the seed's services; a misconfiguration is one line that names the
setting and never shows a secret; secrets can come from mounted files."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from engine.errors import ConfigError
from engine.logs import ProducerBackPressure, RedactSecrets, secret_values, setup_logging
from engine.settings import SecurityProtocol, load_settings


def test_defaults_point_at_the_seed_services() -> None:
    s = load_settings(kafka_password="pw-123456")
    assert s.kafka_bootstrap_servers == "infra-kafka.kubefinops.svc.cluster.local:9092"
    assert s.prometheus_url.startswith("http://infra-monitoring-kube-prom-prometheus.")
    assert s.effective_security_protocol is SecurityProtocol.SASL_PLAINTEXT
    assert s.kafka_sasl_mechanism.value == "SCRAM-SHA-256"
    assert s.topic("metrics") == "kubefinops.metrics"


def test_environment_is_read_with_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBEFINOPS_KAFKA_PASSWORD", "from-env-secret")
    monkeypatch.setenv("KUBEFINOPS_TOPIC_PARTITIONS", "12")
    s = load_settings()
    assert s.topic_partitions == 12
    assert s.kafka_password == SecretStr("from-env-secret")


def test_missing_password_with_sasl_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBEFINOPS_KAFKA_PASSWORD", raising=False)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "kafka_password" in str(err.value)
    assert "\n" not in str(err.value)


def test_plaintext_needs_no_password() -> None:
    s = load_settings(kafka_security_protocol="PLAINTEXT", kafka_username=None)
    assert s.effective_security_protocol is SecurityProtocol.PLAINTEXT


@pytest.mark.parametrize(
    ("overrides", "setting"),
    [
        ({"prometheus_url": "not a url"}, "prometheus_url"),
        ({"prometheus_url": "http://host:notaport"}, "prometheus_url"),
        ({"s3_endpoint_url": "ftp://minio"}, "s3_endpoint_url"),
        ({"kafka_bootstrap_servers": "kafka-without-port"}, "kafka_bootstrap_servers"),
        ({"topic_partitions": 0}, "topic_partitions"),
        ({"git_mode": "yolo"}, "git_mode"),
        ({"gc_gen0_threshold": 10**30}, "gc_gen0_threshold"),  # was an OverflowError at start
        ({"gc_gen0_threshold": -1}, "gc_gen0_threshold"),
    ],
)
def test_malformed_values_name_the_setting(overrides: dict, setting: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(kafka_password="pw-123456", **overrides)
    message = str(err.value)
    assert setting in message and f"KUBEFINOPS_{setting.upper()}" in message
    assert "\n" not in message


def test_secrets_never_appear_in_errors() -> None:
    secret = "s3cr3t-Value-xyz"
    with pytest.raises(ConfigError) as err:
        load_settings(kafka_password=secret, mongodb_uri=f"postgres://u:{secret}@db")
    assert secret not in str(err.value)
    assert "mongodb_uri" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_settings(kafka_password=secret, git_remote_url=f"https://bot:{secret}@git.example")
    assert secret not in str(err.value)


def test_credentials_in_a_url_are_refused_and_basic_auth_is_a_secret(tmp_path: Path) -> None:
    """A URL is not a secret (it is rendered into the Deployment, shown by ``repr``): user info
    in the Prometheus or S3 URL is refused, naming what to set instead, without echoing it."""
    secret = "PromPW-99-xyz"
    for field, instead in (
        ("prometheus_url", "KUBEFINOPS_PROMETHEUS_USERNAME"),
        ("s3_endpoint_url", "KUBEFINOPS_S3_ACCESS_KEY"),
    ):
        with pytest.raises(ConfigError) as err:
            load_settings(kafka_password="x-1234", **{field: f"http://u:{secret}@host:9090"})
        assert field in str(err.value) and instead in str(err.value)
        assert secret not in str(err.value)
    for user in ("", "a:b", "bot\nX-Evil: 1"):
        with pytest.raises(ConfigError, match="prometheus_username"):
            load_settings(
                kafka_password="x-1234", prometheus_username=user, prometheus_password="pw"
            )
    with pytest.raises(ConfigError, match="prometheus_password: basic auth needs both"):
        load_settings(kafka_password="x-1234", prometheus_username="bot")
    (tmp_path / "prom").write_text(f"{secret}\n")
    s = load_settings(
        kafka_password="x-1234",
        prometheus_username="bot",
        prometheus_password_file=tmp_path / "prom",
    )
    assert s.prometheus_password == SecretStr(secret)
    assert secret not in repr(s) and secret in secret_values(s)  # hidden, and redacted in logs


def test_secret_files_are_read(tmp_path: Path) -> None:
    (tmp_path / "kafka").write_text("from-a-file\n")
    (tmp_path / "token").write_text("pat-123\n")
    s = load_settings(kafka_password_file=tmp_path / "kafka", git_token_file=tmp_path / "token")
    assert s.kafka_password == SecretStr("from-a-file")
    assert s.git_token == SecretStr("pat-123")
    with pytest.raises(ConfigError, match="kafka_password_file: cannot read"):
        load_settings(kafka_password_file=tmp_path / "missing")
    (tmp_path / "uri").write_text("mongodb://bot:pw@db:27017/kubefinops\n")
    s = load_settings(
        kafka_password="x-1234",
        mongodb_uri_file=tmp_path / "uri",
        git_token="stale-env-token",
        git_token_file=tmp_path / "token",
    )
    assert s.mongodb_uri.get_secret_value() == "mongodb://bot:pw@db:27017/kubefinops"
    assert s.git_token == SecretStr("pat-123"), "a mounted file wins over a stale variable"
    (tmp_path / "bad-uri").write_text("postgres://nope\n")
    with pytest.raises(ConfigError, match="mongodb"):
        load_settings(kafka_password="x-1234", mongodb_uri_file=tmp_path / "bad-uri")


def test_log_records_are_redacted() -> None:
    s = load_settings(
        kafka_password="kafka-pass-1",
        git_token="ghp_tokenvalue",
        mongodb_uri="mongodb://bot:mongo-pass-2@db:27017",
    )
    assert {"kafka-pass-1", "ghp_tokenvalue", "mongo-pass-2"} <= set(secret_values(s))
    out = io.StringIO()
    setup_logging(s, stream=out)
    log = logging.getLogger("test.redaction")
    log.warning("connecting with %s and %s", "kafka-pass-1", "mongodb://bot:mongo-pass-2@db")
    try:
        raise RuntimeError("push failed for https://x:ghp_tokenvalue@git")
    except RuntimeError:
        log.exception("boom")
    text = out.getvalue()
    assert "kafka-pass-1" not in text and "mongo-pass-2" not in text
    assert "ghp_tokenvalue" not in text
    assert text.count("****") >= 3


@pytest.mark.parametrize("level", ["info", "warning", "error"])
def test_the_worker_logs_at_its_level_and_no_lower(level: str) -> None:
    # Faust's terminal spinner set the root logger to DEBUG for WARN and above: every debug
    # record of every library (Faust's logs each produced value) was built and filtered.
    import faust

    from engine.worker import make_worker

    root = logging.getLogger()
    saved = (root.level, root.handlers[:])
    try:
        s = load_settings(kafka_security_protocol="PLAINTEXT", log_level=level)
        redactor = setup_logging(s, stream=io.StringIO())
        app = faust.App("test-log-level", broker="kafka://127.0.0.1:1")
        make_worker(app, s, redactor)._setup_logging()
        assert root.getEffectiveLevel() == getattr(logging, level.upper())
        assert not logging.getLogger("faust.topics").isEnabledFor(logging.DEBUG)
        assert all(redactor in h.filters for h in root.handlers)
        # Faust's "producer buffer full" lines are counted and thinned (after its dictConfig)
        assert any(
            isinstance(f, ProducerBackPressure)
            for f in logging.getLogger("faust.transport.producer").filters
        )
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]


def test_short_values_are_not_treated_as_secrets() -> None:
    assert RedactSecrets(["ab"]).redact("ab cd") == "ab cd"


def test_secrets_are_masked_as_written_encoded_or_decoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A password quoted into a URL, or decoded from the MongoDB URI that carries it encoded, is
    the same secret: every form of it is masked."""
    from engine import logs

    r = RedactSecrets(["p@ss/w rd+1"])
    assert r.redact("url http://u:p%40ss%2Fw%20rd%2B1@h/") == "url http://u:****@h/"
    assert r.redact("form p%40ss%2Fw+rd%2B1 sent") == "form **** sent"
    assert r.redact("raw p@ss/w rd+1!") == "raw ****!"
    monkeypatch.setattr(logs, "_ACTIVE", RedactSecrets([]))
    settings = load_settings(
        kafka_password="kafka-PW-1234", mongodb_uri="mongodb://bot:s%3Acr%40t-99@db:27017/kfo"
    )
    logs.remember_secrets(settings)
    assert logs.redact("auth failed for s:cr@t-99") == "auth failed for ****"
    assert logs.redact("uri bot:s%3Acr%40t-99@db") == "uri bot:****@db"


def test_a_secret_read_after_start_is_masked_from_then_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from engine import logs

    monkeypatch.setattr(logs, "_ACTIVE", RedactSecrets(["first-secret"]))
    assert logs.redact("rotated-token-2") == "rotated-token-2"
    logs.remember("rotated-token-2")
    assert logs.redact("a rotated-token-2 and a first-secret") == "a **** and a ****"


def test_cli_reports_a_bad_setting_in_one_line() -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "KUBEFINOPS_PROMETHEUS_URL": "nonsense",
        "KUBEFINOPS_KAFKA_PASSWORD": "hidden-password-1",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "KUBEFINOPS_PROMETHEUS_URL" in lines[0]
    assert "hidden-password-1" not in proc.stderr + proc.stdout


def test_producer_back_pressure_is_counted_and_logged_once_a_minute() -> None:
    """Faust logs "producer buffer full size N" at every wait of a stream for its producer
    buffer (~100 lines a run at 10,000 workloads); each is counted, one line a minute goes out
    and says how many it stands for; anything else from that logger passes untouched."""
    from engine.metrics import PRODUCER_BUFFER_WAITS

    now = [1000.0]
    thinning = ProducerBackPressure(every=60.0, clock=lambda: now[0])
    log = logging.getLogger("test.producer.backpressure")
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    log.addHandler(handler)
    log.addFilter(thinning)
    log.propagate = False
    before = PRODUCER_BUFFER_WAITS._value.get()
    try:
        for k in range(5):
            now[0] += 10.0
            log.warning("producer buffer full size %d", 101 + k)
        log.warning("something else the producer says")
        now[0] += 60.0
        log.warning("producer buffer full size %d", 150)
    finally:
        log.removeHandler(handler)
        log.removeFilter(thinning)
    lines = out.getvalue().splitlines()
    assert PRODUCER_BUFFER_WAITS._value.get() - before == 6
    assert len(lines) == 3, lines
    assert lines[0].startswith("producer buffer full size 101: ") and "first time" in lines[0]
    assert lines[1] == "something else the producer says"
    assert lines[2].startswith("producer buffer full size 150: ")
    assert "5 times in the last 100s" in lines[2]  # 4 thinned + this one, since the first line


def test_texts_that_leave_by_other_ways_than_logs_are_masked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A dead letter's reason, a failed cycle's detail and the CLI's error line quote exceptions,
    and an exception may quote what it was given: they are masked like a log line."""
    import asyncio
    import json

    from agents.runtime import park
    from engine import logs
    from engine.services import Services
    from tests.fakes import runtime

    monkeypatch.setattr(logs, "_ACTIVE", RedactSecrets([]))
    settings = load_settings(kafka_password="kafka-PW-1234", git_token="git-TOKEN-5678")
    logs.remember_secrets(settings)
    assert logs.redact("push refused for git-TOKEN-5678") == "push refused for ****"
    rt = runtime(Services(), now=1_796_000_000.0)
    asyncio.run(
        park(rt, topic="t", key=b"k", raw=b"x", reason="sasl: kafka-PW-1234 refused", agent="a")
    )
    (_, value), *_ = rt.topics.deadletter.sent  # type: ignore[attr-defined]
    assert json.loads(value)["reason"] == "sasl: **** refused"
    # a log record's stack is masked too
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "boom", (), None)
    record.stack_info = "Stack (most recent call last):\n  token=git-TOKEN-5678"
    logs._ACTIVE.filter(record)
    assert "git-TOKEN-5678" not in record.stack_info


@pytest.mark.parametrize("field", ["api_token", "api_read_token"])
def test_a_short_api_token_is_a_settings_error(field: str, tmp_path: Path) -> None:
    for given in ({field: "abc"}, {f"{field}_file": tmp_path / "t"}):
        (tmp_path / "t").write_text("short-tok\n")
        with pytest.raises(ConfigError) as err:
            load_settings(kafka_password="x-1234", **given)
        assert f"{field}: at least 12 characters" in str(err.value)
        assert "abc" not in str(err.value) and "short-tok" not in str(err.value)
    assert load_settings(kafka_password="x-1234", **{field: "a" * 12}) is not None


def test_malformed_http_requests_are_one_warning_a_minute_not_a_traceback_each() -> None:
    """A request line over aiohttp's limit was an ERROR with a traceback per request: anyone
    reaching the port could fill the log.  Now one WARNING a minute counts them; any other
    error of the HTTP server still goes through with its traceback."""
    from aiohttp.http_exceptions import LineTooLong

    from engine.logs import MalformedRequests

    now = [1000.0]
    thinning = MalformedRequests(every=60.0, clock=lambda: now[0])
    log = logging.getLogger("test.aiohttp.server")
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log.addHandler(handler)
    log.addFilter(thinning)
    log.propagate = False

    def refused(n: int) -> None:
        try:
            raise LineTooLong("x" * n, "8190")
        except LineTooLong as exc:
            log.exception("Error handling request from %s", "10.0.0.9", exc_info=exc)

    try:
        refused(100_000)
        for _ in range(3):
            now[0] += 10.0
            refused(9_000)
        try:
            raise RuntimeError("a bug in a handler")
        except RuntimeError:
            log.exception("Error handling request from %s", "10.0.0.9")
        now[0] += 60.0
        refused(9_000)
    finally:
        log.removeHandler(handler)
        log.removeFilter(thinning)
    text = out.getvalue()
    warnings = [line for line in text.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 2, text
    assert "refused malformed HTTP requests with 400: 1 since" in warnings[0]
    assert "LineTooLong" in warnings[0] and "x" * 300 not in warnings[0]
    assert "refused malformed HTTP requests with 400: 4 since" in warnings[1]
    assert "ERROR Error handling request from 10.0.0.9" in text
    assert "RuntimeError: a bug in a handler" in text  # its traceback kept
    assert text.count("Traceback") == 1
