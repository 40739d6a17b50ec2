"""Child processes of the worker that must not outlive it."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Called first thing in a child: the kernel kills it when the worker dies, so a
    crashed worker never leaves an open RPC port or a model behind.

    Not a `preexec_fn`: Python code between fork and exec in a process running gRPC's
    threads can crash in gRPC's fork handlers, and without one subprocess uses vfork.
    """
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the worker died before the line above: do not linger
        os._exit(1)


async def end(process: asyncio.subprocess.Process, timeout: float) -> int:
    """Stops a child politely (SIGTERM), then not (SIGKILL); returns its exit code."""
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            process.kill()
    return await process.wait()
