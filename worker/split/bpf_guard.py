"""The kernel admits only the planned head to ggml's RPC server: a classic BPF socket filter.

A classic BPF program attached to a listening TCP socket (SO_ATTACH_FILTER, no privilege
needed) sees every packet the socket would receive, the SYN of a new connection included,
and drops what it returns 0 for; the sockets `accept` returns are cloned from the listener
and inherit its filter. A program that passes only packets whose IP source is the head's
therefore keeps everyone else from ever completing a handshake with ggml, with no
userspace hop on the data path. The filter reads the source address relative to the
network header (SKF_NET_OFF), since a TCP socket's filter runs with the packet positioned
at the TCP header. A refused peer gets no answer at all (its connect times out): the kernel
drops the SYN before any socket exists, so the refusal cannot name the peer; the listener's
drop counter (SO_MEMINFO) says how many packets were refused.

ggml creates its listener in C (`ggml_backend_rpc_start_server`), so the filter is attached
just after ggml listens. What arrives before that is found afterwards and fails the lease
closed (`early_connections`): the port is not announced yet, so no head can have used it.

Linux only; `program_for` raises ValueError for what the filter cannot express.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import socket
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

SO_ATTACH_FILTER = 26
SO_MEMINFO = 55
_SK_MEMINFO_DROPS = 8
_SKF_NET_OFF = -0x100000  # loads relative to the network (IP) header
# BPF opcodes (linux/filter.h, linux/bpf_common.h)
_LD_W_ABS = 0x00 | 0x00 | 0x20
_LD_B_ABS = 0x00 | 0x10 | 0x20
_RSH_K = 0x04 | 0x70 | 0x00
_JEQ_K = 0x05 | 0x10 | 0x00
_RET_K = 0x06 | 0x00
_ACCEPT, _DROP = 0xFFFFFFFF, 0
_MAX_JUMP = 255  # a conditional jump's offsets are 8 bits
_TCP_LISTEN = "0A"  # state column of /proc/net/tcp


@dataclass(frozen=True)
class _Insn:
    code: int
    k: int = 0
    if_true: str | None = None  # label to jump to, or None for the next instruction
    if_false: str | None = None


def program_for(allowed: Iterable[str]) -> bytes:
    """The filter admitting packets from `allowed` IPs only, as an array of sock_filter.

    IPv4-mapped IPv6 entries (::ffff:a.b.c.d) stand for their IPv4 address: a dual-stack
    socket receives IPv4 packets with an IPv4 header.
    """
    v4, v6 = _addresses(allowed)
    code: list[tuple[str | None, _Insn]] = [
        (None, _Insn(_LD_B_ABS, _SKF_NET_OFF)),  # version and IHL
        (None, _Insn(_RSH_K, 4)),
        (None, _Insn(_JEQ_K, 4, "v4", None)),
        (None, _Insn(_JEQ_K, 6, "v6", "drop")),
        ("v4", _Insn(_LD_W_ABS, _SKF_NET_OFF + 12)),  # IPv4 source
        *((None, _Insn(_JEQ_K, word, "accept", None)) for word in v4),
        (None, _Insn(_RET_K, _DROP)),
        ("v6", _Insn(_RET_K, _DROP) if not v6 else _Insn(_LD_W_ABS, _SKF_NET_OFF + 8)),
    ]
    for i, words in enumerate(v6):
        # Four words of the source (bytes 8-23), each compared in turn; a mismatch moves on
        # to the next allowed address, which starts by loading the first word again.
        nxt = f"v6-{i + 1}" if i + 1 < len(v6) else "drop"
        if i:
            code.append((f"v6-{i}", _Insn(_LD_W_ABS, _SKF_NET_OFF + 8)))
        for j, word in enumerate(words):
            if j:
                code.append((None, _Insn(_LD_W_ABS, _SKF_NET_OFF + 8 + 4 * j)))
            code.append((None, _Insn(_JEQ_K, word, "accept" if j == 3 else None, nxt)))
    code += [("drop", _Insn(_RET_K, _DROP)), ("accept", _Insn(_RET_K, _ACCEPT))]
    return _assemble(code)


def attach(sock: socket.socket, program: bytes) -> None:
    """Attaches `program` (from program_for) to `sock`; OSError if the kernel refuses."""
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("HL", len(program) // 8, ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)  # the kernel copies it


def filter_length(sock: socket.socket) -> int:
    """Instructions in `sock`'s filter (0 without one).

    SO_GET_FILTER reads its length argument as a count of instructions yet copies 8 bytes
    for each, so Python's getsockopt (a byte count) would let it write past the buffer;
    with a length of 0 and no buffer it answers the count alone."""
    count = ctypes.c_uint(0)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.getsockopt(
        sock.fileno(), socket.SOL_SOCKET, SO_ATTACH_FILTER, None, ctypes.byref(count)
    ):
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return count.value


def dropped_packets(sock: socket.socket) -> int:
    """Packets the socket dropped: its filter's refusals (and a full accept queue's)."""
    info = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * (_SK_MEMINFO_DROPS + 1))
    return int(struct.unpack_from("I", info, 4 * _SK_MEMINFO_DROPS)[0])


def usable(listen_host: str, allowed: Iterable[str]) -> str:
    """Why the filter cannot guard ggml's listener here, or "" when it can.

    ggml listens on IPv4 only, so the listen address and every head must be IPv4; and the
    kernel must accept the program (tried on a throwaway socket: once ggml listens on the
    cluster address it is too late to fall back)."""
    try:
        host = ipaddress.ip_address(listen_host)
    except ValueError:
        return f"ggml listens on an IPv4 address only, not {listen_host!r}"
    if host.version != 4:
        return f"ggml listens on IPv4 only, and this node's address is {listen_host}"
    try:
        v4, v6 = _addresses(allowed)
        program = program_for(allowed)
    except ValueError as error:
        return str(error)
    if v6 or not v4:
        return "a head with an IPv6 address cannot reach ggml's IPv4 listener"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            attach(probe, program)
    except (OSError, AttributeError) as error:
        return f"the kernel refused the socket filter ({error})"
    return ""


def find_listener(
    host: str, port: int, timeout: float, starting: Callable[[], bool]
) -> socket.socket | None:
    """This process's listening TCP socket on host:port (ggml's), as a new socket object on
    a duplicate of its descriptor (closing it leaves ggml's open); None once `starting()`
    says the server gave up, or after `timeout` seconds. Polled every 2 ms: the port is
    unguarded from the moment ggml listens until the filter is on."""
    deadline = time.monotonic() + timeout
    while starting() and time.monotonic() < deadline:
        found = _scan_fds(host, port)
        if found is not None:
            return found
        time.sleep(0.002)
    return _scan_fds(host, port)


def _scan_fds(host: str, port: int) -> socket.socket | None:
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        with contextlib.suppress(OSError):
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(fd))
            try:
                if (
                    sock.type == socket.SOCK_STREAM
                    and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
                    and sock.getsockname()[:2] == (host, port)
                ):
                    return sock
            except OSError:
                pass
            sock.close()
    return None


def early_connections(proc_net_tcp: str, port: int) -> list[str]:
    """Peers ("ip:port") of the TCP sockets on local `port` other than listeners, from the
    text of /proc/net/tcp: any connection or half-open handshake that reached the port,
    in whatever state it is now (SYN_RECV, ESTABLISHED, CLOSE_WAIT, TIME_WAIT, ...)."""
    peers = []
    for line in proc_net_tcp.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4:
            continue
        local, remote, state = fields[1], fields[2], fields[3]
        if int(local.rpartition(":")[2], 16) != port or state == _TCP_LISTEN:
            continue
        address, _, remote_port = remote.rpartition(":")
        ip = ipaddress.IPv4Address(struct.pack("<I", int(address, 16)))
        peers.append(f"{ip}:{int(remote_port, 16)}")
    return peers


def _addresses(allowed: Iterable[str]) -> tuple[list[int], list[tuple[int, int, int, int]]]:
    v4: list[int] = []
    v6: list[tuple[int, int, int, int]] = []
    for text in allowed:
        address = ipaddress.ip_address(text)  # ValueError names the bad entry
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if isinstance(address, ipaddress.IPv4Address):
            v4.append(int(address))
        else:
            v6.append(struct.unpack("!4I", address.packed))
    return v4, v6


def _assemble(code: Sequence[tuple[str | None, _Insn]]) -> bytes:
    labels = {label: i for i, (label, _) in enumerate(code) if label is not None}

    def offset(here: int, label: str | None) -> int:
        if label is None:
            return 0
        jump = labels[label] - here - 1
        if not 0 <= jump <= _MAX_JUMP:
            raise ValueError("too many allowed addresses for one socket filter")
        return jump

    return b"".join(
        struct.pack(
            "HBBI",
            insn.code,
            offset(i, insn.if_true),
            offset(i, insn.if_false),
            insn.k & 0xFFFFFFFF,  # SKF_NET_OFF offsets are negative
        )
        for i, (_, insn) in enumerate(code)
    )
