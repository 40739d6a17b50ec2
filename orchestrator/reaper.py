"""`python -m orchestrator.reaper SESSION_DIR RAY_DIR`: ends what is left of a local Ray when the
process that started it (`llamaherd up` or `llamaherd coordinator`) dies, however it dies.

Ray ties most of its processes to the driver itself (the kernel kills the GCS, the raylet,
the monitors and, through the raylet, the actors when the driver dies), but not the raylet's
agents: they notice the raylet is gone, then block for a minute trying to report it to the
dead GCS, deaf to SIGTERM, one of them holding a port. So the driver starts this small
process with a pipe as its stdin. When the driver dies, for any reason, the kernel closes
the pipe's other end; the reaper reads EOF and kills every Ray process (one that runs Ray's
code from RAY_DIR, runs one of its modules as `python -m ray.<...>`, or calls itself
ray::...) that still has a file open under the session's
directory or names it on its command line: Ray's processes of that session and no other
(each keeps its log files there), never a user's `tail -f` of those logs. Then it exits.

It imports neither Ray nor the rest of llamaherd, so it costs a few megabytes while it waits.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

log = logging.getLogger("llamaherd.reaper")

GONE_WITHIN_S = 5.0


def session_processes(session_dir: Path, ray_dir: Path, exclude: int) -> Iterator[psutil.Process]:
    """Ray's processes, other than `exclude`, that belong to `session_dir`."""
    session = str(session_dir.resolve())
    ray_code = str(ray_dir.resolve()) + os.sep
    for process in psutil.process_iter():
        if process.pid == exclude:
            continue
        try:
            command = process.cmdline()
            if not _is_ray(command, ray_code):
                continue
            if any(_under(arg, session) for arg in command) or any(
                _under(f.path, session) for f in process.open_files()
            ):
                yield process
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue  # gone meanwhile, or another user's: not ours to end


def _is_ray(command: list[str], ray_code: str) -> bool:
    """Ray's daemons run binaries or scripts from its package; its workers and agents
    rename themselves ray::<what they run>; the Ray Client server of a head started with
    `ray start --head` runs as `python -m ray.util.client.server` (its setup script execs
    that), naming no file of Ray's package."""
    return bool(command) and (
        command[0].startswith("ray::")
        or any(arg.startswith(ray_code) for arg in command)
        or any(_ray_module(flag, name) for flag, name in itertools.pairwise(command))
    )


def _ray_module(flag: str, name: str) -> bool:
    """`-m NAME` runs one of Ray's modules."""
    return flag == "-m" and (name == "ray" or name.startswith("ray."))


def _under(text: str, directory: str) -> bool:
    """`text` is `directory`, a path inside it, or a flag whose value is one of those."""
    value = text.split("=", 1)[1] if text.startswith("-") and "=" in text else text
    return value == directory or value.startswith(directory + os.sep)


def reap(
    session_dir: Path, ray_dir: Path, timeout: float = GONE_WITHIN_S, why: str | None = None
) -> list[psutil.Process]:
    """Kills the session's processes (SIGKILL: the ones left at this point ignore SIGTERM)
    and waits for them; returns the ones still alive after `timeout`. `why` names a
    deliberate stop (logged at INFO); without it they are a dead driver's leftovers."""
    victims = list(session_processes(session_dir, ray_dir, exclude=os.getpid()))
    for process in victims:
        try:
            if why is None:
                log.warning(
                    "ending %s (pid %d), left by a dead driver", process.name(), process.pid
                )
            else:
                log.info("ending %s (pid %d): %s", process.name(), process.pid, why)
            process.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    deadline = time.monotonic() + timeout
    while (alive := [p for p in victims if _running(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def _running(process: psutil.Process) -> bool:
    """Not ended; a zombie has ended (its parent, often init, has yet to collect it)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False


def main(argv: list[str]) -> int:
    """Waits for EOF on stdin (the driver's death or exit), then reaps the session.

    The driver may also write lines: `pid N` names a starter of the session's processes (the
    head helper of orchestrator.runtime, which is not a Ray process) to kill first, so that
    it starts no more once the others are ended; `release` tells the reaper its watch is
    over (a head started whole, meant to outlive the driver): it exits, reaping nothing.
    A reaper told of a starter watches a start's own directory, and removes it once reaped."""
    if len(argv) != 3:
        print("usage: python -m orchestrator.reaper SESSION_DIR RAY_DIR", file=sys.stderr)
        return 2
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    # Ctrl-C and a closed terminal are meant for the driver, which stops Ray itself; the
    # reaper must outlive it to clean up after a driver that could not.
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    starters: list[psutil.Process] = []
    for line in sys.stdin:  # ends at EOF: the driver is gone (or done)
        word, _, value = line.strip().partition(" ")
        if word == "release":
            return 0
        if word == "pid":
            with contextlib.suppress(psutil.Error, ValueError):
                starters.append(psutil.Process(int(value)))  # its start time guards reuse
    started = time.monotonic()
    for starter in starters:
        with contextlib.suppress(psutil.Error):
            log.warning("ending the starter %s (pid %d)", starter.name(), starter.pid)
            starter.kill()
    psutil.wait_procs(starters, timeout=GONE_WITHIN_S)
    alive = reap(Path(argv[1]), Path(argv[2]))
    if alive:
        log.error("still running after SIGKILL: %s", [p.pid for p in alive])
        return 1
    if starters:  # a start's own directory, cut short: nothing in it is worth keeping
        shutil.rmtree(argv[1], ignore_errors=True)
    log.info("session %s reaped in %.1f s", argv[1], time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
