"""The one backoff: capped exponential retries of retryable failures, built on tenacity.

Agents that must not lose work (the Git executor, the reporter, the policy reconcile) retry a
:class:`~engine.errors.RetryableError` until it succeeds, waiting 1 s, 2 s, 4 s ... up to a cap,
and let every other exception through.  A worker's start-up check waits for Kafka a bounded time.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    stop_never,
    wait_exponential,
)

from engine.errors import RetryableError

T = TypeVar("T")
log = logging.getLogger("kubefinops.backoff")

OnRetry = Callable[[BaseException, float], None]


def _before_sleep(
    what: str, on_retry: OnRetry | None, within: float | None = None
) -> Callable[[RetryCallState], None]:
    def hook(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        if exc is None:
            return
        if on_retry is not None:
            on_retry(exc, delay)
        elapsed = state.seconds_since_start or 0.0
        budget = f" of {within:.0f}s" if within is not None else ""
        log.warning(
            "%s (attempt %d, %.0fs%s): %s; retrying in %.0fs",
            what,
            state.attempt_number,
            elapsed,
            budget,
            exc,
            delay,
        )

    return hook


async def retry_forever(
    call: Callable[[], Awaitable[T]],
    *,
    what: str,
    first: float = 1.0,
    cap: float = 300.0,
    retry_on: tuple[type[BaseException], ...] = (RetryableError,),
    on_retry: OnRetry | None = None,
) -> T:
    """``await call()`` until it returns; retry only ``retry_on``, ``first * 2**n`` s apart."""
    retrying = AsyncRetrying(
        retry=retry_if_exception_type(retry_on),
        wait=wait_exponential(multiplier=first, max=cap),
        stop=stop_never,
        before_sleep=_before_sleep(what, on_retry),
        reraise=True,
    )

    async def attempt() -> T:  # tenacity awaits coroutine *functions* only, not lambdas
        return await call()

    result: T = await retrying(attempt)
    return result


def retry_sync(
    call: Callable[[], T],
    *,
    what: str,
    within: float,
    first: float = 1.0,
    cap: float = 30.0,
    retry_on: tuple[type[BaseException], ...] = (RetryableError,),
) -> T:
    """Blocking variant that gives up after ``within`` seconds; the last failure is raised."""
    retrying = Retrying(
        retry=retry_if_exception_type(retry_on),
        wait=wait_exponential(multiplier=first, min=first, max=cap),
        stop=stop_after_delay(within),
        before_sleep=_before_sleep(what, None, within),
        reraise=True,
    )
    return retrying(call)
