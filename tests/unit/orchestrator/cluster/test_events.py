"""Two snapshots into the events a person reads: every kind, with its level and message."""

from __future__ import annotations

from common.memory import MemoryEstimate
from common.status import ModelState
from orchestrator.cluster.events import ClusterEvent, diff
from orchestrator.cluster.types import ClusterSnapshot, Node, PlacementProblem, Refusal
from tests.unit.orchestrator.factories import lease, node, replica, rpc_node


def snap(
    *nodes: Node, problems: tuple[PlacementProblem, ...] = (), refusals: tuple[Refusal, ...] = ()
) -> ClusterSnapshot:
    return ClusterSnapshot(1, 0.0, nodes, problems, refusals)


def kinds(events: list[ClusterEvent]) -> list[str]:
    return [e.kind for e in events]


def test_nothing_changed_is_no_event() -> None:
    cluster = snap(node("w1", replica("gemma")), problems=(PlacementProblem("x", "why"),))
    assert diff(cluster, cluster) == []


def test_a_node_joining_with_its_models() -> None:
    (joined, ready) = diff(snap(), snap(node("w1", replica("gemma"))))
    assert joined == ClusterEvent(
        "node_joined", "info", "w1", None, "w1 joined (x86-cpu, w1:50051, 1 model)"
    )
    assert ready == ClusterEvent("model_ready", "info", "w1", "gemma", "gemma is ready on w1")


def test_a_node_down_with_its_reason_then_back() -> None:
    up = snap(node("w2"))
    down = snap(node("w2", up=False, down_reason="no heartbeat for 3.1 s"))
    assert diff(up, down) == [
        ClusterEvent("node_down", "warning", "w2", None, "w2 is down: no heartbeat for 3.1 s")
    ]
    assert diff(down, up) == [ClusterEvent("node_back", "info", "w2", None, "w2 is back")]


def test_a_forgotten_node_is_one_event_not_one_per_model() -> None:
    down = snap(node("w2", replica("gemma"), up=False, down_reason="heartbeat stream closed"))
    (forgotten,) = diff(down, snap())
    assert forgotten.kind == "node_forgotten" and forgotten.node == "w2"
    assert "heartbeat stream closed" in forgotten.message


def test_model_states_each_have_their_event() -> None:
    expected = {
        ModelState.LOADING: ("model_loading", "info", "gemma is loading on w1"),
        ModelState.DOWNLOADING: ("model_downloading", "info", "gemma is downloading to w1"),
        ModelState.READY: ("model_ready", "info", "gemma is ready on w1"),
        ModelState.DRAINING: ("model_draining", "info", "gemma is draining on w1"),
    }
    for state, (kind, level, message) in expected.items():
        other = ModelState.UNLOADING
        events = diff(
            snap(node("w1", replica("gemma", other))), snap(node("w1", replica("gemma", state)))
        )
        assert events == [ClusterEvent(kind, level, "w1", "gemma", message)], state
    unloading = snap(node("w1", replica("gemma", ModelState.UNLOADING)))
    assert diff(snap(node("w1", replica("gemma"))), unloading) == [], "only its end counts"


def test_a_failed_model_says_why_and_again_when_the_reason_changes() -> None:
    loading = snap(node("w1", replica("gemma", ModelState.LOADING)))
    oom = snap(node("w1", replica("gemma", ModelState.FAILED, error="out of memory (needs 3 GiB)")))
    assert diff(loading, oom) == [
        ClusterEvent(
            "model_failed",
            "error",
            "w1",
            "gemma",
            "gemma failed on w1: out of memory (needs 3 GiB)",
        )
    ]
    other = snap(node("w1", replica("gemma", ModelState.FAILED, error="file is corrupt")))
    assert kinds(diff(oom, other)) == ["model_failed"]
    assert diff(oom, oom) == []


def test_an_unloaded_model() -> None:
    assert diff(snap(node("w1", replica("gemma"))), snap(node("w1"))) == [
        ClusterEvent("model_unloaded", "info", "w1", "gemma", "gemma was unloaded from w1")
    ]


def split_cluster(n_layers: int, servers: tuple[str, ...]) -> ClusterSnapshot:
    estimate = MemoryEstimate(0, 0, 0, n_layers=n_layers) if n_layers else None
    head = replica("gemma-split", rpc_servers=servers, n_gpu_layers=n_layers // 2 or 9,
                   tensor_split=(1.0,) * len(servers), estimate=estimate)  # fmt: skip
    lenders = [rpc_node(f"host{i + 1}", leases=(lease("gemma-split", "host0", s),))
               for i, s in enumerate(servers)]  # fmt: skip
    return snap(rpc_node("host0", head), *lenders)


def without_model_events(events: list[ClusterEvent]) -> list[ClusterEvent]:
    return [e for e in events if not e.kind.startswith(("model_", "node_"))]


def test_a_split_planned_names_its_nodes_and_layers() -> None:
    (planned,) = without_model_events(diff(snap(), split_cluster(18, ("10.0.0.3:50070",))))
    assert planned == ClusterEvent(
        "split_planned", "info", "host0", "gemma-split",
        "gemma-split on host0 (layers 0-8), host1 (layers 9-17)",
    )  # fmt: skip


def test_a_split_over_other_nodes_is_planned_again() -> None:
    before = split_cluster(18, ("10.0.0.3:50070",))
    after = split_cluster(18, ("10.0.0.3:50070", "10.0.0.4:50070"))
    (planned,) = without_model_events(diff(before, after))
    assert planned.message == (
        "gemma-split on host0 (layers 0-8), host1 (layers 9-13), host2 (layers 14-17)"
    )


def test_a_split_is_announced_once_its_layer_ranges_are_known() -> None:
    # The head reports the count only once it has read the file: nothing before, then the
    # plan with its ranges, then nothing while it stays the same.
    unknown = split_cluster(0, ("10.0.0.3:50070",))
    known = split_cluster(18, ("10.0.0.3:50070",))
    assert without_model_events(diff(snap(), unknown)) == []
    (planned,) = without_model_events(diff(unknown, known))
    assert planned.message == "gemma-split on host0 (layers 0-8), host1 (layers 9-17)"
    assert without_model_events(diff(known, known)) == []


def test_placement_problems_and_their_resolution() -> None:
    problem = PlacementProblem("big", "needs 3.1 GiB, the largest node has 2.4 GiB")
    assert diff(snap(), snap(problems=(problem,))) == [
        ClusterEvent(
            "placement_problem",
            "warning",
            None,
            "big",
            "big not placed: needs 3.1 GiB, the largest node has 2.4 GiB",
        )
    ]
    assert diff(snap(problems=(problem,)), snap()) == [
        ClusterEvent("placement_resolved", "info", None, "big", "big can be placed again")
    ]


def refusal(
    seq: int, node_id: str = "w1", reason: str = "its node id is bound to another node key"
) -> Refusal:
    return Refusal(seq, 5.0, node_id, "ipv4:10.0.0.7:53122", reason)


def test_each_new_refusal_is_one_event_and_older_ones_are_not_repeated() -> None:
    before = snap(refusals=(refusal(1),))
    after = snap(refusals=(refusal(1), refusal(2), refusal(3, "", "it sent no node key")))
    assert diff(before, after) == [
        ClusterEvent(
            "registration_refused", "warning", "w1", None,
            "registration refused for node id w1 from ipv4:10.0.0.7:53122: "
            "its node id is bound to another node key",
        ),
        ClusterEvent(
            "registration_refused", "warning", None, None,
            "registration refused for a worker from ipv4:10.0.0.7:53122: it sent no node key",
        ),
    ]  # fmt: skip


def test_a_restarted_registry_numbers_its_refusals_anew() -> None:
    before = snap(refusals=(refusal(7),))
    assert kinds(diff(before, snap(refusals=(refusal(1),)))) == ["registration_refused"]
