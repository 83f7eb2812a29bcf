"""Static assets shipped inside the package: the vendored charting library (uPlot, MIT).

Use :func:`asset` to read a file (e.g. to inline it into a self-contained HTML report) and
:data:`STATIC_DIR` to serve the directory (the worker's ``/ui/static/``).  Provenance and
checksums: ``engine/static/vendor/uplot/VENDORED.md``.
"""

from __future__ import annotations

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
