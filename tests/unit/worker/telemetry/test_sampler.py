"""Source selection and the sampler, over the real sources with only the libraries' boundary
stood in: a recorded jtop client, a recorded pynvml module, or a missing library."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import psutil
import pytest
from support.fake_jtop import FakeJtop
from support.fake_nvml import FakeNvml

from worker.telemetry.host import HostSource
from worker.telemetry.jetson import JetsonSource
from worker.telemetry.nvml import NvmlSource
from worker.telemetry.sampler import TelemetrySampler, select_sources


@pytest.fixture
def tegra_release(tmp_path: Path) -> Path:
    path = tmp_path / "nv_tegra_release"
    path.write_text("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64")
    return path


def no_pynvml() -> None:
    raise ImportError("No module named 'pynvml'")


def test_a_jetson_is_read_through_jtop_and_nvml_leaves_its_gpu_to_jtop(
    tegra_release: Path,
) -> None:
    jtop = FakeJtop.from_fixture("agx-orin-64gb")
    nvml = FakeNvml.from_fixture("jetson-orin")
    selection = select_sources(
        [JetsonSource(open_jtop=jtop.opener, tegra_release=tegra_release),
         NvmlSource(nvml.module, on_jetson=lambda: True)],
        HostSource(),
    )  # fmt: skip
    assert selection.names == ("jetson", "host")
    (reason,) = selection.skipped
    assert reason.startswith("nvml: GPU 0 (Orin (nvgpu)) is a Jetson's integrated GPU;")
    assert nvml.count("nvmlShutdown") == 1  # probed, and closed again


def test_a_jetson_style_board_with_a_discrete_gpu_reads_both(tegra_release: Path) -> None:
    # IGX Orin in dGPU mode: jtop reads the Orin GPU and the board; NVML lists only the card,
    # as its GPU 0, which would collide with the Orin GPU's index.
    jtop = FakeJtop.from_fixture("agx-orin-64gb")
    nvml = FakeNvml.from_fixture("x86-rtx4090")
    selection = select_sources(
        [JetsonSource(open_jtop=jtop.opener, tegra_release=tegra_release,
                      mem_available=lambda: 40 * 2**30),
         NvmlSource(nvml.module, on_jetson=lambda: True)],
        HostSource(),
    )  # fmt: skip
    assert selection.names == ("jetson", "nvml", "host") and selection.skipped == ()

    sample = TelemetrySampler(selection, 1.0).sample_now()

    assert sample.sources == ("jetson", "nvml", "host") and sample.jetson is not None
    assert [(g.index, g.name, g.unified) for g in sample.gpus] == [
        (0, "Orin (nvgpu)", True),
        (1, "NVIDIA GeForce RTX 4090", False),
    ]


def test_a_pc_with_an_nvidia_gpu_is_read_through_nvml(tmp_path: Path) -> None:
    nvml = FakeNvml.from_fixture("x86-rtx4090")
    selection = select_sources(
        [JetsonSource(tegra_release=tmp_path / "absent"),
         NvmlSource(nvml.module, on_jetson=lambda: False)],
        HostSource(),
    )  # fmt: skip
    assert selection.names == ("nvml", "host")
    assert selection.skipped == (f"jetson: not a Jetson (no {tmp_path / 'absent'})",)


def test_a_plain_pc_keeps_the_host_and_says_why_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="worker.telemetry.sampler"):
        selection = select_sources(
            [JetsonSource(tegra_release=tmp_path / "absent"),
             NvmlSource(opener=no_pynvml, on_jetson=lambda: False)],
            HostSource(),
        )  # fmt: skip
    assert selection.names == ("host",)
    jetson_reason, nvml_reason = selection.skipped
    assert jetson_reason.startswith("jetson: not a Jetson")
    assert nvml_reason.startswith("nvml: ") and "nvidia-ml-py" in nvml_reason
    skips = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert skips == [f"telemetry source skipped: {r}" for r in selection.skipped]


def test_a_sample_merges_every_source(tmp_path: Path) -> None:
    nvml = FakeNvml.from_fixture("x86-2gpu-rtx3090-rtx3060")
    selection = select_sources([NvmlSource(nvml.module, on_jetson=lambda: False)], HostSource())
    sampler = TelemetrySampler(selection, 1.0, wall_clock=lambda: 1234.5)
    sample = sampler.sample_now()
    assert sample.taken_at == 1234.5 and sample.sources == ("nvml", "host")
    assert [g.index for g in sample.gpus] == [0, 1]
    assert sample.host is not None and sample.host.memory_total_bytes > 0
    assert sample.jetson is None
    assert sampler.latest is sample


def test_a_jetson_sample_has_its_gpu_and_board(tegra_release: Path) -> None:
    jtop = FakeJtop.from_fixture("orin-nano-8gb")
    source = JetsonSource(open_jtop=jtop.opener, tegra_release=tegra_release)
    sample = TelemetrySampler(select_sources([source], HostSource()), 1.0).sample_now()
    assert sample.sources == ("jetson", "host")
    (gpu,) = sample.gpus
    assert gpu.unified and sample.jetson is not None


def test_a_failing_source_is_left_out_and_reported_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    nvml = FakeNvml.from_fixture("x86-rtx4090")
    sampler = TelemetrySampler(
        select_sources([NvmlSource(nvml.module, on_jetson=lambda: False)], HostSource()), 1.0
    )
    nvml.lose_gpu(0)
    with caplog.at_level(logging.WARNING, logger="worker.telemetry.sampler"):
        first, second = sampler.sample_now(), sampler.sample_now()
    for sample in (first, second):
        assert sample.gpus == () and sample.sources == ("host",) and sample.host is not None
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(failures) == 1 and "nvml" in failures[0].getMessage()


def test_the_thread_samples_at_its_interval_and_stop_closes_sources() -> None:
    nvml = FakeNvml.from_fixture("x86-rtx4090")
    sampler = TelemetrySampler(
        select_sources([NvmlSource(nvml.module, on_jetson=lambda: False)], HostSource()), 0.05
    )
    seen = threading.Semaphore(0)
    sampler.on_sample(lambda _sample: seen.release())
    sampler.start()
    try:
        for _ in range(3):
            assert seen.acquire(timeout=5), "no sample from the sampler thread"
    finally:
        sampler.stop()
    assert nvml.count("nvmlShutdown") == 1


def test_a_source_raising_anything_is_left_out_and_the_others_still_read(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    nvml = FakeNvml.from_fixture("x86-rtx4090")
    now = [100.0]
    sampler = TelemetrySampler(
        select_sources([NvmlSource(nvml.module, on_jetson=lambda: False)], HostSource()),
        1.0,
        wall_clock=lambda: now[0],
    )

    def broken() -> None:
        raise RuntimeError("psutil broke")

    # An error psutil is not documented to raise: HostSource lets it through.
    monkeypatch.setattr(psutil, "virtual_memory", broken)
    with caplog.at_level(logging.INFO, logger="worker.telemetry.sampler"):
        failed = sampler.sample_now()  # start() runs this first: a raise failed worker start
        now[0] = 104.5
        monkeypatch.undo()
        recovered = sampler.sample_now()

    assert failed.sources == ("nvml",) and len(failed.gpus) == 1
    assert recovered.sources == ("nvml", "host")
    messages = [r.getMessage() for r in caplog.records]
    assert "telemetry source host failed: RuntimeError: psutil broke; leaving its readings out" in (
        messages
    )
    assert "telemetry source host is reading again after a 4.5 s gap in its readings" in messages
