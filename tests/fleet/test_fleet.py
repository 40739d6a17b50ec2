"""Ansible converges three real systemd hosts over SSH into a cluster that serves; a second
run changes nothing; a rolling upgrade under light load loses no request.

The tests run in file order on one fleet (see conftest.py); each later one builds on the
state the earlier ones left, as an operator's successive runs would.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import shutil
import stat
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import yaml

from tests.fleet.conftest import ROOT, Fleet, PlaybookRun, _sha256

pytestmark = pytest.mark.timeout(2400)

WORKERS = ("pc", "jetson")
HOSTS = ("coord", *WORKERS)
UPGRADED_VERSION = "0.1.0+fleet.upgrade"
LLAMA_CPP_PIN = re.compile(r'"llama-cpp-python==([0-9.]+)"')
LLAMA_CPP_VERSION = LLAMA_CPP_PIN.findall((ROOT / "pyproject.toml").read_text())[0]
TOKEN_FILE = "/etc/llamaherd/cluster-token"  # on every host
LLAMAHERD = "/opt/llamaherd/venv/bin/llamaherd"


def _converged(fleet: Fleet) -> PlaybookRun:
    if "first" not in fleet.timings:
        run = fleet.playbook("site.yml")
        fleet.timings["first"] = run.seconds
        fleet.first_run = run  # type: ignore[attr-defined]
    return fleet.first_run  # type: ignore[attr-defined,no-any-return]


def _headers(fleet: Fleet) -> dict[str, str]:
    return {"Authorization": f"Bearer {fleet.api_key}"}


def _chat(fleet: Fleet, client: httpx.Client, content: str = "Hello") -> httpx.Response:
    return client.post(
        f"{fleet.gateway}/v1/chat/completions",
        headers=_headers(fleet),
        json={"model": "gemma-3-270m", "max_tokens": 8, "temperature": 0,
              "messages": [{"role": "user", "content": content}]},
        timeout=120,
    )  # fmt: skip


def test_first_converge_succeeds_on_every_host(fleet: Fleet) -> None:
    run = _converged(fleet)
    assert run.rc == 0, run.output[-6000:]
    assert set(run.recap) >= {"coord", "pc", "jetson", "localhost"}
    assert all(c["failed"] == 0 and c["unreachable"] == 0 for c in run.recap.values())


def test_units_are_active_and_enabled(fleet: Fleet) -> None:
    _converged(fleet)
    units = {"coord": "llamaherd-coordinator", "pc": "llamaherd-worker",
             "jetson": "llamaherd-worker"}  # fmt: skip
    for host, unit in units.items():
        result = fleet.ssh(host, f"systemctl is-active {unit}; systemctl is-enabled {unit}")
        assert result.stdout.split() == ["active", "enabled"], (host, result)


def test_every_worker_is_healthy_and_listed_by_the_coordinator(fleet: Fleet) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    _converged(fleet)
    for host in WORKERS:
        with grpc.insecure_channel(f"{fleet.machines[host].address}:50051") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, host
    # site.yml waited until the coordinator listed each node. Once (CI, 2026-11-30) the
    # jetson node was missing from /v1/cluster a second later: wait for it, and print the
    # journals whenever a node was missing, to find out why.
    seen_missing: set[str] = set()
    deadline = time.monotonic() + 60
    while missing := _unlisted(fleet):
        seen_missing.update(missing)
        if time.monotonic() > deadline:
            break
        time.sleep(1)
    if seen_missing:
        print("nodes missing from /v1/cluster after site.yml:", sorted(seen_missing))
        print(_journal(fleet, "coord", "llamaherd-coordinator"))
        for host in sorted(seen_missing):
            print(_journal(fleet, host, "llamaherd-worker"))
    assert not missing, missing


def _unlisted(fleet: Fleet) -> list[str]:
    """The worker hosts /v1/cluster does not list now."""
    cluster = httpx.get(f"{fleet.gateway}/v1/cluster", headers=_headers(fleet), timeout=10)
    assert cluster.status_code == 200
    text = cluster.text
    return [h for h in WORKERS if f'"{h}"' not in text or fleet.machines[h].address not in text]


def _journal(fleet: Fleet, host: str, unit: str) -> str:
    """The unit's latest log lines on the host, for a failure's message."""
    return fleet.ssh(host, f"journalctl -u {unit} -n 60 --no-pager").stdout


def test_a_chat_completion_through_the_gateway_is_served_by_a_worker_host(fleet: Fleet) -> None:
    _converged(fleet)
    with httpx.Client() as client:
        deadline = time.monotonic() + 240
        while True:  # placement loads the catalog's replicas after the workers register
            response = _chat(fleet, client)
            if response.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"]
        assert response.headers["x-llamaherd-node"] in WORKERS
        refused = client.post(f"{fleet.gateway}/v1/chat/completions", json={}, timeout=10)
        assert refused.status_code == 401  # the API key from the vault is enforced


def test_the_api_key_stays_secret(fleet: Fleet) -> None:
    run = _converged(fleet)
    assert fleet.api_key not in run.output
    mode = fleet.ssh("coord", "stat -c '%a %U' /etc/llamaherd/coordinator.env")
    assert mode.stdout.split() == ["600", "root"]
    for host in ("coord", *WORKERS):
        logs = fleet.ssh(host, "journalctl -q --no-pager -u 'llamaherd-*'")
        assert fleet.api_key not in logs.stdout


def _token_store(fleet: Fleet) -> Path:
    """Where the roles generate the join token when the inventory sets none."""
    return fleet.workdir / "inventory/credentials/llamaherd-cluster-token"


def _digest(token: str) -> str:
    return hashlib.sha256(f"{token}\n".encode()).hexdigest()  # as the roles write it


def _check_token_on_hosts(fleet: Fleet, token: str) -> None:
    """Every host has `token` in a 0600 file of the service user's, and no journal line of
    a llamaherd unit shows it."""
    for host in HOSTS:
        state = fleet.ssh(host, f"stat -c '%a %U %G' {TOKEN_FILE}; sha256sum {TOKEN_FILE}")
        lines = state.stdout.splitlines()
        assert lines[0] == "600 llamaherd llamaherd", (host, state)
        assert lines[1].split()[0] == _digest(token), host  # never the token in a message
        logs = fleet.ssh(host, "journalctl -q --no-pager -u 'llamaherd-*'")
        assert logs.returncode == 0 and "Started" in logs.stdout, (host, logs.stderr)
        assert logs.stdout.count(token) == 0, host


def test_one_cluster_token_is_generated_and_reaches_every_host_privately(fleet: Fleet) -> None:
    run = _converged(fleet)
    store = _token_store(fleet)  # generated once on the control machine, 0600 in a 0700 folder
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.parent.stat().st_mode) == 0o700
    token = store.read_text().strip()
    assert re.fullmatch(r"[A-Za-z0-9]{43}", token)
    assert token not in run.output
    _check_token_on_hosts(fleet, token)
    coordinator = yaml.safe_load(fleet.ssh("coord", "cat /etc/llamaherd/coordinator.yaml").stdout)
    assert coordinator["cluster_token_file"] == TOKEN_FILE
    for host in WORKERS:
        config = yaml.safe_load(fleet.ssh(host, "cat /etc/llamaherd/worker.yaml").stdout)
        assert config["cluster_token_file"] == TOKEN_FILE
        env = fleet.ssh(host, "cat /etc/llamaherd/worker.env").stdout
        assert token not in env
        # The node key the worker registered with, in the unit's StateDirectory.
        key = fleet.ssh(host, f"stat -c '%a %U' /var/lib/llamaherd/node-keys "
                              f"/var/lib/llamaherd/node-keys/{host}")  # fmt: skip
        assert key.stdout.splitlines() == ["700 llamaherd", "600 llamaherd"], (host, key)


def test_the_worker_api_requires_the_cluster_token(fleet: Fleet) -> None:
    _converged(fleet)
    for host in WORKERS:
        worker = f"{fleet.machines[host].address}:50051"
        refused = fleet.ssh("coord", f"{LLAMAHERD} models --worker {worker}")
        assert refused.returncode != 0, (host, refused)
        assert "requires the join token" in refused.stderr + refused.stdout, (host, refused)
        served = fleet.ssh(
            "coord", f"{LLAMAHERD} models --worker {worker} --cluster-token-file {TOKEN_FILE}"
        )
        assert served.returncode == 0, (host, served)


def test_the_jetson_branch_ran_on_the_jetson_host(fleet: Fleet) -> None:
    run = _converged(fleet)
    assert "L4T R36.4.3 (JetPack 6.2 or newer)" in run.output
    assert "skipping the CUDA build" in run.output
    state = fleet.ssh(
        "jetson",
        "cat /var/lib/nvpmodel.mode; test -f /var/lib/jetson_clocks.pinned && echo pinned; "
        "grep -c cuda-12.6 /etc/profile.d/cuda.sh; id -nG llamaherd",
    )
    lines = state.stdout.split("\n")
    assert lines[:3] == ["0", "pinned", "2"], state
    assert "jtop" in lines[3].split()
    versions = fleet.ssh(
        "jetson",
        "/opt/jetson-stats/bin/pip show jetson-stats | grep ^Version; "
        "/opt/llamaherd/venv/bin/pip show jetson-stats | grep ^Version",
    )
    service, client = versions.stdout.split("\n")[:2]
    assert service == client == "Version: 4.3.2"
    pc = fleet.ssh("pc", "test -e /etc/profile.d/cuda.sh || echo absent")
    assert pc.stdout.strip() == "absent"


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_llama_cpp_is_built_once_on_the_first_host_of_its_kind(fleet: Fleet) -> None:
    run = _converged(fleet)
    # What the stand-in Jetson is: a CUDA kind (it has /etc/nv_tegra_release) without a CUDA
    # toolkit, so the CPU build for its architecture, with the reason.
    probe = fleet.ssh(
        "jetson",
        f"LLAMAHERD_LLAMA_CPP_VERSION={LLAMA_CPP_VERSION} LLAMAHERD_CUDA=if-available "
        "LLAMAHERD_CACHE=/nonexistent /opt/llamaherd/build/build-wheel.sh --kind",
    )
    assert probe.returncode == 0, probe
    kind = dict(line.split("=", 1) for line in probe.stdout.splitlines())["kind"]
    assert kind.startswith("x86_64-cpu-"), probe.stdout
    assert "Jetson (L4T R36 (release), REVISION: 4.3)" in probe.stderr
    assert "skipping the CUDA build, building for the CPU instead" in _flat(probe.stderr)
    # Each host's kind is resolved and reported; the control machine builds nothing (it
    # stands for a laptop); one host, the first of the kind, hands its build over.
    output = _flat(run.output)
    for host in HOSTS:
        report = re.search(rf"{host}: llama-cpp-python kind (\S+) [^\"]*", output)
        assert report is not None, host
        assert report[1] == kind and "built once on coord and fetched" in report[0], report[0]
        if host == "jetson":
            assert "skipping the CUDA build, building for the CPU instead" in report[0]
    assert output.count("the wheelhouse has no llama-cpp-python for kind") == 1
    assert "Compile llama-cpp-python on the control machine" not in output
    # The wheelhouse holds that one wheel, and every host installed exactly it.
    wheels = sorted((fleet.cache / "wheelhouse").glob("deps-*/llama-cpp/*/llama_cpp_python-*.whl"))
    assert [wheel.parent.name for wheel in wheels] == [kind]
    digest = _sha256(wheels[0])
    for host in HOSTS:
        installed = fleet.ssh(host, "sha256sum /opt/llamaherd/llama_cpp_python-*.whl")
        assert installed.stdout.split()[:1] == [digest], (host, installed)


def test_the_model_file_arrived_with_its_checksum(fleet: Fleet) -> None:
    _converged(fleet)
    for host in WORKERS:
        digest = fleet.ssh(host, "sha256sum /var/lib/llamaherd/models/gemma-3-270m-q4_k_m.gguf")
        assert digest.returncode == 0 and len(digest.stdout.split()[0]) == 64


def test_a_second_converge_changes_nothing(fleet: Fleet) -> None:
    _converged(fleet)
    run = fleet.playbook("site.yml")
    fleet.timings["second"] = run.seconds
    assert run.rc == 0, run.output[-6000:]
    assert run.changed() == dict.fromkeys(run.recap, 0), run.output[-8000:]
    output = _flat(run.output)
    assert output.count("already in the wheelhouse") == len(HOSTS)  # nothing built again
    assert "the wheelhouse has no llama-cpp-python" not in output


def _upgraded_source(tmp: Path) -> Path:
    """This tree with another version number: what a release would bring."""
    source = tmp / "llamaherd-next"
    for name in ("common", "worker", "orchestrator", "protos", "deploy"):
        shutil.copytree(ROOT / name, source / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*_pb2*"))  # fmt: skip
    for name in ("setup.py", "README.md"):
        shutil.copy(ROOT / name, source / name)
    pyproject = (ROOT / "pyproject.toml").read_text()
    (source / "pyproject.toml").write_text(
        pyproject.replace('version = "0.1.0"', f'version = "{UPGRADED_VERSION}"', 1)
    )
    return source


def test_a_rolling_upgrade_under_light_load_loses_no_request(fleet: Fleet, tmp_path: Path) -> None:
    _converged(fleet)
    source = _upgraded_source(tmp_path)
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    stop = threading.Event()

    def load() -> None:  # about two requests a second in all, from two clients
        with httpx.Client() as client:
            while not stop.is_set():
                try:
                    response = _chat(fleet, client, "Count to three.")
                    outcomes[str(response.status_code)] += 1
                    if response.status_code != 200:
                        failures.append(f"{response.status_code}: {response.text[:300]}")
                except httpx.HTTPError as exc:
                    outcomes["error"] += 1
                    failures.append(repr(exc))
                stop.wait(1.0)

    clients = [threading.Thread(target=load, daemon=True) for _ in range(2)]
    for thread in clients:
        thread.start()
    try:
        run = fleet.playbook("upgrade.yml", "-e", f"llamaherd_wheelhouse_source={source}")
    finally:
        stop.set()
        for thread in clients:
            thread.join(150)
    fleet.timings["upgrade"] = run.seconds
    print(f"\nfleet timings (s): {fleet.timings}; requests during the upgrade: {dict(outcomes)}")
    assert run.rc == 0, run.output[-6000:]
    for host in WORKERS:
        version = fleet.ssh(host, "/opt/llamaherd/venv/bin/pip show llamaherd | grep ^Version")
        assert version.stdout.strip() == f"Version: {UPGRADED_VERSION}", host
    assert outcomes["200"] > 0
    assert failures == [], failures[:5]


def _serves(fleet: Fleet, timeout_s: float = 240) -> httpx.Response:
    """A chat completion, retried until placement has loaded the catalog again."""
    with httpx.Client() as client:
        deadline = time.monotonic() + timeout_s
        while True:
            response = _chat(fleet, client)
            if response.status_code == 200 or time.monotonic() > deadline:
                return response
            time.sleep(2)


def test_rotating_the_cluster_token_rewrites_it_and_restarts_the_services(fleet: Fleet) -> None:
    _converged(fleet)
    old = _token_store(fleet).read_text().strip()
    new = secrets.token_urlsafe(32)
    # As an operator would set it from the vault: through a file, never on a command line.
    extra = fleet.workdir / "rotate.yml"
    extra.write_text(yaml.safe_dump({"llamaherd_cluster_token": new}))
    extra.chmod(0o600)
    run = fleet.playbook("site.yml", "-e", f"@{extra}")
    fleet.timings["rotate"] = run.seconds
    print(f"\nfleet timings (s): {fleet.timings}")
    assert run.rc == 0, run.output[-6000:]
    assert new not in run.output and old not in run.output
    assert all(run.recap[host]["changed"] > 0 for host in HOSTS), run.recap
    assert "RUNNING HANDLER [llamaherd_coordinator : Restart the coordinator]" in run.output
    assert "RUNNING HANDLER [llamaherd_worker : Restart the worker]" in run.output
    _check_token_on_hosts(fleet, new)
    # The workers registered again with the new token (the role waited until the
    # coordinator listed each), the cluster serves, and the old token opens nothing.
    response = _serves(fleet)
    assert response.status_code == 200, response.text
    for host in WORKERS:
        worker = f"{fleet.machines[host].address}:50051"
        stale = fleet.ssh(
            "coord", f"LLAMAHERD_CLUSTER_TOKEN={old} {LLAMAHERD} models --worker {worker}"
        )
        assert stale.returncode != 0, (host, stale)
        assert "requires the join token" in stale.stderr + stale.stdout, (host, stale)
