"""The processes a command started and the sockets they listen on, for the tests that check
what `llamaherd up` and `llamaherd coordinator` expose while they run and leave behind when
they die. Real /proc reads through psutil; nothing here is a stand-in."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable
from dataclasses import dataclass

import psutil

GONE = (psutil.NoSuchProcess, psutil.ZombieProcess)


@dataclass(frozen=True)
class Listener:
    """A listening TCP socket or a bound UDP one, and the process that holds it."""

    pid: int
    process: str
    ip: str
    port: int
    kind: str

    def __str__(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"{self.process} (pid {self.pid}) on {host}:{self.port}/{self.kind}"

    @property
    def loopback(self) -> bool:
        address = ipaddress.ip_address(self.ip)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # ::ffff:127.0.0.1, a dual-stack socket's view
        return address.is_loopback


def process_tree(pid: int) -> list[psutil.Process]:
    """The process and all its descendants now."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _label(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline()).strip()[:100] or process.name()
    except (psutil.Error, OSError):
        return f"pid {process.pid}"


def listeners(processes: Iterable[psutil.Process]) -> list[Listener]:
    """Every listening TCP and bound UDP socket of `processes`."""
    found = []
    for process in processes:
        try:
            sockets = process.net_connections(kind="inet")
        except GONE:
            continue
        label = _label(process)
        for conn in sockets:
            listening = conn.status == psutil.CONN_LISTEN
            bound_udp = conn.type.name == "SOCK_DGRAM" and conn.laddr
            if listening or bound_udp:
                kind = "tcp" if listening else "udp"
                found.append(Listener(process.pid, label, conn.laddr.ip, conn.laddr.port, kind))
    return found


def still_running(processes: Iterable[psutil.Process]) -> list[psutil.Process]:
    """The processes that have not ended (a zombie has ended; it only awaits its reaping)."""
    running = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                running.append(process)
        except GONE:
            continue
    return running


def wait_gone(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Waits up to `timeout` for every process to end; returns those still running."""
    deadline = time.monotonic() + timeout
    while (left := still_running(processes)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def describe(processes: Iterable[psutil.Process]) -> str:
    """One line per process: pid, command and what it listens on, for a failure message."""
    lines = []
    for process in processes:
        ports = ", ".join(f"{lst.ip}:{lst.port}/{lst.kind}" for lst in listeners([process]))
        lines.append(f"  pid {process.pid}: {_label(process)}" + (f" [{ports}]" if ports else ""))
    return "\n".join(lines)
