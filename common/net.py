"""Network addresses as the worker and the control plane write them: HOST:PORT."""

from __future__ import annotations


def split_host_port(address: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' into its parts; ValueError names what is wrong."""
    host, sep, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not HOST:PORT (e.g. 127.0.0.1:50050)")
    return host, int(port)


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
