"""Child processes of the worker that must not outlive it."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1

# Set by a parent that wants its `python -m worker` child to die with it (the pid to
# check); `llamaherd up` sets it, and worker/__main__.py reads it first thing.
DIE_WITH_PARENT_ENV = "LLAMAHERD_DIE_WITH_PARENT"


def die_with_parent(parent_pid: int | None = None) -> None:
    """Called first thing in a child: the kernel kills it when its parent dies, so a
    crashed worker never leaves an open RPC port or a model behind, and a worker started by
    `llamaherd up` never runs on as an orphan of a killed `up`.

    `parent_pid`, when the parent says who it is, closes the race precisely: a parent that
    died before the prctl below has left this process to another (init, or a subreaper
    such as a container's), which the PID-1 test alone would miss.

    Not a `preexec_fn`: Python code between fork and exec in a process running gRPC's
    threads can crash in gRPC's fork handlers, and without one subprocess uses vfork.
    """
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    parent = os.getppid()
    if parent == 1 or (parent_pid is not None and parent != parent_pid):
        os._exit(1)  # the parent died before the line above: do not linger


async def end(process: asyncio.subprocess.Process, timeout: float) -> int:
    """Stops a child politely (SIGTERM), then not (SIGKILL); returns its exit code."""
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            process.kill()
    return await process.wait()
