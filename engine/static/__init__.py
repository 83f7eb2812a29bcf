"""Static assets shipped inside the package: the vendored charting library (uPlot, MIT).

Use :func:`asset` to read a file (e.g. to inline it into a self-contained HTML report),
:func:`page` for a UI page with its shared partials included, and :data:`STATIC_DIR` to serve the
directory (the worker's ``/ui/static/``).  Provenance and
checksums: ``engine/static/vendor/uplot/VENDORED.md``.
"""

from __future__ import annotations

import re
from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent
UPLOT_VERSION = "1.6.32"
UPLOT_JS = "vendor/uplot/uPlot.iife.min.js"
UPLOT_CSS = "vendor/uplot/uPlot.min.css"


def asset(name: str) -> str:
    """The text of a static file, by its path under :data:`STATIC_DIR` (no ``..`` allowed)."""
    path = (STATIC_DIR / name).resolve()
    if STATIC_DIR not in path.parents:
        raise ValueError(f"not a static asset: {name!r}")
    return path.read_text(encoding="utf-8")


_INCLUDE = re.compile(r"<!--#include ([\w.-]+\.html)-->\n?")


def page(name: str) -> str:
    """A UI page (``ui/<name>``) with each ``<!--#include partial.html-->`` line replaced by
    ``ui/partial.html`` (one level: the pages' shared ``<head>`` lives in ``ui/head.html``)."""
    return _INCLUDE.sub(lambda m: asset(f"ui/{m.group(1)}"), asset(f"ui/{name}"))
