"""Packaging glue that pyproject.toml cannot express: generated stubs and the protos/ root.

The `llamaherd` import package (generated `llamaherd.v1.*_pb2` modules) lives under protos/,
next to the .proto files it is generated from; `common`, `worker` and `orchestrator` are top level.
"""

import sys
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "protos"))


class BuildWithStubs(build_py):
    def run(self) -> None:
        import build_stubs

        build_stubs.generate()
        super().run()


setup(
    packages=[
        *find_packages(include=["common*", "worker*", "orchestrator*"]),
        "llamaherd",
        "llamaherd.v1",
        "orchestrator.dashboard.static",  # the dashboard's page (no Python): data only
    ],
    package_dir={"llamaherd": "protos/llamaherd"},
    package_data={
        "llamaherd.v1": ["*.proto", "*.pyi"],
        # The dashboard's page: served by every gateway, so installed with the package.
        "orchestrator.dashboard.static": ["**/*"],
    },
    cmdclass={"build_py": BuildWithStubs},
)
