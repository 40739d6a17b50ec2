"""Nothing a test run starts outlives it: every process it starts carries a mark in its
environment, and a small watcher ends the marked processes once the run is over, however
it ends (a clean finish, a failed fixture, Ctrl-C, or a kill -9 of pytest itself).

Processes inherit the environment, so the mark reaches what the tests start directly
(workers, `llamaherd coordinator`, `ray start`) and what those start in turn: the Ray head a
coordinator detaches into a session of its own, its GCS and raylet (parent pid 1 once their
starter is gone), Ray's workers and agents, processes inside network namespaces. They are
found by the mark in /proc/PID/environ, never by name, so another run's processes (their
own mark) and anyone else's are left alone.

`python -m support.leftovers MARK` is the watcher: it waits for EOF on its stdin, a pipe
only the test run holds (the kernel closes it when the run dies), then kills every process
marked MARK (or MARK/...) and exits. It imports neither Ray nor llamaherd.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

log = logging.getLogger("llamaherd.tests.leftovers")

MARK_ENV = "LLAMAHERD_TEST_MARK"
GONE_WITHIN_S = 10.0


def new_mark(scope: str) -> str:
    """A mark no other run uses: the scope, this process and random bits."""
    return f"{scope}-{os.getpid()}-{secrets.token_hex(4)}"


def submark(mark: str, name: str) -> str:
    """A mark inside `mark`: ending `mark` ends its processes too."""
    return f"{mark}/{name}"


def _carries(value: str | None, mark: str) -> bool:
    return value is not None and (value == mark or value.startswith(mark + "/"))


def marked(mark: str, exclude: frozenset[int] = frozenset()) -> list[psutil.Process]:
    """The running processes (not zombies) whose environment carries `mark` or a submark."""
    found = []
    skip = exclude | {os.getpid()}
    for process in psutil.process_iter():
        if process.pid in skip:
            continue
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
            if _carries(process.environ().get(MARK_ENV), mark):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue  # gone meanwhile, or not ours to read: not ours to end
    return found


def end_marked(
    mark: str, exclude: frozenset[int] = frozenset(), timeout: float = GONE_WITHIN_S
) -> list[psutil.Process]:
    """Kills (SIGKILL) every process marked `mark`, again until none is left (a dying
    starter may have started one more meanwhile); returns those alive after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        victims = marked(mark, exclude)
        for process in victims:
            try:
                log.warning("ending pid %d, left by the tests: %s", process.pid, _command(process))
                process.kill()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        psutil.wait_procs(victims, timeout=max(0.0, deadline - time.monotonic()))
        if not victims or time.monotonic() >= deadline:
            return [p for p in marked(mark, exclude)]


def _command(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())[:200] or process.name()
    except psutil.Error:
        return "?"


class Watcher:
    """The watcher process of one mark (see the module's docstring)."""

    def __init__(self, mark: str) -> None:
        self.mark = mark
        env = {k: v for k, v in os.environ.items() if k != MARK_ENV}
        env["PYTHONPATH"] = os.pathsep.join(
            [str(Path(__file__).resolve().parent.parent), env.get("PYTHONPATH", "")]
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "support.leftovers", mark],
            stdin=subprocess.PIPE,
            env=env,
            # Its own session: a Ctrl-C or a group kill meant for the run must not end it.
            start_new_session=True,
        )

    def close(self, timeout: float = 30.0) -> int:
        """Lets it sweep now and waits for it: its exit status is 0 if nothing marked is
        left, 1 if something survived SIGKILL."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        return self.process.wait(timeout)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m support.leftovers MARK", file=sys.stderr)
        return 2
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    for sig in (signal.SIGINT, signal.SIGHUP):  # meant for the run; outlive it
        signal.signal(sig, signal.SIG_IGN)
    while os.read(sys.stdin.fileno(), 4096):
        pass  # nothing is ever written: b"" once the run is gone
    left = end_marked(argv[1])
    if left:
        log.error("still running after SIGKILL: %s", [p.pid for p in left])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
