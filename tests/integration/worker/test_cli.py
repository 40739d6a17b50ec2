"""The command line as a user meets it: `llamaherd worker` with no configuration serves the
embedded model (what `make run` does), and `llamaherd generate` streams from it."""

from __future__ import annotations

import socket
import subprocess

from support.worker_process import LLAMAHERD, start_worker


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LLAMAHERD, *args], capture_output=True, text=True, timeout=timeout)


def test_default_worker_serves_gemma_and_generate_streams_from_it(tmp_path):
    worker = start_worker(tmp_path, None, name="default")
    try:
        listed = _run("models", "--worker", worker.address)
        assert listed.returncode == 0, listed.stderr
        assert "gemma-3-270m" in listed.stdout
        assert "ready" in listed.stdout

        out = _run(
            "generate",
            "--worker",
            worker.address,
            "--temperature",
            "0",
            "--max-tokens",
            "12",
            "Once upon a time",
        )
        assert out.returncode == 0, out.stderr
        assert len(out.stdout.strip()) > 10
        assert "[12 tokens, length" in out.stderr
    finally:
        assert worker.stop() == 0
    assert "worker stopped" in worker.log_tail()


def test_generate_against_no_worker_says_what_to_do():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = _run("generate", "--worker", f"127.0.0.1:{port}", "--model", "m", "hi", timeout=60)
    assert out.returncode == 1
    assert "UNAVAILABLE" in out.stderr
    assert "make run" in out.stderr


def test_invalid_config_exits_with_the_problem(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("port: 99999\nmodels:\n  - alias: x\n    pth: /nowhere.gguf\n")
    out = _run("worker", "--config", str(config), timeout=60)
    assert out.returncode == 2
    assert "port" in out.stderr
    assert "models.0.path" in out.stderr  # the missing field
    assert "pth" in out.stderr  # and the misspelt one


def test_port_in_use_exits_with_the_problem():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = _run("worker", "--port", str(port), timeout=60)
    assert out.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr


def test_second_worker_on_the_same_port_is_refused(tmp_path):
    first = start_worker(
        tmp_path,
        {"models": [{"alias": "a", "path": "builtin:gemma-3-270m", "n_ctx": 256}]},
        name="first",
    )
    try:
        port = first.address.rsplit(":", 1)[1]
        out = _run("worker", "--port", port, timeout=60)
        assert out.returncode == 2
        assert f"cannot listen on 127.0.0.1:{port}" in out.stderr
    finally:
        assert first.stop() == 0


def test_help_for_every_command():
    for args in ([], ["worker"], ["generate"], ["models"]):
        out = _run(*args, "--help", timeout=60)
        assert out.returncode == 0
        assert "usage: llamaherd" in out.stdout
