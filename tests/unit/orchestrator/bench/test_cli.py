"""`llamaherd bench` end to end against a loopback endpoint, and every refusal: one line on
stderr, exit code 2, no traceback."""

from __future__ import annotations

import json
import socket

import pytest

from orchestrator.bench.cli import main
from orchestrator.cli import build_parser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_llamaherd_has_the_bench_command():
    args = build_parser().parse_args(["bench", "--model", "m", "--concurrency", "1,2"])
    assert args.concurrency == "1,2" and callable(args.run)


def test_a_sweep_writes_json_and_html_and_compare_prints(endpoint, tmp_path, capsys):
    out, page = tmp_path / "a.json", tmp_path / "a.html"
    argv = ["bench", "--url", endpoint.url, "--model", "gemma", "--prompt-tokens", "32",
            "--output-tokens", "8", "--concurrency", "1,2", "--requests", "4",
            "--slo", "ttft_p99=2s,itl_p99=500ms", "--out", str(out), "--html", str(page),
            "--json"]  # fmt: skip
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    result = json.loads(out.read_text())
    assert printed == result
    assert result["command"].startswith("llamaherd bench --url")
    assert result["prompt_calibration"]["exact_share"] == 1.0  # the server counts words + 1
    assert [level["label"] for level in result["levels"]] == ["c=1", "c=2"]
    for level in result["levels"]:
        assert level["completed"] == 4 and level["errors"] == {}
        assert level["output_tokens"] == {"mean": 8, "min": 8, "max": 8}
        assert level["prompt_tokens"]["min"] == level["prompt_tokens"]["max"] == 32
        assert level["ttft"]["p50"] > 0 and level["itl"]["p50"] > 0
        assert sum(level["node_share"].values()) == pytest.approx(1)
        assert level["goodput"] > 0
    assert len(result["requests"]) == 2 * (4 + 1)  # warm-up recorded, flagged
    sent = [b for b in endpoint.bodies if b.get("stream")]
    assert all(b["max_tokens"] == 8 and b["ignore_eos"] is True for b in sent)
    assert len({b["prompt"] for b in sent}) == len(sent), "each request its own prompt"
    html = page.read_text()
    assert html.count("<svg") == 3 and "<script" not in html and "src=" not in html

    assert main(["bench", "compare", str(out), str(out)]) == 0
    table = capsys.readouterr().out
    assert "c=2" in table and "TTFT p99 ms" in table and "1.00" in table


def test_the_same_seed_sends_the_same_prompts(endpoint):
    argv = ["bench", "--url", endpoint.url, "--model", "gemma", "--prompt-tokens", "16",
            "--output-tokens", "2", "--rate", "50", "--requests", "3", "--json"]  # fmt: skip
    assert main(argv) == 0
    first = [b["prompt"] for b in endpoint.bodies if b.get("stream")]
    endpoint.bodies.clear()
    assert main(argv) == 0
    assert [b["prompt"] for b in endpoint.bodies if b.get("stream")] == first


def test_a_poisson_run_over_a_duration(endpoint, capsys):
    argv = ["bench", "--url", endpoint.url, "--model", "gemma", "--prompt-tokens", "16",
            "--output-tokens", "2", "--poisson", "20", "--duration", "0.5", "--warmup", "0",
            "--json"]  # fmt: skip
    assert main(argv) == 0
    level = json.loads(capsys.readouterr().out)["levels"][0]
    assert level["label"] == "poisson 20 req/s" and 2 <= level["requests"] <= 30


def _refused(argv, capsys) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


def test_an_unreachable_endpoint(capsys):
    url = f"http://127.0.0.1:{_free_port()}/v1"
    line = _refused(["bench", "--url", url, "--model", "gemma"], capsys)
    assert line == (
        f"llamaherd bench: cannot reach {url}: connection refused; is the gateway running? "
        "(make run)"
    )


def test_a_model_the_endpoint_does_not_serve(endpoint, capsys):
    line = _refused(["bench", "--url", endpoint.url, "--model", "llama-70b"], capsys)
    assert line.endswith("does not serve model 'llama-70b'; it serves: gemma, other")


def test_an_slo_it_cannot_parse(endpoint, capsys):
    line = _refused(["bench", "--url", endpoint.url, "--model", "gemma", "--slo",
                     "ttft_p99=2s,itl=200ms"], capsys)  # fmt: skip
    assert "--slo term 'itl=200ms' is not of the form METRIC_STAT=NUMBER(ms|s)" in line
    assert endpoint.bodies == [], "nothing is sent before the flags are checked"


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--rate", "0"], "--rate '0': 0 must be more than 0 requests per second"),
        (["--poisson", "-2"], "--poisson '-2': -2 must be more than 0 requests per second"),
        (["--concurrency", "0"], "must be more than 0 streams"),
        (["--requests", "0"], "--requests 0: must be at least 1"),
        (["--output-tokens", "0"], "--output-tokens 0: must be at least 1"),
        (["--api-key-env", "NO_SUCH_VARIABLE_HERE"], "the variable is not set"),
        (["--prompt-tokens", "uniform:9-3"], "--prompt-tokens 'uniform:9-3': MIN and MAX"),
        (["--output-tokens", "normal:64"], "--output-tokens 'normal:64' is not of the form"),
        (["--turns", "3"], "--turns needs --api chat"),
        (["--api", "chat", "--turns", "3", "--rate", "2"], "--turns needs --concurrency"),
        (
            ["--api", "chat", "--system-tokens", "9", "--poisson", "1"],
            "--system-tokens needs --concurrency",
        ),
        (["--turns", "0"], "--turns 0: must be at least 1"),
        (["--system-tokens", "-1"], "--system-tokens -1: must be 0 or more"),
        (["--prompt-tokens", "many"], "--prompt-tokens 'many' is not of the form"),
    ],
)
def test_a_load_it_cannot_run(endpoint, capsys, flags, says):
    line = _refused(["bench", "--url", endpoint.url, "--model", "gemma", *flags], capsys)
    assert says in line


def test_when_every_request_fails_it_says_why(endpoint, capsys):
    endpoint.refuse = True
    line = _refused(["bench", "--url", endpoint.url, "--model", "gemma"], capsys)
    assert "failed (429): busy" in line


def test_compare_refuses_a_file_that_is_not_a_result(tmp_path, capsys):
    other = tmp_path / "other.json"
    other.write_text("{}")
    line = _refused(["bench", "compare", str(other), str(other)], capsys)
    assert line == f"llamaherd bench: compare: {other} is not a llamaherd bench result " + (
        "(no format 'llamaherd-bench/1')"
    )


def _streamed(endpoint):
    return [b for b in endpoint.bodies if b.get("stream")]


def test_distributed_lengths_are_drawn_per_request(endpoint, capsys):
    argv = ["bench", "--url", endpoint.url, "--model", "gemma", "--prompt-tokens",
            "uniform:20-40", "--output-tokens", "normal:6,2", "--concurrency", "2",
            "--requests", "12", "--json"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["workload"]["prompt_lengths"] == "uniform:20-40"
    assert result["workload"]["output_lengths"] == "normal:6,2"
    assert result["prompt_calibration"]["overhead_tokens"] == 1  # the BOS
    sent = _streamed(endpoint)
    prompts = [len(b["prompt"].split()) + 1 for b in sent]  # as the server counts them
    assert all(20 <= p <= 40 for p in prompts) and len(set(prompts)) > 3
    outputs = [b["max_tokens"] for b in sent]
    assert min(outputs) >= 1 and len(set(outputs)) > 1
    level = result["levels"][0]
    assert 20 <= level["prompt_tokens"]["min"] < level["prompt_tokens"]["max"] <= 40
    first = sent
    endpoint.bodies.clear()
    assert main(argv) == 0
    # Two streams race, so the server may see the same requests in another order.
    assert sorted(map(json.dumps, _streamed(endpoint))) == sorted(map(json.dumps, first)), (
        "the seed gives the same lengths and prompts"
    )


def test_multi_turn_chats_share_the_system_prompt_and_grow_their_history(endpoint, capsys):
    argv = ["bench", "--url", endpoint.url, "--model", "gemma", "--api", "chat",
            "--prompt-tokens", "10", "--output-tokens", "3", "--turns", "3",
            "--system-tokens", "50", "--concurrency", "2", "--requests", "6",
            "--warmup", "0", "--json"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    sent = _streamed(endpoint)
    assert len(sent) == 6
    systems = {b["messages"][0]["content"] for b in sent}
    assert len(systems) == 1 and len(systems.pop().split()) == 50
    assert all(b["messages"][0]["role"] == "system" for b in sent)
    # two users, three turns each: 1 + 2k - 1 messages at turn k (system, history, new)
    assert sorted(len(b["messages"]) for b in sent) == [2, 2, 4, 4, 6, 6]
    for b in sent:
        roles = [m["role"] for m in b["messages"][1:]]
        assert roles == ["user", "assistant"] * (len(roles) // 2) + ["user"]
        replies = [m["content"] for m in b["messages"] if m["role"] == "assistant"]
        assert all(r == " word" * 3 for r in replies), "each reply is kept as it streamed"
    turns = sorted(r["turn"] for r in result["requests"])
    assert turns == [1, 1, 2, 2, 3, 3]
    level = result["levels"][0]
    assert set(level["ttft_p50_by_turn"]) == {"1", "2", "3"}
    assert level["prompt_tokens"]["max"] > level["prompt_tokens"]["min"] > 50


def test_energy_is_na_where_no_node_reports_power(endpoint, tmp_path, capsys):
    out, page = tmp_path / "r.json", tmp_path / "r.html"
    argv = ["bench", "--url", endpoint.url, "--model", "gemma", "--prompt-tokens", "8",
            "--output-tokens", "2", "--requests", "2", "--out", str(out), "--html",
            str(page)]  # fmt: skip
    assert main(argv) == 0
    assert "energy: c=1: n/a" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["power"] == "no cluster view" and result["levels"][0]["energy"] is None
    assert result["levels"][0]["nodes"].keys() == result["levels"][0]["node_share"].keys()
    assert "Per node" in page.read_text()
    endpoint.cluster = {"nodes": [{"up": True, "status": {"node_id": "node-0", "telemetry": {
        "taken_at": 1.0, "gpus": [], "jetson": None}}}]}  # fmt: skip
    assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["power"] == "no node reports power"


def test_energy_per_token_where_a_node_reports_power(endpoint, capsys):
    endpoint.cluster = {"nodes": [{"up": True, "status": {"node_id": "node-1", "telemetry": {
        "taken_at": 5.0, "gpus": [{"power_watts": 20.0}], "jetson": None}}}]}  # fmt: skip
    argv = ["bench", "--url", endpoint.url, "--model", "gemma", "--prompt-tokens", "8",
            "--output-tokens", "4", "--requests", "4", "--json"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    level = result["levels"][0]
    node = level["energy"]["nodes"]["node-1"]
    assert result["power"] == "reported" and node["mean_watts"] == 20.0
    assert node["output_tokens"] == 4 * level["nodes"]["node-1"]["requests"]
    assert node["joules"] == pytest.approx(20.0 * level["window_s"], rel=1e-3)
