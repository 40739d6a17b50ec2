"""From a Hugging Face checkpoint to a served quant, the whole path: a tiny random Llama that
`transformers` makes here (tests/support/tiny_hf_model.py), `llamaherd models convert` (llama.cpp's
own converter from the llama-cpp-python source), `llamaherd models quantize`, added to a
store, loaded by a real worker, generating.

The converter needs torch and transformers (the convert extra), which the project's venv does
not carry: `make convert-test` installs them once into a cached venv and points
LLAMAHERD_CONVERT_PYTHON at its Python. Without it these tests skip, saying so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import llama_cpp
import pytest
from llamaherd.v1 import generation_pb2 as gen_pb
from llamaherd.v1 import worker_pb2_grpc
from support.auth import worker_channel
from support.rpc import generate
from support.worker_process import LLAMAHERD, WorkerProcess, start_worker

from common.gguf import read_gguf

CONVERT_PYTHON = os.environ.get("LLAMAHERD_CONVERT_PYTHON", "")
TINY_MODEL = Path(__file__).resolve().parents[2] / "support" / "tiny_hf_model.py"
PROMPT = "Once upon a time"
N_TOKENS = 8

pytestmark = pytest.mark.skipif(
    not CONVERT_PYTHON,
    reason="needs a Python with the convert extra (torch, transformers): make convert-test",
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[int]]]:
    """The checkpoint folder, and transformers' own tokens and greedy continuation."""
    folder = tmp_path_factory.mktemp("hf") / "tiny-llama"
    done = subprocess.run(
        [CONVERT_PYTHON, str(TINY_MODEL), str(folder), PROMPT, str(N_TOKENS)],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},  # everything is made here
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return folder, json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def models_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("converted")


@pytest.fixture(scope="module")
def converted(checkpoint: tuple[Path, dict[str, list[int]]], models_folder: Path) -> Path:
    out = models_folder / "tiny-llama-f16.gguf"
    done = _llamaherd("models", "convert", str(checkpoint[0]), str(out),
                      "--python", CONVERT_PYTHON, "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["output"] == str(out)
    assert summary["hf_architecture"] == "LlamaForCausalLM"
    assert summary["gguf_architecture"] == "llama"
    assert summary["llama_cpp_python"] == llama_cpp.__version__
    assert any("models quantize" in step for step in summary["next"])
    # The converter streamed its own lines (stderr is no terminal here).
    assert "Model successfully exported" in done.stderr
    assert not out.with_name(out.name + ".part").exists()
    return out


@pytest.fixture(scope="module")
def quantized(converted: Path) -> Path:
    """The next step convert prints: `llamaherd models quantize` (llama.cpp's quantizer)."""
    out = converted.with_name("tiny-llama-Q4_K_M.gguf")
    done = _llamaherd("models", "quantize", str(converted), str(out), "--type", "Q4_K_M",
                      "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["dst_bytes"] < converted.stat().st_size / 2
    return out


@pytest.fixture(scope="module")
def worker(
    tmp_path_factory: pytest.TempPathFactory, models_folder: Path, converted: Path,
    quantized: Path, cluster_token_env: None,
) -> Iterator[WorkerProcess]:  # fmt: skip
    config = {
        "model_dirs": [str(models_folder)],
        "models": [
            {"alias": "tiny-f16", "path": str(converted), "n_ctx": 128, "n_threads": 1},
            {"alias": "tiny-q4", "path": str(quantized), "n_ctx": 128, "n_threads": 1},
        ],
    }
    process = start_worker(tmp_path_factory.mktemp("convert-worker"), config)
    yield process
    assert process.stop() == 0, process.log_tail()


def _llamaherd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LLAMAHERD, *args], capture_output=True, text=True, timeout=600, check=False
    )


def test_the_converted_file_is_f16_llama_with_the_checkpoint_shapes(converted: Path) -> None:
    gguf = read_gguf(converted)
    assert gguf.architecture == "llama"
    assert gguf.arch_value("block_count") == 2
    assert gguf.arch_value("embedding_length") == 256
    assert gguf.vocab_size == 64
    matrices = [t for t in gguf.tensors if len(t.shape) == 2]
    assert matrices and all(t.type_name == "F16" for t in matrices)


def test_a_served_conversion_generates_what_transformers_does(
    worker: WorkerProcess, checkpoint: tuple[Path, dict[str, list[int]]], quantized: Path
) -> None:
    expected = checkpoint[1]
    with worker_channel(worker.address) as channel:
        stub = worker_pb2_grpc.WorkerStub(channel)
        tokens = stub.Tokenize(gen_pb.TokenizeRequest(model="tiny-f16", text=PROMPT)).tokens
        assert list(tokens) == expected["prompt_ids"]
        # F16 keeps the greedy choices of the float32 original (the weights are scaled so
        # that no two logits are close): token for token, the same continuation.
        exact = generate(stub, "tiny-f16", PROMPT, temperature=0, max_tokens=N_TOKENS)
        assert exact.token_ids == expected["greedy_ids"]
        quant = generate(stub, "tiny-q4", PROMPT, temperature=0, max_tokens=N_TOKENS)
        assert quant.final.usage.completion_tokens == N_TOKENS
        assert quant.final.finish_reason == gen_pb.FINISH_REASON_LENGTH


def test_the_quant_goes_into_the_store(quantized: Path, tmp_path: Path) -> None:
    done = _llamaherd("models", "add", str(quantized), "--store-dir", str(tmp_path / "store"),
                      "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    stored = json.loads(done.stdout)
    assert stored["name"] == "tiny-llama-Q4_K_M"
    assert stored["architecture"] == "llama"
    assert stored["quantization"] == "Q4_K_M"


def test_converting_over_an_existing_file_needs_force(
    checkpoint: tuple[Path, dict[str, list[int]]], converted: Path
) -> None:
    done = _llamaherd("models", "convert", str(checkpoint[0]), str(converted),
                      "--python", CONVERT_PYTHON)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"llamaherd models convert: {converted} exists: pass --force to overwrite it"
    )


def test_a_failing_conversion_leaves_no_file_and_says_so(
    checkpoint: tuple[Path, dict[str, list[int]]], tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(checkpoint[0], broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # cut inside its header
    out = tmp_path / "broken.gguf"
    done = _llamaherd("models", "convert", str(broken), str(out), "--python", CONVERT_PYTHON)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"llamaherd models convert: llama.cpp's converter failed (exit 1) on {broken}; its "
        "last lines are above"
    )
    assert "Could not read complete metadata" in done.stderr  # the converter's own words
    assert list(tmp_path.glob("broken.gguf*")) == []
