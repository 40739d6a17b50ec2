"""`llamaherd coordinator` and `llamaherd up`: the control plane, and a whole local cluster.

`up` is the main job: a local Ray, the coordinator (registry, placement, gateway) and N
worker processes that register with it and get the default model placed on them. It prints
the URLs, watches the workers, and stops everything on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from common.cluster_secrets import TOKEN_ENV, read_token_file, refuse_token_flag
from common.settings import ConfigError, add_settings_flags
from orchestrator.config import (
    CoordinatorSettings,
    build_coordinator_settings,
    default_catalog,
    with_cluster_token,
)

log = logging.getLogger("llamaherd")

READY_TIMEOUT_S = 600.0
SUPERVISE_EVERY_S = 5.0


def add_coordinator_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "coordinator",
        help="run the control plane: worker registry, placement and the API gateways",
        description="Run the coordinator on Ray (a local Ray unless --ray-address): the "
        "registry workers heartbeat to, the placement controller that loads the catalog's "
        "models onto workers, and the gateways serving the OpenAI HTTP API and the gRPC "
        "Inference API.",
    )
    _add_common(parser)
    parser.set_defaults(run=run_coordinator)


def add_up_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "up",
        help="start a local cluster: Ray, the coordinator, gateways and worker processes",
        description="Start a whole cluster on this machine: a local Ray, the coordinator, "
        "the gateway on http://127.0.0.1:8000/v1 and worker processes serving the default "
        "Gemma model (or the config's catalog). Ctrl-C stops everything.",
    )
    _add_common(parser)
    parser.add_argument(
        "--workers", type=int, default=2, help="worker processes to start (default: 2)"
    )
    parser.add_argument(
        "--log-dir", type=Path, default=Path("~/.cache/llamaherd/up"),
        help="where the workers' logs go (default: ~/.cache/llamaherd/up)",
    )  # fmt: skip
    parser.set_defaults(run=run_up)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, help="YAML or JSON settings, with the model catalog under models:"
    )
    # The join token never goes on a command line: it would show in ps and shell history.
    add_settings_flags(parser, CoordinatorSettings, skip={"models", "cluster_token"})
    refuse_token_flag(parser)


def _settings(args: argparse.Namespace, workers: int | None = None) -> CoordinatorSettings:
    overrides = {
        n: getattr(args, n, None) for n in CoordinatorSettings.model_fields if n != "models"
    }
    settings = build_coordinator_settings(args.config, overrides=overrides)
    if workers is not None and "models" not in settings.model_fields_set:
        # The default model on every worker, with the cores shared among them: two
        # llama.cpp processes each using every core would run slower than one.
        cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
        entry = default_catalog(replicas=workers)[0]
        threads = max(1, cores // workers)
        entry = entry.model_copy(update={"n_threads": threads, "n_ctx": 4096})
        settings = settings.model_copy(update={"models": (entry,)})
    return with_cluster_token(settings)


def _join_hint(settings: CoordinatorSettings, registry: str) -> str:
    """How a worker joins, naming where the token is, never the token itself."""
    command = f"llamaherd worker --coordinator {registry}"
    path = settings.cluster_token_file
    if path.exists() and settings.cluster_token == read_token_file(path):
        return (
            f"workers join with: {command} --cluster-token-file {settings.cluster_token_file}\n"
            f"  (copy that file to each worker machine, mode 0600, or set {TOKEN_ENV} "
            "to its content there)"
        )
    return f"workers join with: {TOKEN_ENV}=<this coordinator's token> {command}"


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")


class _StopSignal:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.install()

    def install(self) -> None:
        """(Re)claims SIGINT and SIGTERM: `ray.init` installs its own SIGTERM handler, which
        kills the process without stopping the workers or the gateways' ports."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.event.set())

    def wait(self, seconds: float) -> bool:
        return self.event.wait(seconds)


def run_coordinator(args: argparse.Namespace) -> int:
    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(f"llamaherd coordinator: {exc}", file=sys.stderr)
        return 2
    _configure_logging(settings.log_level)
    stop = _StopSignal()  # before importing Ray (a second): a SIGTERM then is a clean stop too
    from orchestrator.runtime import ControlPlane

    # Persistent: the gateways, the registry and placement outlive this process if it is
    # killed, and the next `llamaherd coordinator` adopts them; a clean stop ends them.
    plane = ControlPlane(settings, persistent=True)
    try:
        endpoints = plane.start()
        stop.install()
        if endpoints.adopted:
            print(f"adopted the running control plane: {', '.join(endpoints.adopted)}", flush=True)
        _print_endpoints(settings, endpoints.gateway_host, endpoints.http_port, endpoints.grpc_port)
        registry = f"{_reachable(settings.host)}:{endpoints.registry_port}"
        print(_join_hint(settings, registry), flush=True)
        while not stop.wait(SUPERVISE_EVERY_S):
            plane.supervise_once()
    except OSError as exc:
        print(f"llamaherd coordinator: {exc}", file=sys.stderr)
        return 1
    finally:
        plane.stop()
    return 0


def run_up(args: argparse.Namespace) -> int:
    if args.workers < 1:
        print("llamaherd up: --workers must be at least 1", file=sys.stderr)
        return 2
    try:
        settings = _settings(args, workers=args.workers)
    except ConfigError as exc:
        print(f"llamaherd up: {exc}", file=sys.stderr)
        return 2
    _configure_logging(settings.log_level)
    from orchestrator.runtime import ControlPlane

    stop = _StopSignal()
    plane = ControlPlane(settings)
    workers: list[WorkerProcess] = []
    node_keys: Path | None = None
    try:
        print("starting Ray and the coordinator ...", flush=True)
        endpoints = plane.start()
        stop.install()
        registry = f"{_reachable(settings.host)}:{endpoints.registry_port}"
        log_dir = args.log_dir.expanduser()
        log_dir.mkdir(parents=True, exist_ok=True)
        # The workers get the token through their environment (never their argv), and
        # node keys of this run only: a worker left over from an earlier run cannot pass
        # for one of these.
        node_keys = Path(tempfile.mkdtemp(prefix="llamaherd-node-keys-"))
        assert settings.cluster_token is not None  # _settings gave it one
        worker_env = {
            TOKEN_ENV: settings.cluster_token.get_secret_value(),
            "LLAMAHERD_NODE_KEY_DIR": str(node_keys),
        }
        for i in range(1, args.workers + 1):
            workers.append(
                WorkerProcess(f"worker-{i}", registry, log_dir, settings.log_level, worker_env)
            )
        print(f"started {len(workers)} workers (logs in {log_dir})", flush=True)
        print(_join_hint(settings, registry), flush=True)
        gateway = f"{_reachable(endpoints.gateway_host)}:{endpoints.grpc_port}"
        if not _wait_until_placed(settings, gateway, workers, stop):
            return 1
        _print_endpoints(settings, endpoints.gateway_host, endpoints.http_port, endpoints.grpc_port)
        print("press Ctrl-C to stop", flush=True)
        while not stop.wait(SUPERVISE_EVERY_S):
            for worker in workers:
                worker.report_exit()
            plane.supervise_once()
        print("stopping ...", flush=True)
    except OSError as exc:
        print(f"llamaherd up: {exc}", file=sys.stderr)
        return 1
    finally:
        for worker in workers:
            worker.stop()
        plane.stop()
        if node_keys is not None:
            shutil.rmtree(node_keys, ignore_errors=True)
    return 0


# worker.split.lifetime.DIE_WITH_PARENT_ENV (the control plane does not import the worker):
# a `python -m worker` child given our pid asks the kernel to kill it when we die.
DIE_WITH_PARENT_ENV = "LLAMAHERD_DIE_WITH_PARENT"


class WorkerProcess:
    """One `llamaherd worker` child, registered with the coordinator, logging to a file.

    It dies with this process, even a SIGKILLed one: a worker of a dead `up` would otherwise
    run on, retrying the dead registry forever."""

    def __init__(
        self,
        node_id: str,
        registry: str,
        log_dir: Path,
        log_level: str,
        env: dict[str, str] | None = None,
    ) -> None:
        self.node_id = node_id
        self.log_path = log_dir / f"{node_id}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - the child writes to it
        command = [
            sys.executable, "-m", "worker",
            "--port", "0", "--coordinator", registry, "--node-id", node_id,
            "--log-level", log_level,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            # the join token travels here, not in argv
            env={**os.environ, **(env or {}), DIE_WITH_PARENT_ENV: str(os.getpid())},
        )  # fmt: skip
        self._reported = False

    def report_exit(self) -> bool:
        code = self.process.poll()
        if code is not None and not self._reported:
            self._reported = True
            print(
                f"{self.node_id} exited with code {code}; the others keep serving "
                f"(log: {self.log_path})",
                file=sys.stderr,
                flush=True,
            )
        return code is not None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def _wait_until_placed(
    settings: CoordinatorSettings, gateway: str, workers: list[WorkerProcess], stop: _StopSignal
) -> bool:
    """Waits until every catalog model has its replicas, printing progress and problems."""
    from orchestrator.client import GatewayClient

    wanted = {m.alias: m.replicas for m in settings.models}
    shown = ""
    deadline = time.monotonic() + READY_TIMEOUT_S
    key = settings.api_key.get_secret_value() if settings.api_key else None
    with GatewayClient(gateway, timeout=5, api_key=key) as client:  # a keyed gateway needs it
        while not stop.wait(0.5):
            if all(w.report_exit() for w in workers):
                print("every worker exited; see their logs", file=sys.stderr)
                return False
            ready = client.ready_replicas()
            line = "models ready: " + ", ".join(
                f"{alias} {ready.get(alias, 0)}/{n}" for alias, n in wanted.items()
            )
            problems = client.placement_problems()
            if problems and len(ready) < len(wanted):
                line += "".join(f"\n  {alias}: {reason}" for alias, reason in problems)
            if line != shown:
                print(line, flush=True)
                shown = line
            if all(ready.get(alias, 0) >= n for alias, n in wanted.items()):
                return True
            if time.monotonic() > deadline:
                print("llamaherd up: gave up waiting for the models", file=sys.stderr)
                return False
    return False


def _reachable(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def _print_endpoints(
    settings: CoordinatorSettings, gateway_host: str, http_port: int, grpc_port: int
) -> None:
    """`gateway_host`: where this machine's gateway listens (Endpoints.gateway_host)."""
    host = _reachable(gateway_host)
    model = settings.models[0].alias if settings.models else "MODEL"
    body = json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "Hi"}], "stream": True}
    )
    lines = [""]
    if settings.dashboard:
        lines.append(f"Dashboard:             http://{host}:{http_port}/dashboard/")
    lines += [
        f"OpenAI-compatible API: http://{host}:{http_port}/v1",
        f"gRPC Inference API:    {host}:{grpc_port}",
        f"try:  curl -N http://{host}:{http_port}/v1/chat/completions "
        f"-H 'Content-Type: application/json' -d '{body}'",
        f"      llamaherd status --gateway {host}:{grpc_port}",
        f"      llamaherd chat --gateway {host}:{grpc_port} 'Hi'",
        "",
    ]
    print("\n".join(lines), flush=True)
