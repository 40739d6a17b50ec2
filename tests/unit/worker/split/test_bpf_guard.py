"""The kernel socket filter that admits only a split's head to ggml's RPC server, on real
loopback sockets of this kernel (a peer's source address is picked among 127.0.0.0/8)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from worker.split import bpf_guard

HEAD, OTHER = "127.0.0.2", "127.0.0.3"
NO_ANSWER_S = 0.3  # a refused SYN is dropped: the connect would wait for TCP's retries

# /proc/net/tcp with a listener on port 50100 (0xC3B4), the connection it accepted from
# 127.0.0.3:41000 (0xA028), and that connection's client end (local port 41000).
PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   4: 0100007F:C3B4 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2345760 1 00000000b75bc8d3 100 0 0 10 0
   9: 0100007F:C3B4 0300007F:A028 01 00000000:00000000 00:00000000 00000000     0        0 2345762 1 000000001c44b582 20 0 0 10 -1
  54: 0300007F:A028 0100007F:C3B4 01 00000000:00000000 00:00000000 00000000     0        0 2345761 2 000000006232cddb 20 0 0 10 -1
"""  # noqa: E501


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(4)
        yield sock


def connect_from(source: str, listener: socket.socket) -> socket.socket:
    family = listener.family
    client = socket.socket(family, socket.SOCK_STREAM)
    client.bind((source, 0))
    client.settimeout(NO_ANSWER_S)
    try:
        client.connect(listener.getsockname()[:2])
    except BaseException:
        client.close()
        raise
    return client


def test_the_head_gets_through_and_its_connection_keeps_the_filter(
    listener: socket.socket,
) -> None:
    bpf_guard.attach(listener, bpf_guard.program_for([HEAD]))
    with connect_from(HEAD, listener) as client:
        accepted, peer = listener.accept()
        with accepted:
            assert peer[0] == HEAD
            client.sendall(b"hello")
            assert accepted.recv(5) == b"hello"
            accepted.sendall(b"back")
            assert client.recv(4) == b"back"
            # Cloned from the listener, filter included: nothing but the head reaches it.
            assert bpf_guard.filter_length(accepted) == bpf_guard.filter_length(listener) > 0


def test_anyone_else_gets_no_answer_and_is_counted(listener: socket.socket) -> None:
    bpf_guard.attach(listener, bpf_guard.program_for([HEAD]))
    before = bpf_guard.dropped_packets(listener)
    with pytest.raises(TimeoutError):
        connect_from(OTHER, listener).close()
    assert bpf_guard.dropped_packets(listener) > before
    listener.settimeout(0)
    with pytest.raises(BlockingIOError):
        listener.accept()  # the handshake never completed: nothing for ggml to serve


def test_several_heads_and_ipv4_mapped_entries_are_admitted(listener: socket.socket) -> None:
    bpf_guard.attach(listener, bpf_guard.program_for(["10.9.9.9", f"::ffff:{HEAD}"]))
    connect_from(HEAD, listener).close()
    with pytest.raises(TimeoutError):
        connect_from(OTHER, listener).close()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
def test_a_dual_stack_listener_checks_ipv6_and_ipv4_sources() -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as dual:
        dual.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        dual.bind(("::", 0))
        dual.listen(4)
        # An IPv4 peer arrives with an IPv4 header, an IPv6 one with an IPv6 header.
        bpf_guard.attach(dual, bpf_guard.program_for(["fd00::1", "::1", HEAD]))
        connect_from("::1", dual).close()
        connect_from(f"::ffff:{HEAD}", dual).close()
        with pytest.raises(TimeoutError):
            connect_from(f"::ffff:{OTHER}", dual).close()
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as v6:
        v6.bind(("::1", 0))
        v6.listen(4)
        bpf_guard.attach(v6, bpf_guard.program_for(["fd00::1", "::2"]))
        with pytest.raises(TimeoutError):
            connect_from("::1", v6).close()


def test_connections_that_reached_the_port_before_the_filter_are_found() -> None:
    assert bpf_guard.early_connections(PROC_NET_TCP, 50100) == ["127.0.0.3:41000"]
    assert bpf_guard.early_connections(PROC_NET_TCP, 50101) == []


@pytest.mark.parametrize(
    ("host", "allowed", "why"),
    [
        ("::", ["10.0.0.1"], "ggml listens on IPv4 only"),
        ("localhost", ["10.0.0.1"], "ggml listens on an IPv4 address only"),
        ("10.0.0.2", ["fd00::1"], "a head with an IPv6 address"),
        ("10.0.0.2", ["not-an-ip"], "does not appear to be an IPv4 or IPv6 address"),
        ("10.0.0.2", [f"10.0.{i // 256}.{i % 256}" for i in range(300)], "too many allowed"),
    ],
)
def test_where_the_filter_cannot_guard_the_reason_is_given(
    host: str, allowed: list[str], why: str
) -> None:
    assert why in bpf_guard.usable(host, allowed)


def test_an_ipv4_node_and_head_can_use_the_filter() -> None:
    assert bpf_guard.usable("10.0.0.2", ["10.0.0.1"]) == ""
    assert bpf_guard.usable("0.0.0.0", ["::ffff:10.0.0.1"]) == ""
