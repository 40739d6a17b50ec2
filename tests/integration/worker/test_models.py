"""Loading and unloading models at run time, and every way a load can be refused."""

from __future__ import annotations

import shutil
import threading
import time

import grpc
import pytest
from llamaherd.v1 import generation_pb2 as gen_pb
from llamaherd.v1 import worker_pb2 as pb
from llamaherd.v1 import worker_pb2_grpc
from support.auth import worker_channel
from support.gguf_files import patch_uint32, truncated_copy, write_gguf
from support.models import GEMMA, GEMMA_EMBED
from support.rpc import TIMEOUT, generate, rpc_error
from support.worker_process import start_worker

GEMMA_BUILTIN = "builtin:gemma-3-270m"


def _load(stub, **spec):
    return stub.LoadModel(pb.LoadModelRequest(spec=pb.ModelSpec(**spec)), timeout=TIMEOUT)


def _states(stub) -> dict[str, int]:
    return {
        m.alias: m.state for m in stub.ListModels(pb.ListModelsRequest(), timeout=TIMEOUT).models
    }


def _gemma_still_generates(stub) -> None:
    assert (
        generate(stub, GEMMA, "Hello", temperature=0, max_tokens=2).final.usage.completion_tokens
        == 2
    )


def test_configured_models_are_listed_ready_with_their_estimates(stub, gemma_path):
    models = {m.alias: m for m in stub.ListModels(pb.ListModelsRequest(), timeout=TIMEOUT).models}
    gemma = models[GEMMA]
    assert gemma.state == pb.MODEL_STATE_READY
    assert gemma.architecture == "gemma3"
    assert gemma.file_bytes == gemma_path.stat().st_size
    assert gemma.n_ctx_train == 32768
    assert gemma.spec.n_ctx == 1024
    assert gemma.chat_template_source == "fallback:gemma"
    mem = gemma.memory
    assert mem.total_bytes == mem.weights_bytes + mem.kv_cache_bytes + mem.compute_bytes
    assert 200 * 2**20 < mem.weights_bytes < gemma.file_bytes
    assert models[GEMMA_EMBED].spec.embedding


def test_load_generate_unload_at_run_time(stub):
    info = _load(stub, alias="gemma-extra", path=GEMMA_BUILTIN, n_ctx=512).model
    assert info.state == pb.MODEL_STATE_READY
    assert info.spec.n_ctx == 512
    result = generate(stub, "gemma-extra", "Once upon a time", temperature=0, max_tokens=5)
    assert result.final.usage.completion_tokens == 5

    stub.UnloadModel(pb.UnloadModelRequest(alias="gemma-extra"), timeout=TIMEOUT)
    assert "gemma-extra" not in _states(stub)
    err = rpc_error(lambda: generate(stub, "gemma-extra", "Hi", max_tokens=1))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    _gemma_still_generates(stub)


def test_loading_an_alias_twice_is_already_exists(stub):
    err = rpc_error(lambda: _load(stub, alias=GEMMA, path=GEMMA_BUILTIN))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    assert f"'{GEMMA}'" in err.details()


def test_unloading_an_unknown_model_is_not_found(stub):
    err = rpc_error(lambda: stub.UnloadModel(pb.UnloadModelRequest(alias="nope"), timeout=TIMEOUT))
    assert err.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({"alias": "bad alias!", "path": GEMMA_BUILTIN}, "alias"),
        ({"alias": "", "path": GEMMA_BUILTIN}, "spec.alias is empty"),
        ({"alias": "x", "path": ""}, "spec.path is empty"),
        ({"alias": "x", "path": GEMMA_BUILTIN, "n_gpu_layers": -2}, "n_gpu_layers"),
        ({"alias": "x", "path": GEMMA_BUILTIN, "pooling": "median"}, "pooling"),
        (
            {"alias": "x", "path": GEMMA_BUILTIN, "chat_format": "klingon"},
            "not a llama.cpp built-in",
        ),
        ({"alias": "x", "path": "relative/model.gguf"}, "must be absolute"),
        ({"alias": "x", "path": "builtin:nonexistent"}, "no built-in model"),
    ],
)
def test_invalid_specs_are_refused_with_the_field_named(stub, spec, fragment):
    err = rpc_error(lambda: _load(stub, **spec))
    assert err.code() in {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
    assert fragment in err.details()
    assert "x" not in _states(stub)


def test_path_outside_model_dirs_is_permission_denied(stub, gemma_path):
    err = rpc_error(lambda: _load(stub, alias="outside", path=str(gemma_path)))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "model_dirs" in err.details()


def test_missing_file_is_not_found(stub, models_dir):
    err = rpc_error(lambda: _load(stub, alias="missing", path=str(models_dir / "absent.gguf")))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "does not exist" in err.details()
    _gemma_still_generates(stub)


def test_non_gguf_file_is_invalid(stub, models_dir):
    path = models_dir / "notes.gguf"
    path.write_text("these are not the weights you are looking for\n" * 10)
    err = rpc_error(lambda: _load(stub, alias="notes", path=str(path)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not the GGUF magic" in err.details()
    _gemma_still_generates(stub)


def test_truncated_real_model_is_invalid(stub, models_dir, gemma_path):
    path = truncated_copy(gemma_path, models_dir / "gemma-half.gguf", keep_fraction=0.5)
    err = rpc_error(lambda: _load(stub, alias="half", path=str(path)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "truncated" in err.details()
    _gemma_still_generates(stub)


def test_file_truncated_inside_its_metadata_is_invalid(stub, models_dir, gemma_path):
    path = truncated_copy(gemma_path, models_dir / "gemma-head.gguf", keep_fraction=0.01)
    err = rpc_error(lambda: _load(stub, alias="head", path=str(path)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "truncated" in err.details()


def test_unknown_architecture_is_refused_with_llama_cpp_reason(stub, models_dir):
    path = write_gguf(models_dir / "bogus.gguf", "bogus-arch")
    err = rpc_error(lambda: _load(stub, alias="bogus", path=str(path)))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.details().endswith("unknown model architecture: 'bogus-arch'; failed to load model")
    assert "bogus" not in _states(stub)
    _gemma_still_generates(stub)


@pytest.mark.parametrize("layers", [0, 1000])
def test_layer_count_that_would_abort_llama_cpp_is_refused(stub, models_dir, gemma_path, layers):
    """Found by fuzzing: llama.cpp aborts the process (not the load) on these counts."""
    path = models_dir / f"gemma-{layers}-layers.gguf"
    shutil.copy(gemma_path, path)
    patch_uint32(path, "gemma3.block_count", layers)
    err = rpc_error(lambda: _load(stub, alias="layers", path=str(path)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "gemma3.block_count" in err.details() or "declares 1000 layers" in err.details()
    path.unlink()
    _gemma_still_generates(stub)


def test_model_too_large_for_memory_is_refused_before_loading(stub, models_dir):
    # Metadata of a 100-layer, 8192-wide model: its KV cache at 128k tokens needs ~400 GiB.
    path = write_gguf(
        models_dir / "huge.gguf", "llama", block_count=100, embedding_length=8192,
        head_count=64, context_length=131072,
    )  # fmt: skip
    err = rpc_error(lambda: _load(stub, alias="huge", path=str(path), n_ctx=131072))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "needs about" in err.details()
    assert "KV cache" in err.details()
    assert "huge" not in _states(stub)


def test_unload_stops_a_running_generation_with_unavailable(stub):
    _load(stub, alias="gemma-doomed", path=GEMMA_BUILTIN, n_ctx=2048)
    request = gen_pb.GenerateRequest(
        model="gemma-doomed", prompt="Once upon a time",
        sampling=gen_pb.SamplingParams(temperature=0, max_tokens=1500),
    )  # fmt: skip
    stream = stub.Generate(request, timeout=TIMEOUT)
    next(stream)  # generation is running
    started = time.monotonic()
    stub.UnloadModel(pb.UnloadModelRequest(alias="gemma-doomed"), timeout=TIMEOUT)
    with pytest.raises(grpc.RpcError) as info:
        for _ in stream:
            pass
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "unloaded" in info.value.details()
    assert time.monotonic() - started < 5
    _gemma_still_generates(stub)


def test_concurrent_loads_of_one_alias_admit_exactly_one(stub):
    outcomes: list[str] = []

    def load() -> None:
        try:
            _load(stub, alias="gemma-race", path=GEMMA_BUILTIN, n_ctx=512)
            outcomes.append("ok")
        except grpc.RpcError as exc:
            outcomes.append(exc.code().name)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["ALREADY_EXISTS", "ALREADY_EXISTS", "ok"]
    stub.UnloadModel(pb.UnloadModelRequest(alias="gemma-race"), timeout=TIMEOUT)


def test_memory_limit_refuses_a_second_model_before_llama_cpp_runs(tmp_path, gemma_path):
    """A worker capped at 1 GiB holds one Gemma (n_ctx 512, ~0.74 GiB) but not a second."""
    config = {
        "memory_limit": "1GiB",
        "model_dirs": [str(gemma_path.parent)],
        "models": [{"alias": "small", "path": "builtin:gemma-3-270m", "n_ctx": 512}],
    }
    worker = start_worker(tmp_path, config, "--log-level", "DEBUG", name="capped")
    try:
        with worker_channel(worker.address) as channel:
            capped = worker_pb2_grpc.WorkerStub(channel)
            err = rpc_error(lambda: _load(capped, alias="second", path=str(gemma_path), n_ctx=4096))
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "model 'second' needs about" in err.details()
            assert "free" in err.details()
            # llama.cpp was never asked to load it: its loader logs each file it opens (at DEBUG).
            log = worker.log_path.read_text()
            assert log.count("llama_model_loader: loaded meta data") == 1
            assert (
                generate(
                    capped, "small", "Hi", temperature=0, max_tokens=2
                ).final.usage.completion_tokens
                == 2
            )
    finally:
        assert worker.stop() == 0


def test_configured_model_that_fails_is_listed_failed_and_others_serve(tmp_path, models_dir):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x00" * 10)
    shutil.copy(broken, models_dir / "broken.gguf")
    config = {
        "models": [
            {"alias": "broken", "path": str(broken)},
            {"alias": "good", "path": "builtin:gemma-3-270m", "n_ctx": 512},
        ]
    }
    worker = start_worker(tmp_path, config, name="partial")
    try:
        with worker_channel(worker.address) as channel:
            partial = worker_pb2_grpc.WorkerStub(channel)
            models = {
                m.alias: m
                for m in partial.ListModels(pb.ListModelsRequest(), timeout=TIMEOUT).models
            }
            assert models["broken"].state == pb.MODEL_STATE_FAILED
            assert "not a valid GGUF" in models["broken"].error
            assert models["good"].state == pb.MODEL_STATE_READY
            err = rpc_error(lambda: generate(partial, "broken", "Hi", max_tokens=1))
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "failed to load" in err.details()
            assert (
                generate(
                    partial, "good", "Hi", temperature=0, max_tokens=2
                ).final.usage.completion_tokens
                == 2
            )
    finally:
        assert worker.stop() == 0
