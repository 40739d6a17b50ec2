"""A node's real speed, measured once: the decode rate of a fixed reference model.

Nodes differ by far more than their specs say (power modes, thermal limits, memory
bandwidth, the llama.cpp build), so the coordinator ranks them by a measured figure: the
embedded Gemma 3 270M Q4_K_M, one sequence, greedy, all layers on the GPU where llama.cpp has
one. Measured at the worker's first start on a given build and hardware (a few seconds) and
cached on disk under a key of both, so later starts cost nothing. Concurrent first starts on
one machine take turns through a file lock, so they neither slow each other's measurement
nor repeat it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import llama_cpp

from common.model_settings import BUILTIN_PREFIX, DEFAULT_MODEL
from worker.engine.sampling import SamplingParams
from worker.llamacpp.context import ContextParams, LlamaContext
from worker.llamacpp.model import LlamaModel
from worker.llamacpp.sampler import Sampler
from worker.models.builtin import resolve

log = logging.getLogger(__name__)

REFERENCE_MODEL = DEFAULT_MODEL
METHOD_VERSION = 1  # bump when the measurement changes, so old figures are not compared
WARMUP_TOKENS = 8
DECODE_TOKENS = 64
PROMPT = "The history of the printing press begins"
GPU_BACKENDS = ("CUDA", "Metal", "Vulkan", "SYCL", "HIP")


@dataclass(frozen=True)
class ReferenceSpeed:
    decode_tps: float
    model: str
    key: str
    measured_at: float  # unix time
    cached: bool = False


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "llamaherd" / "reference-speed"


def cache_key(
    system_info: str, cpu_model: str, gpus: Sequence[str], n_threads: int, n_gpu_layers: int
) -> str:
    """Same key = same llama.cpp build, hardware and settings, so the same figure."""
    parts = [
        f"method={METHOD_VERSION}",
        f"llama-cpp-python={llama_cpp.__version__}",
        system_info,
        cpu_model,
        *gpus,
        f"threads={n_threads}",
        f"gpu_layers={n_gpu_layers}",
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def gpu_layers_for(backends: Sequence[str]) -> int:
    return -1 if any(b in GPU_BACKENDS for b in backends) else 0


def reference_speed(cache_dir: Path, key: str, n_threads: int, n_gpu_layers: int) -> ReferenceSpeed:
    """The cached figure for `key`, else a fresh measurement (then cached)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{key}.json"
    with _exclusive(cache_dir / f"{key}.lock"):
        cached = _read(path, key)
        if cached is not None:
            return cached
        log.info(
            "measuring this node's reference decode speed (%s, once per build and hardware; "
            "cached in %s)", REFERENCE_MODEL, cache_dir,
        )  # fmt: skip
        tps = measure_decode_tps(resolve(BUILTIN_PREFIX + REFERENCE_MODEL), n_threads, n_gpu_layers)
        speed = ReferenceSpeed(tps, REFERENCE_MODEL, key, time.time())
        _write(path, speed)
        log.info("reference decode speed: %.1f tokens/s", tps)
        return speed


def measure_decode_tps(
    model_path: Path, n_threads: int, n_gpu_layers: int, tokens: int = DECODE_TOKENS
) -> float:
    """Greedy single-sequence decode rate, after a short warm-up (first steps page weights
    in and size buffers)."""
    model = LlamaModel(model_path, n_gpu_layers=n_gpu_layers)
    n_ctx = 256
    context = LlamaContext(
        model, ContextParams(n_ctx=n_ctx, n_batch=64, n_threads=n_threads,
                             n_threads_batch=n_threads),
    )  # fmt: skip
    sampler = Sampler(context, SamplingParams(temperature=0.0), None)
    try:
        prompt = model.tokenize(PROMPT)
        context.decode(prompt, 0)
        position = len(prompt)
        token = sampler.sample()
        started = 0.0
        for step in range(WARMUP_TOKENS + tokens):
            if step == WARMUP_TOKENS:
                started = time.perf_counter()
            # The token's identity does not matter for speed; end-of-generation is fed on.
            context.decode([token], position)
            position += 1
            token = sampler.sample()
        return tokens / (time.perf_counter() - started)
    finally:
        sampler.close()
        context.close()
        model.close()


def _read(path: Path, key: str) -> ReferenceSpeed | None:
    try:
        data = json.loads(path.read_text())
        speed = ReferenceSpeed(
            float(data["decode_tps"]), str(data["model"]), key, float(data["measured_at"]), True
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable reference-speed cache %s: %s", path, exc)
        return None
    return speed if speed.decode_tps > 0 else None


def _write(path: Path, speed: ReferenceSpeed) -> None:
    data = {"decode_tps": speed.decode_tps, "model": speed.model, "measured_at": speed.measured_at}
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(data))
    partial.replace(path)  # readers never see half a file


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
