"""Lends this node's device to split models' heads: one ggml RPC server child per lease.

A lease is what the coordinator asked for with StartRpcServer: a server for one head
address, with memory set aside in the worker's budget for the layers it will hold. The
server runs in a child process (worker.split.rpc_server), so ggml's aborts and any memory
corruption from a hostile peer stay out of the worker. Leases are soft state: the
coordinator stops the ones no head uses, and a lease whose process exits is reported with
the reason and its memory freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import logging
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass

from common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, ResourceExhausted
from common.leases import Lease
from common.memory import format_bytes
from common.net import join_host_port
from worker.models.estimate import MemoryBudget
from worker.split.lifetime import end

log = logging.getLogger(__name__)

LEASE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@\-]{0,255}$"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 5.0


@dataclass
class _Running:
    lease: Lease
    process: asyncio.subprocess.Process
    watcher: asyncio.Task[None] | None = None


class RpcLender:
    """The node's leases; at most `max_leases` RPC servers at once, each with memory set
    aside in the budget (a lease with none would be a process without a cap)."""

    def __init__(
        self,
        listen_host: str,
        advertise_host: str,
        budget: MemoryBudget,
        threads: int,
        max_leases: int = 8,
        guard: str = "auto",
    ) -> None:
        self._max_leases = max_leases
        self._guard = guard  # rpc_server's --guard: auto (kernel filter if it works), forwarder
        self._listen_host = listen_host
        self._advertise_host = advertise_host
        self._budget = budget
        self._threads = threads
        self._leases: dict[str, _Running] = {}
        self._lock = asyncio.Lock()
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        """Calls `listener` (on the event loop) when a lease starts, stops or exits."""
        self._listeners.append(listener)

    def memory_free(self) -> int:
        return self._budget.free_bytes()

    def leases(self) -> list[Lease]:
        return [r.lease for _, r in sorted(self._leases.items())]

    async def start(
        self, lease_id: str, head_host: str, reserve_bytes: int, n_threads: int | None = None
    ) -> Lease:
        _check(lease_id, head_host)
        if reserve_bytes <= 0:
            raise InvalidArgument(
                f"reserve_bytes is {reserve_bytes}: a lease must set memory aside for the "
                "layers its RPC server will hold (the estimate of those layers)"
            )
        async with self._lock:
            running = self._leases.get(lease_id)
            if running is not None and running.lease.running:
                if running.lease.head_host != head_host:
                    raise AlreadyExists(
                        f"lease {lease_id!r} already serves head {running.lease.head_host}; "
                        "stop it first or use another lease id"
                    )
                return running.lease
            if running is not None:  # exited: start it afresh
                await self._stop_locked(lease_id)
            if len(self._leases) >= self._max_leases:
                raise ResourceExhausted(
                    f"this node already lends {len(self._leases)} RPC servers, its limit "
                    f"(max_leases={self._max_leases}); stop one or raise max_leases"
                )
            owner = _owner(lease_id)
            self._budget.reserve_bytes(owner, reserve_bytes, f"lending a device ({lease_id})")
            try:
                started = await self._spawn(lease_id, head_host, reserve_bytes, n_threads)
            except BaseException:
                self._budget.release(owner)
                raise
            self._leases[lease_id] = started
            started.watcher = asyncio.create_task(self._watch(started), name=f"rpc:{lease_id}")
        log.info(
            "lending %s as %s to %s for %s (%s set aside, guard %s)",
            started.lease.device, started.lease.endpoint, head_host, lease_id,
            format_bytes(reserve_bytes), started.lease.guard,
        )  # fmt: skip
        self._changed()
        return started.lease

    async def stop(self, lease_id: str) -> None:
        async with self._lock:
            await self._stop_locked(lease_id)
        self._changed()

    async def close(self) -> None:
        async with self._lock:
            for lease_id in list(self._leases):
                await self._stop_locked(lease_id)

    # ---- internals -------------------------------------------------------------------
    async def _spawn(
        self, lease_id: str, head_host: str, reserve_bytes: int, n_threads: int | None
    ) -> _Running:
        read_fd, write_fd = os.pipe()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "worker.split.rpc_server",
                "--listen", join_host_port(self._listen_host, 0),
                "--allow", head_host,
                "--threads", str(n_threads or self._threads),
                "--ready-fd", str(write_fd),
                "--guard", self._guard,
                pass_fds=(write_fd,),
                stdin=asyncio.subprocess.DEVNULL,
                env={**os.environ, "GGML_NO_BACKTRACE": "1"},  # abort messages, not gdb
                start_new_session=True,  # a Ctrl-C for the worker reaches it via the worker
            )  # fmt: skip
        finally:
            os.close(write_fd)
        try:
            line = await asyncio.wait_for(_read_line(read_fd), READY_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise FailedPrecondition(
                f"the ggml RPC server for {lease_id} did not start in {READY_TIMEOUT_S:.0f} s"
            ) from None
        if not line:
            code = await process.wait()
            raise FailedPrecondition(
                f"the ggml RPC server for {lease_id} exited at start (code {code}); "
                "the worker's log has its output"
            )
        ready = json.loads(line)
        _, _, port = ready["endpoint"].rpartition(":")
        lease = Lease(
            lease_id=lease_id,
            endpoint=join_host_port(self._advertise_host, int(port)),
            head_host=head_host,
            device=ready["device"],
            reserved_bytes=reserve_bytes,
            guard=ready["guard"],
        )
        return _Running(lease, process)

    async def _watch(self, running: _Running) -> None:
        code = await running.process.wait()
        lease = running.lease
        if self._leases.get(lease.lease_id) is not running:
            return  # stopped on purpose
        log.error("ggml RPC server for %s exited with code %s", lease.lease_id, code)
        running.lease = dataclasses.replace(
            lease, running=False, error=f"the RPC server exited with code {code}"
        )
        self._budget.release(_owner(lease.lease_id))
        self._changed()

    async def _stop_locked(self, lease_id: str) -> None:
        running = self._leases.pop(lease_id, None)
        if running is None:
            return
        if running.watcher is not None:
            running.watcher.cancel()
        await end(running.process, STOP_TIMEOUT_S)
        self._budget.release(_owner(lease_id))
        log.info("stopped lending %s (%s)", running.lease.endpoint, lease_id)

    def _changed(self) -> None:
        for listener in self._listeners:
            with contextlib.suppress(Exception):
                listener()


def _check(lease_id: str, head_host: str) -> None:
    if not re.fullmatch(LEASE_ID_PATTERN, lease_id):
        raise InvalidArgument(f"lease_id {lease_id!r} must match {LEASE_ID_PATTERN}")
    try:
        ipaddress.ip_address(head_host)
    except ValueError:
        raise InvalidArgument(
            f"head_host {head_host!r} must be an IP address: the RPC server admits "
            "connections from that address only"
        ) from None


def _owner(lease_id: str) -> str:
    return f"rpc:{lease_id}"


async def _read_line(fd: int) -> str:
    """The first line from a pipe, read by the event loop: no thread waits (up to
    READY_TIMEOUT_S) for a server that is slow to start."""
    reader = asyncio.StreamReader()
    transport, _ = await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", 0)
    )
    try:
        return (await reader.readline()).decode().strip()
    finally:
        transport.close()
