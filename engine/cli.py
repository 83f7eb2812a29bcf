"""The one console entry point: ``kubefinops worker | demo | recommend``.

Errors an operator can fix (a setting, a refused password, an unreachable broker) end the process
with one line on stderr and a distinct exit code — never a traceback, never a secret.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn, TypeVar

import typer

from engine.errors import AuthenticationFailed, ConfigError, DependencyUnavailable, PermanentError
from engine.logs import setup_logging
from engine.settings import Settings, load_settings

EXIT_PERMANENT = 1
EXIT_CONFIG = 2
EXIT_AUTH = 3
EXIT_UNAVAILABLE = 4
T = TypeVar("T")

cli = typer.Typer(
    add_completion=False, no_args_is_help=True, help=__doc__, pretty_exceptions_enable=False
)


def fail(message: str, code: int) -> NoReturn:
    typer.echo(f"kubefinops: {message}", err=True)
    raise typer.Exit(code)


def settings_or_exit(**overrides: object) -> Settings:
    try:
        return load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)


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
) -> None:
    """Run a Faust worker (what a pod runs): every agent, tables, the web endpoint."""
    from engine.worker import run_worker

    settings = settings_or_exit(web_port=web_port, data_dir=data_dir)
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
    namespace: Annotated[list[str] | None, typer.Option(help="Only these namespaces")] = None,
    history_days: Annotated[int | None, typer.Option(help="Days of history to read")] = None,
    output: Annotated[Output, typer.Option(help="table, json, yaml or csv")] = Output.table,
) -> None:
    """Pull history from Prometheus, print recommendations with savings (like KRR), no Kafka."""
    from engine.oneshot import run_once

    settings = settings_or_exit(
        prometheus_url=prometheus_url,
        history_days=history_days,
        kafka_security_protocol="PLAINTEXT",
    )
    setup_logging(settings, stream=sys.stderr)
    text = operator_errors_exit(
        lambda: asyncio.run(run_once(settings, namespaces=namespace or [], output=output.value))
    )
    typer.echo(text, nl=False)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
