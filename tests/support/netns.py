"""Separate "hosts" on this one machine: Linux network namespaces on a private bridge.

Each host is a namespace with its own loopback and one veth interface on a bridge in the
root namespace, which holds the subnet's first address so the tests (and a coordinator
running in the root namespace) reach every host and every host reaches them. Names and the
subnet derive from the test process's pid, so concurrent runs do not collide. Needs root
and iproute2; traffic never leaves the bridge.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class Host:
    name: str  # the namespace
    address: str  # its IPv4 address on the bridge
    link: str  # the root-side end of its veth pair: down = the host's link drops

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def link_down(self) -> None:
        _ip("link", "set", self.link, "down")

    def link_up(self) -> None:
        _ip("link", "set", self.link, "up")


@dataclass(frozen=True)
class Network:
    bridge: str
    gateway: str  # the root namespace's address on the bridge
    hosts: tuple[Host, ...]


def require_netns() -> None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2 (ip)")


@contextmanager
def network(n_hosts: int) -> Iterator[Network]:
    """Creates `n_hosts` namespaces on a fresh bridge; removes everything afterwards."""
    require_netns()
    tag = os.getpid() % 10000
    # 10.123.0.0/16 split per run: a /24 per pid bucket keeps parallel runs apart.
    subnet = f"10.123.{tag % 250}"
    bridge = f"lhbr{tag}"
    hosts = tuple(
        Host(name=f"lh{tag}h{i}", address=f"{subnet}.{10 + i}", link=f"lh{tag}v{i}")
        for i in range(n_hosts)
    )
    try:
        _ip("link", "add", bridge, "type", "bridge")
        _ip("addr", "add", f"{subnet}.1/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for i, host in enumerate(hosts):
            inner = f"lh{tag}p{i}"
            _ip("netns", "add", host.name)
            _ip("link", "add", host.link, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", host.name)
            _ip("link", "set", host.link, "master", bridge)
            _ip("link", "set", host.link, "up")
            ns = ["-n", host.name]
            _ip(*ns, "addr", "add", f"{host.address}/24", "dev", inner)
            _ip(*ns, "link", "set", inner, "up")
            _ip(*ns, "link", "set", "lo", "up")
        yield Network(bridge, f"{subnet}.1", hosts)
    finally:
        for host in hosts:
            _ip("netns", "delete", host.name, check=False)
            _ip("link", "delete", host.link, check=False)
        _ip("link", "delete", bridge, check=False)


def _ip(*args: str, check: bool = True) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
