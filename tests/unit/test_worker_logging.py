"""The worker's logging: the level asked for is the level the hot paths see."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import logging
import faust
from engine.logs import setup_logging
from engine.settings import load_settings
from engine.worker import make_worker
from pydantic import SecretStr

settings = load_settings(kafka_password=SecretStr("x"), log_level="{level}")
app = faust.App("probe", broker="kafka://127.0.0.1:9")
worker = make_worker(app, settings, setup_logging(settings))
worker._setup_logging()
print(logging.getLogger("faust.tables.recovery").isEnabledFor(logging.DEBUG),
      logging.getLogger().getEffectiveLevel())
"""


@pytest.mark.parametrize(("level", "number"), [("warning", 30), ("error", 40), ("info", 20)])
def test_debug_records_are_not_built_above_debug(level: str, number: int) -> None:
    """Faust's terminal spinner would set the root logger to DEBUG at WARNING and above, so every
    ``log.debug`` in its per-record loops (table recovery, fetch) built a record for nothing."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(level=level)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.split()
    assert out == ["False", str(number)]
