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
