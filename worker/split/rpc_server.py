"""Child process that lends this node's device to one head: `python -m worker.split.rpc_server`.

Started and stopped by the worker (worker.split.lender), never by hand. ggml's RPC server
listens on a loopback port; the peer filter listens on the cluster address and admits the
head only. When ready it writes one JSON line, {"endpoint", "device", ...}, to the file
descriptor given by --ready-fd.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading

from common.net import join_host_port
from worker.split.lifetime import die_with_parent


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m worker.split.rpc_server", description=__doc__)
    parser.add_argument("--listen", required=True, help="HOST:PORT for the head; port 0 = any")
    parser.add_argument("--allow", action="append", required=True, help="head IP; repeatable")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--ready-fd", type=int, required=True)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    die_with_parent()
    logging.basicConfig(level=logging.INFO, format="rpc-server: %(levelname)s %(message)s")
    # ggml prints a banner and a line per connection to C stdout (the head opens several
    # while loading); the worker's log gets the filter's refusals and ggml's errors instead.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    from worker.llamacpp import ensure_backend, rpc
    from worker.split.peer_filter import PeerFilter

    ensure_backend()
    host, _, port = args.listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.bind((host, int(port)))
    listener.listen(8)
    inner = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    inner.bind(("127.0.0.1", 0))
    inner_port = inner.getsockname()[1]
    inner.close()  # ggml binds it itself; a port freed a moment ago is free in practice

    device = rpc.lendable_device()
    threading.Thread(
        target=rpc.serve,
        args=(f"127.0.0.1:{inner_port}", device, args.threads),
        name="ggml-rpc",
        daemon=True,
    ).start()
    ready = {
        "endpoint": join_host_port(host, listener.getsockname()[1]),
        "device": device.name,
        "memory_free": device.memory_free,
        "memory_total": device.memory_total,
    }
    with os.fdopen(args.ready_fd, "w") as out:
        out.write(json.dumps(ready) + "\n")
    PeerFilter(listener, ("127.0.0.1", inner_port), frozenset(args.allow)).serve_forever()
    return 0


if __name__ == "__main__":
    # ggml's server thread never returns: exit without waiting for it.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    sys.exit(main())
