"""The delay proxy on loopback: the delay it adds to a round trip, and bytes kept intact."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time

import pytest
from support.delay_proxy import DelayProxy, EchoServer, Relayed, rtt

LOOPBACK = ("127.0.0.1", 0)


def test_a_round_trip_gains_twice_the_one_way_delay() -> None:
    added = []
    with EchoServer(LOOPBACK) as echo, DelayProxy(LOOPBACK, echo.address) as proxy:
        for _ in range(3):
            proxy.set_delay(0.0)
            base = rtt(proxy.address, n=20)
            proxy.set_delay(0.010)
            added.append(rtt(proxy.address, n=20) - base)
    # 2 x 10 ms added, never less; the best of three tries within 10 ms above that, for a
    # shared, busy machine (one delay per chunk each way would add 20 ms, not 0).
    assert min(added) >= 0.020 - 0.001, added  # the clock's and the median's slack
    assert min(added) < 0.030, added


def test_it_counts_the_replies_of_a_ping_pong_as_turns() -> None:
    with EchoServer(LOOPBACK) as echo, DelayProxy(LOOPBACK, echo.address) as proxy:
        rtt(proxy.address, n=25)
        (relayed,) = proxy.relayed()
    assert relayed.turns == 25
    assert relayed.bytes_up == relayed.bytes_down == 25 * 64


def test_an_observer_sees_every_chunk_each_way() -> None:
    seen: dict[bool, bytearray] = {True: bytearray(), False: bytearray()}

    def observe(_: Relayed, up: bool, data: bytes) -> None:
        seen[up] += data

    payload = os.urandom(200_000)
    with EchoServer(LOOPBACK) as echo, DelayProxy(LOOPBACK, echo.address, observe=observe) as p:
        assert _round_trip(p.address, payload) == payload
    assert seen[True] == seen[False] == payload


def test_the_delay_is_per_direction_not_per_chunk_so_throughput_is_not_capped() -> None:
    # 4 MiB there and back through 20 ms each way: chunks are forwarded 20 ms after each
    # arrives, so the transfer takes about 40 ms more than direct, not 20 ms per chunk
    # (the 16+ chunks of 256 KiB or less would take 0.6 s or more).
    payload = os.urandom(4 * 1024 * 1024)
    took = []
    with EchoServer(LOOPBACK) as echo, DelayProxy(LOOPBACK, echo.address, 0.020) as proxy:
        for _ in range(3):  # the best of three, for a shared, busy machine
            started = time.monotonic()
            got = _round_trip(proxy.address, payload)
            took.append(time.monotonic() - started)
            assert got == payload
    assert 0.040 <= min(took) < 0.5, took


def test_concurrent_connections_keep_their_bytes_intact_and_in_order() -> None:
    payloads = [os.urandom(300_000 + i * 7919) for i in range(6)]
    results: dict[int, bytes] = {}
    with EchoServer(LOOPBACK) as echo, DelayProxy(LOOPBACK, echo.address, 0.001) as proxy:

        def client(i: int) -> None:
            results[i] = _round_trip(proxy.address, payloads[i])

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(payloads))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        relayed = proxy.relayed()
    for i, payload in enumerate(payloads):
        assert hashlib.sha256(results[i]).digest() == hashlib.sha256(payload).digest(), i
    assert sorted(r.bytes_up for r in relayed) == sorted(len(p) for p in payloads)
    assert sorted(r.bytes_down for r in relayed) == sorted(len(p) for p in payloads)


def test_a_negative_delay_is_refused() -> None:
    proxy = DelayProxy(LOOPBACK, ("127.0.0.1", 9))
    with pytest.raises(ValueError, match="delay must be >= 0"):
        proxy.set_delay(-0.001)


def _round_trip(address: tuple[str, int], payload: bytes) -> bytes:
    """Sends `payload` while reading the echo, then the end; returns what came back."""
    with socket.create_connection(address, timeout=30) as sock:
        sender = threading.Thread(target=_send_then_end, args=(sock, payload))
        sender.start()
        received = bytearray()
        while chunk := sock.recv(65536):
            received += chunk
        sender.join(30)
    return bytes(received)


def _send_then_end(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(payload)
    sock.shutdown(socket.SHUT_WR)
