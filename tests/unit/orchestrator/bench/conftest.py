"""A small OpenAI-compatible endpoint on loopback (stdlib http.server), standing in for the
server under test: it lists models, counts prompt tokens as one per word plus a BOS, and
streams `max_tokens` one-token chunks with llamaherd's node header."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": m} for m in self.server.models]})
        elif self.path == "/v1/cluster" and self.server.cluster is not None:
            self._json(200, self.server.cluster)
        else:
            self._json(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.server.bodies.append(body)
        if self.server.refuse:
            self._json(429, {"error": {"message": "busy"}})
            return
        if "messages" in body:  # one token per word and 2 per message, plus a BOS
            text = " ".join(m["content"] for m in body["messages"])
            prompt_tokens = len(text.split()) + 2 * len(body["messages"]) + 1
        else:
            prompt_tokens = len(body["prompt"].split()) + 1
        n = body["max_tokens"]
        chunk = {"delta": {"content": " word"}} if "messages" in body else {"text": " word"}
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": n}
        if not body.get("stream"):
            self._json(200, {"choices": [{"text": "x"}], "usage": usage})
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("x-llamaherd-node", f"node-{len(self.server.bodies) % 2}")
        self.end_headers()
        for _ in range(n):
            time.sleep(self.server.token_s)
            self.wfile.write(f"data: {json.dumps({'choices': [chunk]})}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    models: tuple[str, ...] = ("gemma", "other")
    token_s = 0.002
    refuse = False
    cluster: object = None  # the /v1/cluster document; None: 404, as a peer answers

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.bodies: list[dict[str, object]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


@pytest.fixture
def endpoint() -> Iterator[_Server]:
    server = _Server()
    # a short poll interval: shutdown() waits for one, at every test's teardown
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
