"""The reference decode speed: measured with the real Gemma model, cached per key, measured
once when several workers start together."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest

from worker.node.reference_speed import cache_key, reference_speed


def test_measured_once_then_read_from_the_cache(tmp_path: Path) -> None:
    first = reference_speed(tmp_path, "k1", n_threads=2, n_gpu_layers=0)
    assert not first.cached and first.decode_tps > 5 and first.model == "gemma-3-270m"
    again = reference_speed(tmp_path, "k1", n_threads=2, n_gpu_layers=0)
    assert again.cached and again.decode_tps == first.decode_tps
    assert json.loads((tmp_path / "k1.json").read_text())["decode_tps"] == first.decode_tps


def test_a_damaged_cache_is_measured_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "k2.json").write_text("{not json")
    with caplog.at_level(logging.WARNING):
        speed = reference_speed(tmp_path, "k2", n_threads=2, n_gpu_layers=0)
    assert not speed.cached and speed.decode_tps > 5
    assert "unreadable reference-speed cache" in caplog.text
    assert json.loads((tmp_path / "k2.json").read_text())["decode_tps"] == speed.decode_tps


def test_workers_starting_together_measure_once(tmp_path: Path) -> None:
    results = []

    def start() -> None:
        results.append(reference_speed(tmp_path, "k3", n_threads=1, n_gpu_layers=0))

    threads = [threading.Thread(target=start) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(r.cached for r in results) == [False, True, True]
    assert len({r.decode_tps for r in results}) == 1


def test_the_key_changes_with_build_hardware_and_settings() -> None:
    base = cache_key("CPU : AVX2 = 1 |", "Xeon", (), 2, 0)
    assert base == cache_key("CPU : AVX2 = 1 |", "Xeon", (), 2, 0)
    others = {
        cache_key("CPU : AVX2 = 1 | CUDA : ARCHS = 890 |", "Xeon", ("RTX 4090",), 2, -1),
        cache_key("CPU : AVX2 = 1 |", "EPYC", (), 2, 0),
        cache_key("CPU : AVX2 = 1 |", "Xeon", (), 4, 0),
    }
    assert base not in others and len(others) == 3
