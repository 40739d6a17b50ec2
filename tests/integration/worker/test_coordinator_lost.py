"""A worker of a dead cluster: it stops retrying after coordinator_lost_exit_s, drains and
exits (status 3, so a supervisor may start it afresh while an orphan just ends)."""

from __future__ import annotations

import os
import subprocess
import time

from support.worker_process import LLAMAHERD, free_port


def test_a_worker_whose_coordinator_is_gone_exits_after_the_bounded_time(tmp_path):
    dead = f"127.0.0.1:{free_port()}"  # nothing listens: the coordinator is gone
    command = [
        LLAMAHERD, "worker", "--port", "0", "--coordinator", dead, "--node-id", "orphan",
        "--coordinator-lost-exit-s", "2", "--no-metrics", "--no-reference-speed",
        "--node-key-dir", str(tmp_path / "keys"),
    ]  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=60, env={**os.environ}, check=False
    )
    took = time.monotonic() - started
    assert done.returncode == 3, done.stderr[-3000:]
    assert "no coordinator for 2 s (coordinator_lost_exit_s)" in done.stderr
    assert "worker stopped" in done.stderr
    assert took < 30
