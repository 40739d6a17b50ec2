"""The RPC server child refuses to lend a port that someone reached before its kernel filter
was on (real loopback sockets stand for ggml's listener; ggml's stdout is a pipe)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from worker.split.rpc_server import StartError, _refuse_early_connections


@pytest.fixture
def ggml_stdout() -> Iterator[tuple[int, int]]:
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    yield read_end, write_end
    os.close(read_end)
    os.close(write_end)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield sock


def test_a_port_nobody_reached_is_lent(
    listener: socket.socket, ggml_stdout: tuple[int, int]
) -> None:
    os.write(ggml_stdout[1], b"Starting RPC server v3.0.0\n")
    _refuse_early_connections(listener.getsockname()[1], ggml_stdout[0])


def test_a_connection_waiting_in_the_queue_is_found(
    listener: socket.socket, ggml_stdout: tuple[int, int]
) -> None:
    port = listener.getsockname()[1]
    with socket.socket() as early:
        early.bind(("127.0.0.3", 0))
        early.connect(("127.0.0.1", port))
        with pytest.raises(StartError, match=r"127\.0\.0\.3:\d+ reached port \d+ before"):
            _refuse_early_connections(port, ggml_stdout[0])


def test_a_connection_ggml_served_and_closed_is_found_by_its_line(
    listener: socket.socket, ggml_stdout: tuple[int, int]
) -> None:
    os.write(ggml_stdout[1], b"Accepted client connection\nClient connection closed\n")
    with pytest.raises(StartError, match="a peer reached port"):
        _refuse_early_connections(listener.getsockname()[1], ggml_stdout[0])
