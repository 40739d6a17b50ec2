"""The worker's HTTP server: Prometheus metrics, and its store files for its peers.

`/metrics`: this node's telemetry, capability and model load. `/v1/store/files/<sha256>`
(GET and HEAD, with byte ranges): the verified files of its store dir, for peers fetching a
store model (worker.models.fetch), only with the cluster join token as a Bearer token; a
worker without a join token serves no files.

A WSGI server on threads (prometheus-client's), on the worker's host (loopback unless
configured), so neither scraping nor serving a file touches the gRPC event loop. The
metrics registry is private to the worker: no process-global collectors end up twice.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from common.hardware import HardwareInfo
from common.net import join_host_port
from common.prometheus import (
    MetricSet,
    add_models,
    add_node_facts,
    add_node_sample,
)
from common.settings import ConfigError
from worker.models.estimate import MemoryBudget
from worker.models.fetch import CHUNK_BYTES, FILES_PATH, StoreDir
from worker.models.registry import ModelRegistry
from worker.telemetry.sampler import TelemetrySampler

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
_FILE_PATH = re.compile(r"^" + re.escape(FILES_PATH) + r"([0-9a-f]{64})$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class WorkerCollector(Collector):
    def __init__(
        self,
        sampler: TelemetrySampler,
        registry: ModelRegistry,
        budget: MemoryBudget,
        hardware: Callable[[], HardwareInfo],
    ) -> None:
        self._sampler = sampler
        self._registry = registry
        self._budget = budget
        self._hardware = hardware

    def collect(self) -> Iterator[Metric]:
        metrics = MetricSet()
        sample = self._sampler.latest
        if sample is not None:
            add_node_sample(metrics, sample)
        add_node_facts(metrics, self._hardware(), max(0, self._budget.free_bytes()))
        add_models(metrics, self._registry.list())
        return metrics.families()


class StoreFiles:
    """WSGI app serving the store dir's verified files to peers that hold the join token."""

    def __init__(self, store: StoreDir, token: str | None) -> None:
        self._store = store
        self._token = token.encode() if token else None

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            return _error(start_response, "405 Method Not Allowed", "use GET or HEAD", "method")
        problem = self._refusal(environ.get("HTTP_AUTHORIZATION", ""))
        if problem is not None:
            return _error(start_response, "401 Unauthorized", problem, "invalid_token")
        match = _FILE_PATH.match(environ.get("PATH_INFO", ""))
        path = self._store.verified(match.group(1)) if match else None
        if path is None:
            return _error(start_response, "404 Not Found", "no such file here", "not_found")
        try:
            held = path.open("rb")
            size = os.fstat(held.fileno()).st_size
        except OSError:  # deleted to make room since: as if never here
            return _error(start_response, "404 Not Found", "no such file here", "not_found")
        span = _byte_range(environ.get("HTTP_RANGE"), size)
        if span is None:
            held.close()
            start_response("416 Range Not Satisfiable", [("Content-Range", f"bytes */{size}")])
            return []
        first, last = span
        headers = [("Content-Type", "application/octet-stream"), ("Accept-Ranges", "bytes"),
                   ("Content-Length", str(last - first + 1))]  # fmt: skip
        status = "200 OK"
        if environ.get("HTTP_RANGE"):
            status = "206 Partial Content"
            headers.append(("Content-Range", f"bytes {first}-{last}/{size}"))
        start_response(status, headers)
        if method == "HEAD":
            held.close()
            return []
        return _file_body(held, first, last - first + 1)

    def _refusal(self, authorization: str) -> str | None:
        if self._token is None:
            return "this worker has no cluster join token, so it serves no files"
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() != "bearer" or not given:
            return "send the cluster join token: Authorization: Bearer <token>"
        if not hmac.compare_digest(given.strip().encode(), self._token):
            return "wrong cluster join token"
        return None


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The first and last byte a Range header asks for (`bytes=N-` or `bytes=N-M`; the
    whole file without one); None when it cannot be served."""
    if not header:
        return (0, size - 1) if size else None
    match = _RANGE.match(header.strip())
    if match is None:
        return None
    first = int(match.group(1))
    last = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
    return (first, last) if first < size and first <= last else None


def _file_body(held: Any, offset: int, length: int) -> Iterator[bytes]:
    with held:
        held.seek(offset)
        while length > 0:
            chunk = held.read(min(CHUNK_BYTES, length))
            if not chunk:
                return
            length -= len(chunk)
            yield chunk


def _error(start_response: StartResponse, status: str, message: str, code: str) -> list[bytes]:
    body = json.dumps({"error": {"message": message, "code": code}}).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body)))])  # fmt: skip
    return [body]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Each scrape and file range is not worth a log line."""


class MetricsServer:
    """The worker's HTTP server: /metrics from `collector`, and /v1/store/files from
    `files` when given."""

    def __init__(self, collector: Collector, files: StoreFiles | None = None) -> None:
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(collector)
        self._metrics = make_wsgi_app(self._registry)
        self._files = files
        self._server: WSGIServer | None = None
        self.port = 0

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if self._files is not None and environ.get("PATH_INFO", "").startswith(FILES_PATH):
            return self._files(environ, start_response)
        return self._metrics(environ, start_response)  # type: ignore[no-any-return]

    def start(self, host: str, port: int) -> int:
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]

            class Server(ThreadingWSGIServer):
                address_family = family

            self._server = make_server(host, port, self._app, Server, handler_class=_QuietHandler)
            threading.Thread(target=self._server.serve_forever, daemon=True).start()
        except OSError as exc:
            raise ConfigError(
                f"cannot serve /metrics on {join_host_port(host, port)}: {exc.strerror}; "
                "set metrics_port, or --no-metrics"
            ) from exc
        self.port = int(self._server.server_port)
        log.info("metrics at http://%s/metrics", join_host_port(host, self.port))
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
