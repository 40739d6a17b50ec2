"""Optional mutual TLS end to end: `llamaherd certs`, a coordinator and a worker that use
them; the registry, placement's calls and the gateway-to-worker hop all run over TLS, and the
worker accepts no connection without a cluster certificate."""

from __future__ import annotations

import os
import subprocess

import grpc
import httpx
import pytest
from support.auth import cluster_token
from support.cluster import ready_replicas, start_coordinator, wait_for
from support.worker_process import LLAMAHERD, free_port

from common.cluster_secrets import TlsFiles
from worker.api.client import WorkerClient

CATALOG = [{"alias": "gemma", "path": "builtin:gemma-3-270m", "replicas": 1, "n_ctx": 512,
            "n_batch": 128, "n_threads": 1}]  # fmt: skip


def _tls_args(folder, name):
    return ["--tls-ca", str(folder / "ca.crt"), "--tls-cert", str(folder / f"{name}.crt"),
            "--tls-key", str(folder / f"{name}.key")]  # fmt: skip


def test_a_cluster_over_mutual_tls_serves_and_its_worker_refuses_strangers(tmp_path):
    pki = tmp_path / "tls"
    for args in (["init"], ["issue", "coordinator"], ["issue", "worker-t"]):
        subprocess.run([LLAMAHERD, "certs", "--dir", str(pki), *args], check=True, timeout=30)
    coordinator = start_coordinator(tmp_path, CATALOG, *_tls_args(pki, "coordinator"))
    port = free_port()
    log = (tmp_path / "worker-t.log").open("wb")
    worker = subprocess.Popen(
        [LLAMAHERD, "worker", "--port", str(port), "--coordinator", coordinator.registry,
         "--node-id", "worker-t", "--heartbeat-interval-s", "0.5", "--no-metrics",
         "--no-reference-speed", *_tls_args(pki, "worker-t")],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ},
    )  # fmt: skip
    try:
        wait_for(
            lambda: ready_replicas(coordinator).get("gemma") == {"worker-t"},
            120,
            "the model placed over TLS",
        )
        reply = httpx.post(
            f"{coordinator.base_url}/completions",
            json={"model": "gemma", "prompt": "Once upon a time", "max_tokens": 4},
            timeout=60,
        )
        assert reply.status_code == 200, reply.text
        assert reply.headers["x-llamaherd-node"] == "worker-t"

        address = f"127.0.0.1:{port}"
        # The token alone is not enough: no cluster certificate, no connection.
        with WorkerClient(address, timeout=5, token=cluster_token()) as stranger:
            with pytest.raises(grpc.RpcError) as refused:
                stranger.list_models()
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        tls = TlsFiles.load(pki / "ca.crt", pki / "coordinator.crt", pki / "coordinator.key")
        with WorkerClient(address, timeout=5, token=cluster_token(), tls=tls) as member:
            assert [m.alias for m in member.list_models()] == ["gemma"]
    finally:
        worker.terminate()
        worker.wait(30)
        log.close()
        assert coordinator.stop() == 0, coordinator.log_tail()
