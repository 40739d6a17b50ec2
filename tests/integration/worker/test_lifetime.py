"""A worker tied to its parent (worker.split.lifetime.die_with_parent): it dies when the
parent does, even by SIGKILL, so `llamaherd up`'s workers never run on as orphans."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil
from support.processes import wait_gone

# A parent that starts one child tied to it, prints the child's pid, then waits.
PARENT = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid())])
print(child.pid, flush=True)
time.sleep(120)
"""
CHILD = """
import sys, time
from worker.split.lifetime import die_with_parent
die_with_parent(int(sys.argv[1]))
time.sleep(120)
"""


def test_a_child_tied_to_its_parent_dies_with_a_killed_parent() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, CHILD], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        child = psutil.Process(int(parent.stdout.readline()))
        assert wait_gone([child], 0.5), "the child must live while its parent does"
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert not wait_gone([child], 5), "the child outlived its SIGKILLed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_python_m_worker_started_for_a_parent_that_is_gone_exits_at_once() -> None:
    # The race die_with_parent closes: the parent died before the child could tie itself
    # to it. LLAMAHERD_DIE_WITH_PARENT names a pid that is not (any longer) the parent.
    env = {**os.environ, "LLAMAHERD_DIE_WITH_PARENT": str(os.getpid() + 1_000_000)}
    run = subprocess.run(
        [sys.executable, "-m", "worker", "--help"], env=env, capture_output=True, timeout=60
    )
    assert run.returncode == 1 and b"usage" not in run.stdout
    # Its real parent: it runs (here, prints its help and exits).
    env["LLAMAHERD_DIE_WITH_PARENT"] = str(os.getpid())
    run = subprocess.run(
        [sys.executable, "-m", "worker", "--help"], env=env, capture_output=True, timeout=60
    )
    assert run.returncode == 0 and b"usage" in run.stdout
