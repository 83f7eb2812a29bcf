"""An in-process aiohttp server on a free loopback port, for a scripted peer (a Prometheus that
answers what a test or a benchmark tells it to)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager

from aiohttp import web

from tests.harness.proc import free_port

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def serving(posts: Mapping[str, Handler]) -> AsyncIterator[str]:
    """Serve ``posts`` (path -> handler of POST requests) and yield the base URL; the server
    is stopped on the way out, whatever happened inside."""
    app = web.Application()
    for path, handler in posts.items():
        app.router.add_post(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
