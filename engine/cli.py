"""The one console entry point: ``kubefinops worker | demo | recommend``.

Errors an operator can fix (a setting, a refused password, an unreachable broker) end the process
with one line on stderr and a distinct exit code — never a traceback, never a secret.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from engine.errors import AuthenticationFailed, ConfigError, DependencyUnavailable, PermanentError
from engine.logs import redact, remember_secrets, setup_logging
from engine.settings import Settings, load_settings

EXIT_PERMANENT = 1
EXIT_CONFIG = 2
EXIT_AUTH = 3
EXIT_UNAVAILABLE = 4
T = TypeVar("T")
EXIT_NO_MATCH = 5  # recommend --once: the selection matches no workload

cli = typer.Typer(
    add_completion=False, no_args_is_help=True, help=__doc__, pretty_exceptions_enable=False
)


def fail(message: str, code: int) -> NoReturn:
    typer.echo(f"kubefinops: {redact(message)}", err=True)
    raise typer.Exit(code)


def settings_or_exit(**overrides: object) -> Settings:
    try:
        settings = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    remember_secrets(settings)  # every command's error line is masked, logging set up or not
    return settings


def operator_errors_exit(run: Callable[[], T]) -> T:
    """Run ``run``; an error an operator can fix ends the process with one line and a code."""
    try:
        return run()
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    except AuthenticationFailed as exc:
        fail(str(exc), EXIT_AUTH)
    except DependencyUnavailable as exc:
        fail(str(exc), EXIT_UNAVAILABLE)
    except PermanentError as exc:  # e.g. a query Prometheus refuses
        fail(str(exc), EXIT_PERMANENT)


@cli.command()
def worker(
    web_port: Annotated[int | None, typer.Option(help="Web endpoint port")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Faust data directory")] = None,
    wait_for_kafka: Annotated[
        float | None,
        typer.Option(help="Seconds to wait for Kafka at start (KUBEFINOPS_KAFKA_WAIT_SECONDS)"),
    ] = None,
) -> None:
    """Run a Faust worker (what a pod runs): every agent, tables, the web endpoint."""
    from engine.worker import run_worker

    settings = settings_or_exit(
        web_port=web_port, data_dir=data_dir, kafka_wait_seconds=wait_for_kafka
    )
    redactor = setup_logging(settings)
    operator_errors_exit(lambda: run_worker(settings, redactor))


@cli.command()
def demo(
    seconds: Annotated[float, typer.Option(help="Stop after this long; 0 = until Ctrl-C")] = 0.0,
    workdir: Annotated[Path | None, typer.Option(help="Where the demo keeps its files")] = None,
    once: Annotated[
        bool, typer.Option("--once", help="Stop after the first reported cycle")
    ] = False,
) -> None:
    """Run the whole loop on an embedded broker (Tansu) with sample data: no services needed."""
    from engine.demo import run_demo

    sys.exit(operator_errors_exit(lambda: run_demo(seconds=seconds, workdir=workdir, once=once)))


class Output(StrEnum):
    table = "table"
    json = "json"
    yaml = "yaml"
    csv = "csv"


@cli.command()
def recommend(
    once: Annotated[bool, typer.Option("--once", help="One-shot run without Kafka")] = True,
    prometheus_url: Annotated[str | None, typer.Option(help="Prometheus base URL")] = None,
    namespace: Annotated[
        list[str] | None, typer.Option("--namespace", "-n", help="Only these namespaces")
    ] = None,
    selector: Annotated[
        str | None,
        typer.Option("--selector", "-l", help="Workload label selector, e.g. app=api,tier!=batch"),
    ] = None,
    history_days: Annotated[int | None, typer.Option(help="Days of history to read")] = None,
    output: Annotated[Output, typer.Option(help="table, json, yaml or csv")] = Output.table,
) -> None:
    """Pull history from Prometheus, print recommendations with savings (like KRR), no Kafka.

    The selection is pushed into every PromQL query; one that matches nothing exits 5."""
    from engine.oneshot import NoMatch, run_once

    settings = settings_or_exit(
        prometheus_url=prometheus_url,
        history_days=history_days,
        kafka_security_protocol="PLAINTEXT",
    )
    setup_logging(settings, stream=sys.stderr)

    def run(progress: Any = None) -> str:
        return asyncio.run(
            run_once(
                settings,
                namespaces=namespace or [],
                selector=selector,
                output=output.value,
                progress=progress,
            )
        )

    def run_here() -> str:
        try:
            return str(with_progress(run, "reading history") if sys.stderr.isatty() else run())
        except NoMatch as exc:
            fail(str(exc), EXIT_NO_MATCH)

    text = operator_errors_exit(run_here)
    typer.echo(text, nl=False)


def with_progress(run: Any, what: str) -> Any:
    """``run(progress)`` under a rich progress bar on stderr (terminals only; gone when done)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress(
        f"[progress.description]{what}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(what, total=None)
        return run(lambda done, total: bar.update(task, completed=done, total=total))


class BacktestOutput(StrEnum):
    table = "table"
    json = "json"


def _selector(text: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            fail(f"--selector: expected key=value[,key=value], got {part!r}", EXIT_CONFIG)
        out[key.strip()] = value.strip()
    return out


@cli.command()
def backtest(
    samples: Annotated[
        Path | None, typer.Option(help="Samples file, CSV or CSV.gz (docs/recommendations.md)")
    ] = None,
    prometheus_url: Annotated[
        str | None, typer.Option(help="Read usage from this Prometheus instead")
    ] = None,
    namespace: Annotated[list[str] | None, typer.Option(help="Only these namespaces")] = None,
    selector: Annotated[
        str | None, typer.Option(help="Workload labels, key=value[,key=value] (Prometheus)")
    ] = None,
    from_: Annotated[
        str | None, typer.Option("--from", help="Prometheus history start (ISO-8601 or Unix s)")
    ] = None,
    to: Annotated[str | None, typer.Option(help="Prometheus history end (default: now)")] = None,
    start: Annotated[
        str | None, typer.Option(help="First decision cycle; earlier history is warm-up")
    ] = None,
    end: Annotated[str | None, typer.Option(help="End of the decision window")] = None,
    interval: Annotated[str, typer.Option(help="Cycle interval (e.g. 1d, 6h)")] = "1d",
    policy: Annotated[
        Path | None, typer.Option(help="Policy document for kubefinops (as the API takes it)")
    ] = None,
    strategy: Annotated[
        list[str] | None,
        typer.Option(
            help="kubefinops, kubefinops-verified, krr-simple, vpa-like (repeat; default: "
            "kubefinops, krr-simple, vpa-like)"
        ),
    ] = None,
    replay: Annotated[
        Path | None, typer.Option(help="Also score the values of an --export file")
    ] = None,
    output: Annotated[BacktestOutput, typer.Option(help="table or json")] = BacktestOutput.table,
    export: Annotated[
        Path | None, typer.Option(help="Write the first strategy's values in force per day")
    ] = None,
    html: Annotated[Path | None, typer.Option(help="Write an HTML report with charts")] = None,
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Skip bad sample rows (counted) instead of failing")
    ] = False,
    min_day_samples: Annotated[
        int, typer.Option(help="Score a container-day with at least this many samples")
    ] = 1,
) -> None:
    """Replay usage through a strategy in closed loop: saving, CPU over request, OOMs, rollouts."""
    from engine.backtest import (
        default_window,
        make_strategies,
        parse_time,
        render_figures,
        result_json,
        run_backtest,
        select,
        write_export,
    )
    from engine.core.backtest import BacktestParams
    from engine.core.quantity import parse_duration

    if (samples is None) == (prometheus_url is None):
        fail("give exactly one input: --samples FILE or --prometheus-url URL", EXIT_CONFIG)
    settings = settings_or_exit(prometheus_url=prometheus_url, kafka_security_protocol="PLAINTEXT")
    setup_logging(settings, stream=sys.stderr)
    log = logging.getLogger("kubefinops.backtest")
    try:
        step = parse_duration(interval)
        strategies = make_strategies(
            strategy or ["kubefinops", "krr-simple", "vpa-like"],
            policy_file=policy,
            prices=settings.prices,
            replay=replay,
        )
        specs = None
        if samples is not None:
            from engine.adapters.samples_file import read_samples

            loaded = read_samples(samples, skip_bad=skip_bad)
            if loaded.skipped:
                log.warning(
                    "skipped %d bad row(s) of %s: %s",
                    loaded.skipped,
                    samples,
                    "; ".join(loaded.reasons),
                )
            histories = select(loaded.histories, namespace or [])
        else:
            from engine.backtest import load_prometheus

            until = parse_time(to) if to else time.time()
            since = parse_time(from_) if from_ else until - 28 * 86400.0
            histories, specs = asyncio.run(
                load_prometheus(
                    settings,
                    since=since,
                    until=until,
                    namespaces=namespace or [],
                    selector=_selector(selector),
                )
            )
        if not histories:
            fail("no samples matched the input and selection", EXIT_PERMANENT)
        window = default_window(
            histories, parse_time(start) if start else None, parse_time(end) if end else None
        )
        params = BacktestParams(
            start=window[0],
            end=window[1],
            interval=step,
            min_day_samples=min_day_samples,
            prices=settings.prices,
        )
    except (ConfigError, ValueError) as exc:
        fail(str(exc), EXIT_CONFIG)
    except DependencyUnavailable as exc:
        fail(str(exc), EXIT_UNAVAILABLE)
    except PermanentError as exc:
        fail(str(exc), EXIT_PERMANENT)
    result = _run_with_progress(run_backtest, histories, strategies, params, specs)
    if export is not None:
        write_export(result, export)
    if html is not None:
        from engine.backtest_html import write_html

        write_html(result, html)
    if output is BacktestOutput.json:
        typer.echo(result_json(result))
    else:
        typer.echo(render_figures([f for f, _ in result.figures]), nl=False)
        log.info("%d container(s), %.1f s", len(histories), result.seconds)


def _run_with_progress(run: Any, histories: Any, strategies: Any, params: Any, specs: Any) -> Any:
    """A rich progress bar on a terminal (stderr), nothing when piped."""
    if not sys.stderr.isatty():
        return run(histories, strategies, params, specs=specs)
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("backtest", total=None)

        def tick(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return run(histories, strategies, params, specs=specs, progress=tick)


class TailOutput(StrEnum):
    table = "table"
    json = "json"


def inspect_or_exit(run: Any) -> Any:
    """Run a topic-inspection coroutine; operator errors end with one line and their code."""
    try:
        return operator_errors_exit(lambda: asyncio.run(run))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@cli.command()
def topics(
    output: Annotated[TailOutput, typer.Option(help="table or json")] = TailOutput.table,
) -> None:
    """Every topic of the app: partitions, end offsets, retention, and each agent's lag."""
    from engine.topics import describe_topics
    from engine.topics_view import print_topics, topics_json

    settings = settings_or_exit()
    infos = inspect_or_exit(describe_topics(settings))
    if output is TailOutput.json:
        typer.echo(topics_json(infos), nl=False)
    else:
        print_topics(infos)


@cli.command()
def tail(
    topic: Annotated[str, typer.Argument(help="e.g. metrics, decisions, kubefinops.deadletter")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new records")
    ] = False,
    key: Annotated[str | None, typer.Option(help="Only records with this key")] = None,
    from_beginning: Annotated[
        bool, typer.Option("--from-beginning", help="Start at the oldest record")
    ] = False,
    limit: Annotated[int, typer.Option(help="How many records (0 = all)", min=0)] = 10,
    output: Annotated[TailOutput, typer.Option(help="table or json")] = TailOutput.table,
) -> None:
    """Records of a topic, decoded with the wire schema (undecodable ones shown raw)."""
    from engine.topics import tail as tail_records
    from engine.topics_view import record_json, record_line

    settings = settings_or_exit()

    async def run() -> None:
        async for rec in tail_records(
            settings,
            topic,
            limit=limit or None,
            from_beginning=from_beginning,
            follow=follow,
            key=key,
        ):
            line = record_json(rec) if output is TailOutput.json else record_line(rec)
            sys.stdout.write(line)
            sys.stdout.flush()

    inspect_or_exit(run())


@cli.command()
def deadletters(
    reason: Annotated[
        str | None, typer.Option(help="Only reasons containing this text (case-insensitive)")
    ] = None,
    replay: Annotated[
        bool, typer.Option("--replay", help="Re-publish the records that are valid now")
    ] = False,
    input_file: Annotated[
        Path | None,
        typer.Option("--input", help="With --replay: fixed-up lines of --output json"),
    ] = None,
    output: Annotated[TailOutput, typer.Option(help="table or json")] = TailOutput.table,
) -> None:
    """Dead letters grouped by reason, with samples; --replay sends valid ones back."""
    from engine.core.records import group_dead_letters, matches
    from engine.topics import letters_from_file, read_dead_letters
    from engine.topics import replay as replay_letters
    from engine.topics_view import dead_letters_json, print_dead_letters, print_replay

    settings = settings_or_exit()
    if input_file is not None and not replay:
        fail("--input is only used with --replay", EXIT_CONFIG)
    if replay:
        if input_file is not None:
            try:
                lines = input_file.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                fail(f"cannot read {input_file}: {exc.strerror}", EXIT_CONFIG)
            try:
                letters = letters_from_file(lines)
            except PermanentError as exc:
                fail(f"{input_file}: {exc}", EXIT_PERMANENT)
        else:
            letters, _ = inspect_or_exit(read_dead_letters(settings))
        chosen = [item for item in letters if matches(item.letter, reason)]
        result = inspect_or_exit(replay_letters(settings, chosen))
        print_replay(result)
        if result.refused and not result.replayed:
            raise typer.Exit(EXIT_PERMANENT)
        return
    letters, broken = inspect_or_exit(read_dead_letters(settings))
    chosen = [item for item in letters if matches(item.letter, reason)]
    if output is TailOutput.json:
        typer.echo(dead_letters_json(chosen), nl=False)
    else:
        print_dead_letters(group_dead_letters(chosen), broken)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
