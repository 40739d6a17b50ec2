"""The perplexity arithmetic on known logits, and the text-length refusal. Measured against
the real model (and against llama-perplexity) in tests/integration/worker/test_quant_tools.py
and tests/bench/bench_quants.py."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.errors import InvalidArgument
from orchestrator.cli import main
from worker.llamacpp.perplexity import NllStats, PerplexityResult, chunk_count, token_nlls


def test_uniform_logits_cost_log_vocab_per_token():
    logits = np.zeros((3, 8), np.float32)
    assert token_nlls(logits, [0, 5, 7]) == pytest.approx([math.log(8)] * 3)


def test_nll_is_minus_log_softmax_of_the_target():
    # Probabilities 1/6, 2/6, 3/6.
    logits = np.log(np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]], np.float32))
    assert token_nlls(logits, [2, 0]) == pytest.approx([math.log(2), math.log(6)], rel=1e-6)


def test_large_logits_do_not_overflow():
    logits = np.array([[1000.0, 1000.0, -1000.0]], np.float32)
    assert token_nlls(logits, [0]) == pytest.approx([math.log(2)])


def test_many_rows_match_a_direct_computation():
    rng = np.random.default_rng(7)
    logits = rng.normal(0, 4, (40, 50)).astype(np.float32)  # more rows than one block
    targets = rng.integers(0, 50, 40).tolist()
    wide = logits.astype(np.float64)
    direct = [math.log(np.exp(row).sum()) - row[t] for row, t in zip(wide, targets, strict=True)]
    assert token_nlls(logits, targets) == pytest.approx(direct, rel=1e-9)


def test_rows_and_targets_must_pair_up():
    with pytest.raises(ValueError):
        token_nlls(np.zeros((2, 4), np.float32), [1])


def test_perplexity_and_its_standard_error_as_llama_cpp_reports_them():
    stats = NllStats()
    stats.add(np.array([1.0, 2.0]))
    stats.add(np.array([3.0]))
    assert stats.count == 3
    assert stats.perplexity == pytest.approx(math.exp(2))
    # Variance 14/3 - 4 = 2/3 over count - 1 = 2, times PPL.
    assert stats.stderr == pytest.approx(math.sqrt(1 / 3) * math.exp(2))


def test_no_tokens_give_no_figure():
    assert math.isnan(NllStats().perplexity)
    assert math.isnan(NllStats().stderr)


def test_chunks_are_whole_contexts():
    assert chunk_count(2322, 512) == 4
    assert chunk_count(1024, 512) == 2


def test_a_text_under_two_contexts_is_refused_saying_how_long_it_must_be():
    with pytest.raises(InvalidArgument) as caught:
        chunk_count(1023, 512)
    assert "1023 tokens long" in caught.value.message
    assert "at least 1024 tokens" in caught.value.message


def test_a_tiny_context_is_refused():
    with pytest.raises(InvalidArgument, match="at least 16"):
        chunk_count(10_000, 8)


def test_throughput_counts_every_evaluated_token():
    result = PerplexityResult(10.0, 0.5, 512, 4, 2322, 1020, 8.0)
    assert result.tokens_per_second == pytest.approx(4 * 512 / 8.0)
    assert result.to_json()["chunks"] == 4


def test_the_command_refuses_bad_files_in_one_line_with_exit_2(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_bytes(b"\xff\xfe not utf-8")
    missing = tmp_path / "none.gguf"
    assert main(["models", "perplexity", str(missing), str(text)]) == 2
    assert capsys.readouterr().err == f"llamaherd models perplexity: {missing} does not exist\n"
    model = tmp_path / "m.gguf"
    model.write_text("x" * 64)
    assert main(["models", "perplexity", str(model), str(text)]) == 2
    assert "is not a valid GGUF file" in capsys.readouterr().err
