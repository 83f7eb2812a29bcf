"""Ship the demo's SmartHealth estate in the wheel.

The ``smarthealth-gitops`` folder is what Argo CD tracks, so it stays at the top of the repository;
at build time a copy goes into the ``engine.demo`` package (``engine/demo/smarthealth-gitops``),
where :func:`engine.demo.data.gitops_dir` finds it in an installed wheel.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ESTATE = "smarthealth-gitops"


class BuildWithEstate(build_py):
    def run(self) -> None:
        super().run()
        source = Path(__file__).resolve().parent / ESTATE
        if source.is_dir() and not self.editable_mode:
            target = Path(self.build_lib) / "engine" / "demo" / ESTATE
            shutil.copytree(source, target, dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildWithEstate})
