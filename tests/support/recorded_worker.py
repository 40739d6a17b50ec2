"""A real `llamaherd worker` process whose telemetry is a recorded Jetson board: the jtop
fixture replayed through the real Jetson source (support.recorded_telemetry), drawing the
watts a file names, so an integration test drives the board's power while the worker runs.

The worker is started with PYTHONPATH from `worker_environ`: a sitecustomize.py there calls
`install()` at interpreter start, which hands the worker's sampler this board in place of
the GPU sources it would probe (worker.telemetry.sampler.default_gpu_sources). The host
source (psutil) stays as it is. Nothing happens in a process without ENV_BOARD set.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

ENV_BOARD = "LLAMAHERD_TEST_RECORDED_BOARD"  # the jtop fixture's stem, e.g. orin-nano-8gb
ENV_WATTS = "LLAMAHERD_TEST_BOARD_WATTS_FILE"  # a file holding the watts it draws now
TESTS_DIR = Path(__file__).resolve().parent.parent
SITECUSTOMIZE = "import support.recorded_worker\nsupport.recorded_worker.install()\n"


def worker_environ(site_dir: Path, board: str, watts_file: Path) -> dict[str, str]:
    """The environment variables that make a worker started with them report `board`,
    drawing what `watts_file` says; writes the sitecustomize.py into `site_dir`."""
    site_dir.mkdir(parents=True, exist_ok=True)
    (site_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return {
        "PYTHONPATH": os.pathsep.join([str(site_dir), str(TESTS_DIR)]),
        ENV_BOARD: board,
        ENV_WATTS: str(watts_file),
    }


def install() -> None:
    """Replaces the worker sampler's GPU sources with the recorded board, when ENV_BOARD
    names one; imports the worker's modules only then."""
    board = os.environ.get(ENV_BOARD)
    if not board:
        return
    from worker.telemetry import sampler

    watts_file = Path(os.environ[ENV_WATTS])

    def recorded_sources(interval_s: float) -> list[Any]:
        return [_driven_jetson(board, watts_file)]

    sampler.default_gpu_sources = recorded_sources


def _driven_jetson(board: str, watts_file: Path) -> Any:
    from support.recorded_telemetry import RecordedJetson

    from worker.telemetry.source import Probe, Reading, TelemetrySource

    class DrivenJetson(TelemetrySource):
        """The recorded board, scaled before each sample to the watts the file names."""

        name = "jetson"

        def __init__(self) -> None:
            self.board = RecordedJetson(board, watts_file.parent / f"{board}.nv_tegra_release")

        def probe(self) -> Probe:
            return Probe.ok()

        def sample(self) -> Reading:
            self.board.draw(float(watts_file.read_text()))
            return self.board.source.sample()

        def close(self) -> None:
            self.board.close()

    return DrivenJetson()
