"""`llamaherd coordinator` is the restartable control plane (issue 14, deliverable 5).

Under a small steady load (streaming and non-streaming requests through the gateway), with
two separate workers registered: kill -9 the coordinator, and no request fails, the gateway
keeps answering and both workers stay registered (its Ray head, the registry, placement and
the gateways are detached processes, not its children). A restart adopts all of it within
5 s, loads nothing again, and listens on loopback only, like the first one. Ray restarts a
crashed actor (the registry comes back empty and the workers re-register); a restart with
another catalog replaces the placement actor only. A clean stop (SIGTERM) leaves no process
of either behind.
"""

from __future__ import annotations

import contextlib
import json
import signal
import stat
import time
from pathlib import Path

import grpc
import psutil
import ray
from chaos.load import OK, Load
from support.cluster import Coordinator, ready_replicas, start_coordinator, start_node, wait_for
from support.models import GEMMA
from support.processes import describe, listeners, process_tree, wait_gone

from orchestrator.reaper import reap, session_processes

CATALOG = [
    {"alias": GEMMA, "path": "builtin:gemma-3-270m", "replicas": 2, "n_ctx": 512,
     "n_threads": 1},
]  # fmt: skip
# Another catalog: an entry with no replica, so that only placement has new settings.
CATALOG_MORE = [*CATALOG, {"alias": "spare", "path": "builtin:gemma-3-270m", "replicas": 0}]
ADOPTED_WITHIN_S = 5.0  # issue 14: resumes within 5 s of the restart
KILLED_FOR_S = 3.0  # the load runs this long with no coordinator at all
GONE_WITHIN_S = 15.0
ADOPTED = "adopted the running control plane"


def _loads(log: str) -> int:
    return log.count(f"model {GEMMA} ready")


def _session_dir(workdir: Path) -> Path:
    record = json.loads((workdir / "coordinator-state" / "ray.json").read_text())
    return Path(record["session_dir"])


def _plane(coordinator: Coordinator, session_dir: Path) -> list[psutil.Process]:
    """The coordinator's processes and its Ray head's (which are not its children)."""
    mine = process_tree(coordinator.process.pid) if coordinator.alive() else []
    ray_dir = Path(ray.__file__).parent
    return [*mine, *session_processes(session_dir, ray_dir, exclude=coordinator.process.pid)]


def _assert_loopback_only(processes: list[psutil.Process]) -> None:
    found = listeners(processes)
    exposed = [str(lst) for lst in found if not lst.loopback]
    assert not exposed, "listening beyond loopback:\n  " + "\n  ".join(exposed)
    assert len(found) >= 4, describe(processes)  # registry, gateway (2), Ray's own


def _actor_processes(session_dir: Path, classes: tuple[str, ...]) -> list[psutil.Process]:
    """The worker processes of the given actor classes (Ray names them ray::Class...)."""
    found = []
    for process in session_processes(session_dir, Path(ray.__file__).parent, exclude=0):
        with contextlib.suppress(psutil.Error):
            title = process.cmdline()[0]
            if any(title.startswith(f"ray::{name}") for name in classes):
                found.append(process)
    return found


def _ready_or_none(coordinator: Coordinator) -> set[str] | None:
    try:
        return ready_replicas(coordinator).get(GEMMA)
    except grpc.RpcError:  # the gateway is restarting
        return None


def _restart(
    workdir: Path, old: Coordinator, catalog: list, name: str
) -> tuple[Coordinator, float]:
    """Starts a coordinator on `old`'s ports; returns it and the seconds until it adopted
    the control plane (its gateway answers all along, so its health says nothing)."""
    began = time.monotonic()
    new = start_coordinator(workdir, catalog, ports=old.ports(), name=name)
    wait_for(lambda: ADOPTED in new.log_tail(lines=200), 30, f"{name} to adopt the plane")
    return new, time.monotonic() - began


def test_a_killed_coordinator_leaves_the_plane_serving_and_a_restart_adopts_it(tmp_path):
    coordinator = start_coordinator(tmp_path, CATALOG)
    session_dir = _session_dir(tmp_path)
    current = coordinator
    workers = {}
    load = None
    try:
        for name in ("worker-a", "worker-b"):
            workers[name] = start_node(tmp_path, coordinator, name)
        wait_for(lambda: ready_replicas(coordinator).get(GEMMA) == set(workers), 120,
                 "two replicas")  # fmt: skip
        _assert_loopback_only(_plane(coordinator, session_dir))
        state_dir = tmp_path / "coordinator-state"
        assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE((state_dir / "ray.json").stat().st_mode) == 0o600

        load = Load(f"http://127.0.0.1:{coordinator.http_port}", GEMMA, clients=3).start()
        time.sleep(1.0)
        coordinator.stop(signal.SIGKILL)
        time.sleep(KILLED_FOR_S)
        # Nothing noticed: the gateway answers, both workers are registered and READY.
        assert ready_replicas(coordinator).get(GEMMA) == set(workers)

        restarted, adopted_s = _restart(tmp_path, coordinator, CATALOG, "restarted")
        current = restarted
        print(f"killed coordinator's plane adopted {adopted_s:.1f} s after the restart")
        assert adopted_s < ADOPTED_WITHIN_S, restarted.log_tail()
        assert _session_dir(tmp_path) == session_dir  # the same Ray head, not a new one
        _assert_loopback_only(_plane(restarted, session_dir))
        time.sleep(1.0)
        outcomes = load.stop()
        load = None
        bad = [o for o in outcomes if o.kind != OK]
        assert len(outcomes) >= 6 and not bad, bad
        assert any(o.stream for o in outcomes) and not all(o.stream for o in outcomes)
        log = restarted.log_tail(lines=500)
        assert "cluster-state, placement, gateway-" in log, log

        # Ray restarts a crashed actor: the gateway serves again, the registry (empty) has
        # the workers back at their next heartbeat, and placement waits for them.
        crashed = _actor_processes(session_dir, ("ClusterStateActor", "GatewayActor"))
        assert len(crashed) == 2, describe(_plane(restarted, session_dir))
        for process in crashed:
            process.kill()
        assert not wait_gone(crashed, GONE_WITHIN_S), describe(crashed)
        wait_for(lambda: _ready_or_none(restarted) == set(workers), 30,
                 "the restarted actors with both workers")  # fmt: skip
        # Their logs reach the coordinator that adopted them (Ray's job filter is off).
        wait_for(lambda: "placement waits" in restarted.log_tail(lines=500), 10,
                 "placement to wait for the workers to rejoin the new registry")  # fmt: skip

        # Another catalog: placement is replaced, the registry and the gateway adopted.
        restarted.stop(signal.SIGKILL)
        changed, _ = _restart(tmp_path, restarted, CATALOG_MORE, "changed")
        current = changed
        log = changed.log_tail(lines=500)
        assert "replacing the actor placement: its settings changed" in log, log
        assert f"{ADOPTED}: cluster-state, gateway-" in log, log
        assert ready_replicas(changed).get(GEMMA) == set(workers)

        # No placement was lost: nothing was loaded again, on either side.
        time.sleep(2.0)
        for name, worker in workers.items():
            assert worker.alive(), f"{name} died:\n{worker.log_tail()}"
            assert _loads(worker.log_path.read_text(errors="replace")) == 1, worker.log_tail()
        for coordinator_log in (log, changed.log_tail(lines=500)):
            assert "loading gemma" not in coordinator_log, coordinator_log
            assert "unloading" not in coordinator_log, coordinator_log

        # A clean stop ends everything it owns: its own processes and the Ray head's.
        plane = _plane(changed, session_dir)
        assert changed.stop() == 0, changed.log_tail()
        left = wait_gone(plane, GONE_WITHIN_S)
        assert not left, f"left by a clean stop:\n{describe(left)}"
        assert not (tmp_path / "coordinator-state" / "ray.json").exists()
    finally:
        if load is not None:
            load.stop()
        for worker in workers.values():
            worker.stop()
        current.stop()
        coordinator.stop(signal.SIGKILL)
        reap(session_dir, Path(ray.__file__).parent)  # whatever a failed test left running
