"""The host source against the real psutil of this machine (no hardware to stand in for)."""

from __future__ import annotations

import os
from pathlib import Path

import psutil

from worker.telemetry.host import HostSource


def test_host_readings_are_normalised_and_plausible(tmp_path: Path) -> None:
    source = HostSource([tmp_path])
    assert source.probe().available
    host = source.sample().host
    assert host is not None
    assert len(host.cpu_core_usage_ratio) == psutil.cpu_count()
    assert all(0.0 <= r <= 1.0 for r in (host.cpu_usage_ratio, *host.cpu_core_usage_ratio))
    # Checked against the kernel's own figures, not psutil's: "used" must leave out the
    # page cache a model load can reclaim, i.e. be MemTotal - MemAvailable.
    meminfo = _meminfo()
    assert host.memory_total_bytes == meminfo["MemTotal"]
    assert abs(host.memory_available_bytes - meminfo["MemAvailable"]) < 256 * 1024**2
    used = meminfo["MemTotal"] - meminfo["MemAvailable"]
    assert abs(host.memory_used_bytes - used) < 256 * 1024**2
    assert host.disk_path == str(tmp_path)
    assert 0 < host.disk_free_bytes <= host.disk_total_bytes
    rss = psutil.Process(os.getpid()).memory_info().rss
    assert abs(host.process_rss_bytes - rss) < 16 * 1024**2  # it moves a little between reads
    assert len(host.load_average) == 3


def test_a_model_dir_not_created_yet_reports_its_disk(tmp_path: Path) -> None:
    source = HostSource([tmp_path / "not" / "yet"])
    host = source.sample().host
    assert host is not None and host.disk_path == str(tmp_path)


def _meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes, by field name."""
    fields = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, value = line.split(":", 1)
        amount, *unit = value.split()
        fields[name] = int(amount) * (1024 if unit == ["kB"] else 1)
    return fields
