"""`llamaherd capacity`: the sweep's decisions, a sweep against a loopback endpoint that
serves a cluster view, and every refusal (one line on stderr, exit code 2)."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import stat

import pytest

from common.model_settings import ModelConfig, ModelSource
from orchestrator.bench.capacity import (
    find_replica,
    max_streams,
    next_concurrency,
    quant_of,
)
from orchestrator.bench.capacity_cli import main
from orchestrator.bench.client import BenchError
from orchestrator.cli import build_parser
from orchestrator.cluster.capacity import load_records
from orchestrator.cluster.view import ClusterView, cluster_view, view_to_json
from tests.support.samples_factory import dgpu, node_sample
from tests.unit.orchestrator.factories import node, replica, snapshot


def sweep(passes_up_to: int, max_concurrency: int = 16) -> tuple[list[int], int]:
    """The levels the sweep tries when every level up to `passes_up_to` meets the SLO."""
    outcomes: dict[int, bool] = {}
    while (level := next_concurrency(outcomes, max_concurrency)) is not None:
        outcomes[level] = level <= passes_up_to
    return list(outcomes), max_streams(outcomes)


def test_the_sweep_doubles_then_bisects():
    assert sweep(5) == ([1, 2, 4, 8, 6, 5], 5)
    assert sweep(4) == ([1, 2, 4, 8, 6, 5], 4)
    assert sweep(1) == ([1, 2], 1)
    assert sweep(0) == ([1], 0)  # stops at once when one stream misses the SLO


def test_the_sweep_stops_at_max_concurrency():
    assert sweep(100, max_concurrency=6) == ([1, 2, 4, 6], 6)
    assert sweep(100, max_concurrency=1) == ([1], 1)


def test_a_pass_above_a_failure_does_not_count():
    assert max_streams({1: True, 2: False, 3: True}) == 1


def test_the_quantization_comes_from_the_file_name():
    assert quant_of("builtin:gemma-3-270m") == ""
    assert quant_of("/models/gemma-3-270m-q4_k_m.gguf") == "Q4_K_M"
    assert quant_of("llama-3.2-1b.Q8_0.gguf") == "Q8_0"
    assert quant_of("x-f16.gguf") == "F16"


def view(*nodes_) -> ClusterView:  # type: ignore[no-untyped-def]
    return cluster_view(snapshot(*nodes_), 0.0, lambda _: 0, "least-loaded")


def test_find_replica_names_what_is_served_instead():
    source = ModelSource(name="gemma-q4_k_m", sha256="ab" * 32, size_bytes=1, urls=("http://h/x",))
    config = ModelConfig(alias="m", path="store:gemma-q4_k_m", source=source)
    cluster = view(node("a", dataclasses.replace(replica("m"), config=config)),
                   node("b", replica("m")), node("c", replica("x")))  # fmt: skip
    found = find_replica(cluster, "m", "a")
    assert (found.node, found.n_ctx, found.model_sha256, found.quant) == (
        "a",
        4096,
        "ab" * 32,
        "Q4_K_M",
    )
    with pytest.raises(BenchError, match=r"several nodes serve 'm' \(a, b\): pick one"):
        find_replica(cluster, "m", None)
    with pytest.raises(BenchError, match=r"node 'c' does not serve model 'm' \(it serves: x\); "
                       r"nodes serving it: a, b"):  # fmt: skip
        find_replica(cluster, "m", "c")
    with pytest.raises(BenchError, match=r"no node 'z' in the cluster; nodes: a, b, c"):
        find_replica(cluster, "m", "z")
    with pytest.raises(BenchError, match="no node serves model 'q' now"):
        find_replica(cluster, "q", None)
    assert find_replica(cluster, "x", None).node == "c"


@pytest.fixture
def cluster_endpoint(endpoint):  # type: ignore[no-untyped-def]
    endpoint.cluster = view_to_json(view(node("node-1", replica("gemma"))))
    return endpoint


def test_a_sweep_saves_the_largest_passing_concurrency(cluster_endpoint, tmp_path, capsys):
    argv = ["capacity", "--url", cluster_endpoint.url, "--model", "gemma", "--prompt-tokens",
            "16", "--output-tokens", "4", "--max-concurrency", "2", "--requests-per-stream", "1",
            "--slo", "ttft_p99=5s", "--n-ctx", "4096", "--save", "--state-dir",
            str(tmp_path / "state"), "--json"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert [(lv["concurrency"], lv["met_slo"]) for lv in result["levels"]] == [(1, True), (2, True)]
    record = result["record"]
    assert (record["node"], record["model"], record["n_ctx"], record["max_streams"]) == (
        "node-1",
        "gemma",
        4096,
        2,
    )
    assert record["prompt_tokens"] == 16 and record["slo"] == "ttft_p99=5s"
    assert record["prefill_tps"] > 0 and record["decode_tps_stream"] > 0
    assert record["watts"] is None  # the node reports no power
    saved = tmp_path / "state" / "capacity.json"
    assert result["saved_to"] == str(saved)
    assert [r.max_streams for r in load_records(saved)] == [2]
    assert stat.S_IMODE(os.stat(saved).st_mode) == 0o600


def test_the_nodes_reported_power_is_recorded(endpoint, capsys):
    cluster = view(node("node-1", replica("gemma")))
    status = dataclasses.replace(cluster.nodes[0].status, telemetry=node_sample(jetson=None))
    nodes = (dataclasses.replace(cluster.nodes[0], status=status),)
    endpoint.cluster = view_to_json(dataclasses.replace(cluster, nodes=nodes))
    argv = ["capacity", "--url", endpoint.url, "--model", "gemma", "--prompt-tokens", "8",
            "--output-tokens", "3", "--max-concurrency", "1", "--json"]  # fmt: skip
    assert main(argv) == 0
    watts = json.loads(capsys.readouterr().out)["record"]["watts"]
    assert watts == dgpu(0).power_watts


def test_a_slo_nothing_meets_gives_zero_streams_after_one_level(cluster_endpoint, capsys):
    argv = ["capacity", "--url", cluster_endpoint.url, "--model", "gemma", "--prompt-tokens",
            "8", "--output-tokens", "3", "--slo", "itl_p99=0.001ms", "--json"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert [lv["concurrency"] for lv in result["levels"]] == [1]
    assert result["record"]["max_streams"] == 0 and result["saved_to"] is None


def test_the_table_is_the_default_output(cluster_endpoint, capsys):
    argv = ["capacity", "--url", cluster_endpoint.url, "--model", "gemma", "--prompt-tokens",
            "8", "--output-tokens", "3", "--max-concurrency", "1"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "capacity of gemma on node-1" in out and "8-token prompts: 1 stream;" in out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--slo", "ttft=2s"], "--slo term 'ttft=2s' is not of the form"),
        (["--max-concurrency", "0"], "--max-concurrency 0: must be at least 1"),
        (["--prompt-tokens", "12,x"], "--prompt-tokens '12,x': give whole numbers"),
        (["--n-ctx", "8192"], "serves gemma with n_ctx 4096, not 8192; a benchmark does not "
         "reload models"),
        (["--node", "node-9"], "no node 'node-9' in the cluster; nodes: node-1"),
        (["--save", "--config", "/nonexistent.yaml"], "cannot read config file /nonexistent"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(cluster_endpoint, capsys, args, message):
    argv = ["capacity", "--url", cluster_endpoint.url, "--model", "gemma", *args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("llamaherd capacity: ") and message in err
    assert len(err.strip().splitlines()) == 1


def test_an_unknown_model_and_an_unreachable_gateway_say_what_to_do(cluster_endpoint, capsys):
    assert main(["capacity", "--url", cluster_endpoint.url, "--model", "nope"]) == 2
    assert "no node serves model 'nope' now; llamaherd status shows why" in capsys.readouterr().err
    url = f"http://127.0.0.1:{_free_port()}/v1"
    assert main(["capacity", "--url", url, "--model", "gemma"]) == 2
    assert "is the gateway running?" in capsys.readouterr().err
    assert main(["capacity"]) == 2
    assert "--model is required" in capsys.readouterr().err


def test_an_endpoint_that_is_not_a_llamaherd_gateway_is_named(endpoint, capsys):
    assert main(["capacity", "--url", endpoint.url, "--model", "gemma"]) == 2
    assert "measures through a llamaherd gateway" in capsys.readouterr().err


def test_llamaherd_has_the_capacity_command():
    args = build_parser().parse_args(["capacity", "--model", "m", "--save"])
    assert args.save and callable(args.run)
