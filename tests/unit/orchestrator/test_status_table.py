"""`llamaherd status` text for split models: which layers live where, what a node lends.

The cluster is built as the gateway's gRPC API sends it, and read back as the CLI reads it."""

from __future__ import annotations

from llamaherd.v1 import cluster_pb2 as cl_pb
from llamaherd.v1 import inference_pb2 as inf_pb
from llamaherd.v1 import worker_pb2 as w_pb

from orchestrator.cluster.reports import view_from_proto
from orchestrator.status_table import render_status

GiB = 1024**3


def head_model(
    rpc_servers: list[str], tensor_split: list[float], n_gpu_layers: int, n_layers: int = 27
) -> w_pb.ModelInfo:
    spec = w_pb.ModelSpec(
        alias="big",
        path="/models/big.gguf",
        rpc_servers=rpc_servers,
        tensor_split=tensor_split,
        n_gpu_layers=n_gpu_layers,
    )
    return w_pb.ModelInfo(
        alias="big",
        spec=spec,
        state=w_pb.MODEL_STATE_READY,
        memory=w_pb.MemoryEstimate(n_layers=n_layers),
    )


def lent(endpoint: str, *, running: bool = True, error: str = "") -> w_pb.RpcServerInfo:
    return w_pb.RpcServerInfo(
        lease_id="big@node-a",
        endpoint=endpoint,
        head_host="10.0.0.1",
        device="CUDA0",
        reserved_bytes=GiB + GiB // 5,
        running=running,
        error=error,
    )


def node_status(
    node_id: str, *models: w_pb.ModelInfo, leases: tuple[w_pb.RpcServerInfo, ...] = ()
) -> inf_pb.NodeStatus:
    report = cl_pb.NodeReport(
        node_id=node_id,
        address=f"{node_id}:50051",
        hardware=cl_pb.Hardware(kind="jetson-orin"),
        models=models,
        memory_free_bytes=4 * GiB,
        rpc_servers=leases,
    )
    return inf_pb.NodeStatus(status=report, up=True)


def split_cluster(head: w_pb.ModelInfo | None = None) -> inf_pb.ClusterStatusResponse:
    """node-a heads `head` (27 layers, 9 on each helper by default); node-b and node-c lend."""
    head = head or head_model(["10.0.0.2:50100", "10.0.0.3:50100"], [9.0, 9.0], 18)
    return inf_pb.ClusterStatusResponse(
        nodes=[
            node_status("node-a", head),
            node_status("node-b", leases=(lent("10.0.0.2:50100"),)),
            node_status("node-c", leases=(lent("10.0.0.3:50100"),)),
        ],
        routing_policy="least-expected-latency",
    )


def render(status: inf_pb.ClusterStatusResponse) -> str:
    return render_status(view_from_proto(status))


def lines_under(text: str, node_id: str) -> list[str]:
    """The indented lines below a node's row."""
    rows = text.splitlines()
    start = next(i for i, row in enumerate(rows) if row.startswith(node_id))
    below = []
    for row in rows[start + 1 :]:
        if not row.startswith(" "):
            break
        below.append(row.strip())
    return below


def test_the_head_says_which_layers_live_where() -> None:
    text = render(split_cluster())
    assert lines_under(text, "node-a") == [
        "big split: layers 0-8 here (head), layers 9-17 on node-b, layers 18-26 on node-c"
    ]


def test_a_lending_node_shows_its_lease_and_layers() -> None:
    text = render(split_cluster())
    assert lines_under(text, "node-b") == [
        "lends CUDA0 to big@node-a · layers 9-17 · 1.20 GiB reserved · 10.0.0.2:50100"
    ]


def test_uneven_shares_follow_tensor_split() -> None:
    head = head_model(["10.0.0.2:50100", "10.0.0.3:50100"], [7.0, 1.0], 8, n_layers=10)
    text = render(split_cluster(head=head))
    assert lines_under(text, "node-a") == [
        "big split: layers 0-1 here (head), layers 2-8 on node-b, layer 9 on node-c"
    ]


def test_without_a_layer_count_the_split_says_how_many() -> None:
    head = head_model(["10.0.0.2:50100", "10.0.0.3:50100"], [9.0, 9.0], 18, n_layers=0)
    text = render(split_cluster(head=head))
    assert lines_under(text, "node-a") == [
        "big split: the first layers here (head), 9 layers on node-b, 9 layers on node-c"
    ]
    assert lines_under(text, "node-c")[0].startswith("lends CUDA0 to big@node-a · 9 layers ·")


def test_an_endpoint_no_node_lends_is_shown_as_is() -> None:
    head = head_model(["10.0.0.9:50100"], [9.0], 9, n_layers=18)
    status = inf_pb.ClusterStatusResponse(nodes=[node_status("node-a", head)])
    assert lines_under(render(status), "node-a") == [
        "big split: layers 0-8 here (head), layers 9-17 on 10.0.0.9:50100"
    ]


def test_a_stopped_unused_lease_says_why() -> None:
    lease = lent("10.0.0.2:50100", running=False, error="head disconnected")
    status = inf_pb.ClusterStatusResponse(nodes=[node_status("node-b", leases=(lease,))])
    assert lines_under(render(status), "node-b") == [
        "lends CUDA0 to big@node-a · not in use · 1.20 GiB reserved · 10.0.0.2:50100 · "
        "stopped: head disconnected"
    ]


def test_a_lease_says_how_it_admits_only_its_head() -> None:
    lease = lent("10.0.0.2:50100")
    lease.guard = "bpf"
    status = inf_pb.ClusterStatusResponse(nodes=[node_status("node-b", leases=(lease,))])
    assert lines_under(render(status), "node-b") == [
        "lends CUDA0 to big@node-a · not in use · 1.20 GiB reserved · 10.0.0.2:50100 · guard bpf"
    ]


def test_models_that_are_not_split_add_no_lines() -> None:
    spec = w_pb.ModelSpec(alias="m", path="/models/m.gguf", n_gpu_layers=-1)
    plain = w_pb.ModelInfo(alias="m", spec=spec, state=w_pb.MODEL_STATE_READY)
    status = inf_pb.ClusterStatusResponse(nodes=[node_status("node-a", plain)])
    assert lines_under(render(status), "node-a") == []


def downloading(attempt: int, done: int = 0) -> w_pb.ModelInfo:
    source = w_pb.ModelSource(name="big", sha256="ab" * 32, size_bytes=2 * GiB,
                              urls=["http://10.0.0.6:9100"])  # fmt: skip
    progress = w_pb.DownloadProgress(
        bytes_done=done, bytes_total=2 * GiB, attempt=attempt, source="10.0.0.6:9100",
        bytes_per_second=(8 << 20) if attempt else 0, eta_s=192.0 if attempt else 0,
    )  # fmt: skip
    spec = w_pb.ModelSpec(alias="big", path="store:big", source=source)
    return w_pb.ModelInfo(alias="big", spec=spec, state=w_pb.MODEL_STATE_DOWNLOADING,
                          download=progress)  # fmt: skip


def test_a_downloading_model_shows_bytes_rate_eta_and_source() -> None:
    text = render(inf_pb.ClusterStatusResponse(nodes=[node_status("a", downloading(2, GiB // 2))]))
    assert (
        "big [downloading: 512.0 MiB / 2.00 GiB (25%), 8.0 MiB/s, ETA 192 s, "
        "from 10.0.0.6:9100, attempt 2]" in text
    )


def test_a_download_waiting_for_its_turn_says_so() -> None:
    text = render(inf_pb.ClusterStatusResponse(nodes=[node_status("a", downloading(0))]))
    assert "big [downloading: waiting for a download slot, 2.00 GiB]" in text


def test_measured_capacity_shows_streams_rates_power_and_replicas_needed() -> None:
    from orchestrator.cluster.capacity import CapacityRecord
    from orchestrator.cluster.view import ClusterView

    def measured(node: str, streams: int, watts: float | None) -> CapacityRecord:
        return CapacityRecord(
            node=node, model="gemma", n_ctx=4096, slo="ttft_p99=2s", max_streams=streams,
            prefill_tps=950.0, decode_tps_stream=21.5, decode_tps_total=60.2, e2e_s=3.0,
            prompt_tokens=128, output_tokens=64, measured_at=0.0, watts=watts,
        )  # fmt: skip

    view = ClusterView(capacities=(measured("a", 4, 20.0), measured("b", 2, None)))
    text = render_status(view, target_streams=9)
    assert (
        "gemma on a, n_ctx 4096: 4 streams at ttft_p99=2s; prefill 950 tok/s, decode 21.5 "
        "tok/s per stream, 60.2 in all, 0.2 streams/W (20 W)"
    ) in text
    assert "gemma: 6 streams on 2 measured replicas; 9 streams need 3 replicas" in text
    assert "measured capacity" not in render_status(ClusterView())
