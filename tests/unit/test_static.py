"""The vendored charting library is the one VENDORED.md names, byte for byte, with its licence."""

from __future__ import annotations

import hashlib
import re

import pytest

from engine.static import STATIC_DIR, UPLOT_CSS, UPLOT_JS, UPLOT_VERSION, asset, page

VENDORED = STATIC_DIR / "vendor" / "uplot" / "VENDORED.md"


def test_vendored_files_match_their_recorded_digests() -> None:
    recorded = dict(re.findall(r"^\| (\S+) \| ([0-9a-f]{64}) \|$", VENDORED.read_text(), re.M))
    assert set(recorded) == {"uPlot.iife.min.js", "uPlot.min.css"}
    for name, digest in recorded.items():
        data = (VENDORED.parent / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest, name


def test_version_and_licence() -> None:
    js = asset(UPLOT_JS)
    assert js.startswith(f"/*! https://github.com/leeoniya/uPlot (v{UPLOT_VERSION}) */")
    assert "uPlot" in asset(UPLOT_CSS) or ".uplot" in asset(UPLOT_CSS)
    assert "MIT License" in (VENDORED.parent / "LICENSE").read_text()


def test_asset_refuses_paths_outside_the_static_dir() -> None:
    with pytest.raises(ValueError):
        asset("../settings.py")


PAGES = [("index.html", "fleet"), ("workload.html", "workload")]


@pytest.mark.parametrize(("name", "title"), PAGES)
def test_each_page_gets_the_shared_head_once(name: str, title: str) -> None:
    html = page(name)
    head = html[html.index("<head>") : html.index("</head>")]
    assert asset("ui/head.html") in head and "#include" not in html
    assert head.count(f'src="static/{UPLOT_JS}"') == 1 and head.count("app.css") == 1
    assert head.index('<meta charset="utf-8">') < head.index("<title>")
    assert f"<title>KubeFinOps — {title}</title>" in head
