"""``kubefinops backtest`` on samples files: errors name the line, exports round-trip."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from engine.adapters.samples_file import SampleFileError, read_samples, write_samples
from engine.cli import cli
from tests.unit.test_backtest import DAY, MIB, T0, history

HEADER = "timestamp,namespace,kind,workload,container,cpu_cores,memory_bytes,memory_limit\n"


def _file(tmp_path: Path, rows: list[str], name: str = "s.csv") -> Path:
    path = tmp_path / name
    path.write_text(HEADER + "".join(r + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("abc,ns,Deployment,w,c,0.1,100,", "s.csv:3: column timestamp: not a number: 'abc'"),
        ("1700000300,ns,Deployment,w,c,-1,100,", "s.csv:3: column cpu_cores: must be"),
        ("1700000300,,Deployment,w,c,0.1,100,", "s.csv:3: column namespace: empty"),
        ("1700000300,ns,Deployment,w,c,0.1,nan,", "s.csv:3: column memory_bytes: must be"),
        ("1700000300,ns,Deployment,w,c", "s.csv:3: 5 fields, header has 8"),
    ],
)
def test_a_bad_row_is_an_error_naming_its_line(tmp_path: Path, row: str, message: str) -> None:
    path = _file(tmp_path, ["1700000000,ns,Deployment,w,c,0.1,100,200", row])
    with pytest.raises(SampleFileError) as err:
        read_samples(path)
    assert message in str(err.value)


def test_skip_bad_counts_the_rows_it_skipped(tmp_path: Path) -> None:
    path = _file(
        tmp_path,
        [
            "1700000000,ns,Deployment,w,c,0.1,100,200",
            "x,ns,Deployment,w,c,0.1,100,",
            "1700000600,ns,Deployment,w,c,0.3,300,",
            "1700000300,ns,Deployment,w,c,0.2,200,",
            "1700000900,ns,Deployment,w,c,oops,300,",
        ],
    )
    got = read_samples(path, skip_bad=True)
    assert (got.rows, got.skipped) == (3, 2)
    assert got.reasons[0].startswith("line 3:") and got.reasons[1].startswith("line 6:")
    (h,) = got.histories
    assert h.ts.tolist() == [1700000000, 1700000300, 1700000600]  # sorted by time
    assert h.cpu.tolist() == [0.1, 0.2, 0.3]
    assert h.first("memory_limit") == 200 and h.first("cpu_request") is None


def test_a_missing_required_column_is_named(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_text("timestamp,namespace,kind,workload,container,cpu_cores\n1,ns,D,w,c,0.1\n")
    with pytest.raises(SampleFileError, match="header lacks column"):
        read_samples(path)


def test_write_then_read_gzip_is_lossless(tmp_path: Path) -> None:
    h = history(2, lambda d: 0.1 + d / 10, lambda d: 300 * MIB + 0 * d)
    path = tmp_path / "s.csv.gz"
    write_samples(path, [h])
    with gzip.open(path, "rt") as f:
        assert f.readline().startswith("timestamp,namespace")
    (back,) = read_samples(path).histories
    assert np.array_equal(back.ts, h.ts) and np.array_equal(back.cpu, h.cpu)
    assert np.array_equal(back.provisioned["memory_limit"], h.provisioned["memory_limit"])


def _samples(tmp_path: Path) -> Path:
    rng = np.random.default_rng(5)
    n = int(12 * DAY / 300)
    hs = [
        history(
            12,
            lambda d, s=s: rng.uniform(0.05, 0.2 + s / 10, size=n),
            lambda d: 300 * MIB * (1 + d / 30),
            name=f"w{s}",
        )
        for s in range(3)
    ]
    path = tmp_path / "samples.csv.gz"
    write_samples(path, hs)
    return path


def test_cli_export_round_trips_and_json_has_every_strategy(tmp_path: Path) -> None:
    samples = _samples(tmp_path)
    start = str(int(T0 + 6 * DAY))
    exported = tmp_path / "export.json"
    html = tmp_path / "report.html"
    runner = CliRunner()
    first = runner.invoke(
        cli,
        [
            "backtest",
            "--samples",
            str(samples),
            "--start",
            start,
            "--output",
            "json",
            "--export",
            str(exported),
            "--html",
            str(html),
        ],
    )
    assert first.exit_code == 0, first.output
    doc = json.loads(first.stdout)
    names = [s["strategy"] for s in doc["strategies"]]
    assert names == ["kubefinops", "krr-simple", "vpa-like"]
    ours = doc["strategies"][0]
    days = json.loads(exported.read_text())
    assert sorted(days) == [str(int(T0 + d * DAY)) for d in range(6, 12)]
    assert set(days[str(int(T0 + 6 * DAY))]) == {f"ns/Deployment/w{s}/c" for s in range(3)}
    again = runner.invoke(
        cli,
        [
            "backtest",
            "--samples",
            str(samples),
            "--start",
            start,
            "--output",
            "json",
            "--strategy",
            "krr-simple",
            "--replay",
            str(exported),
        ],
    )
    assert again.exit_code == 0, again.output
    replayed = json.loads(again.stdout)["strategies"][-1]
    for key in ("saving", "cpu_above", "oom_days", "applies", "container_days"):
        assert replayed[key] == ours[key], key
    page = html.read_text()
    assert "uPlot" in page and "ns/Deployment/w0/c" in page and "<script src=" not in page


def test_cli_bad_file_exits_non_zero_with_the_line(tmp_path: Path) -> None:
    path = _file(tmp_path, ["1700000000,ns,Deployment,w,c,0.1,100,200", "1,ns,D,w,c,x,1,"])
    result = CliRunner().invoke(cli, ["backtest", "--samples", str(path)])
    assert result.exit_code == 1
    assert "s.csv:3: column cpu_cores: not a number" in result.output


def test_cli_needs_exactly_one_input() -> None:
    result = CliRunner().invoke(cli, ["backtest"])
    assert result.exit_code == 2
    assert "exactly one input" in result.output
