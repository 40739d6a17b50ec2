"""The Jetson source against recorded jtop client shapes (tests/support/fake_jtop.py): the
normalised samples of two boards, derived throttling, the skip reasons, a dying client and
closing. Expected numbers are worked out by hand from the fixture files."""

from __future__ import annotations

import dataclasses
import grp
import logging
import os
import socket
import stat
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from support.fake_jtop import (
    CANNOT_ACCESS,
    FakeJtop,
    JtopException,
    failing_opener,
    load_fixture,
)

from common.telemetry import Clock, Fan, GpuSample, PowerRail, Temperature
from worker.telemetry.jetson import (
    JTOP_START_TIMEOUT_S,
    JetsonSource,
    SocketAccess,
    read_socket_access,
    reconnect_delay_s,
    socket_access_problem,
)
from worker.telemetry.source import Reading, SourceError

KB = 1024
JTOP_GID = 994
SERVICE_FIX = "sudo systemctl enable --now jtop.service"

# A worker's user on a board whose jtop.service runs: /run/jtop.sock is root:jtop 0660 (what
# jetson-stats' service.py sets) and user llamaherd is in no group but its own.
OUTSIDER = SocketAccess(
    socket=Path("/run/jtop.sock"),
    exists=True,
    owner_uid=0,
    mode=0o660,
    group="jtop",
    group_gid=JTOP_GID,
    group_members=frozenset({"nvidia"}),
    user="llamaherd",
    uid=998,
    gids=frozenset({998}),
    primary_gid=998,
)
MEMBER = dataclasses.replace(
    OUTSIDER, group_members=frozenset({"nvidia", "llamaherd"}), gids=frozenset({998, JTOP_GID})
)


@pytest.fixture
def tegra_release(tmp_path: Path) -> Path:
    path = tmp_path / "nv_tegra_release"
    path.write_text("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64")
    return path


# MemAvailable (kB) as /proc/meminfo would give it beside each fixture: below jtop's
# MemFree + Buffers + Cached, as shmem and dirty pages are cached but cannot be dropped.
AGX_AVAILABLE_KB = 47_902_344  # jtop's free + buffers + cached: 48_814_108
NANO_AVAILABLE_KB = 3_402_116  # jtop's free + buffers + cached: 3_709_808


def _opened(
    fake: FakeJtop,
    tegra_release: Path,
    interval_s: float = 1.0,
    available_kb: int = AGX_AVAILABLE_KB,
) -> JetsonSource:
    source = JetsonSource(
        interval_s,
        open_jtop=fake.opener,
        tegra_release=tegra_release,
        mem_available=lambda: available_kb * KB,
    )
    probe = source.probe()
    assert probe.available, probe.reason
    return source


def _skip_reason(source: JetsonSource) -> str:
    probe = source.probe()
    assert not probe.available
    return probe.reason


# -- normalised samples: AGX Orin 64GB ---------------------------------------------------------


def test_agx_orin_gpu_is_the_unified_ram_in_base_units(tegra_release):
    reading = _opened(FakeJtop.from_fixture("agx-orin-64gb"), tegra_release).sample()

    assert reading.host is None
    assert reading.gpus == (
        GpuSample(
            index=0,
            name="Orin (nvgpu)",
            unified=True,
            compute_capability="8.7",
            memory_total_bytes=64284896 * KB,
            # As the host counts RAM: free is MemAvailable, not jtop's MemFree + Buffers +
            # Cached, which would call page cache the kernel cannot drop free.
            memory_used_bytes=(64284896 - AGX_AVAILABLE_KB) * KB,
            memory_free_bytes=AGX_AVAILABLE_KB * KB,
            utilization_ratio=96.3 / 100,
            temperature_celsius=61.437,
            power_watts=17.032,  # VDD_GPU_SOC, 17032 mW
            power_limit_watts=None,
            clocks=(Clock("gpu", 1300500 * 1e3),),
            throttle_reasons=(),  # 81900 mA limits, far above any rail; no zone has a max
        ),
    )


def test_agx_orin_jetson_sample(tegra_release):
    jetson = _opened(FakeJtop.from_fixture("agx-orin-64gb"), tegra_release).sample().jetson

    assert jetson is not None
    assert (jetson.model, jetson.module, jetson.soc, jetson.cuda_arch) == (
        "NVIDIA Jetson AGX Orin Developer Kit",
        "NVIDIA Jetson AGX Orin (64GB ram)",
        "tegra234",
        "8.7",
    )
    assert (jetson.l4t, jetson.jetpack) == ("36.4.3", "6.2")
    assert (jetson.nvpmodel, jetson.jetson_clocks) == ("MAXN", False)
    assert jetson.emc_utilization_ratio == 0.38
    assert jetson.emc_hertz == 3_199_000_000.0
    assert jetson.gpu_shared_bytes == 11534336 * KB
    assert jetson.temperatures == (
        Temperature("cpu", 58.281),
        Temperature("cv0", 55.156),
        Temperature("cv1", 54.968),
        Temperature("cv2", 55.468),
        Temperature("gpu", 61.437),
        Temperature("soc0", 55.75),
        Temperature("soc1", 56.187),
        Temperature("soc2", 54.906),
        Temperature("tj", 61.437),
    )
    assert jetson.power_rails == (
        PowerRail("VDDQ_VDD2_1V8AO", watts=2.751, average_watts=2.73, volts=4.984, amps=0.552),
        PowerRail("VDD_CPU_CV", watts=2.056, average_watts=2.104, volts=4.992, amps=0.412),
        PowerRail("VDD_GPU_SOC", watts=17.032, average_watts=16.89, volts=4.992, amps=3.412),
        PowerRail("VIN_SYS_5V0", watts=4.985, average_watts=4.96, volts=4.976, amps=1.002),
    )
    # No VDD_IN on this board: jtop's 'tot' is the sum of the rails, 2751+2056+17032+4985 mW.
    assert jetson.power_total_watts == 26.824
    assert jetson.fans == (Fan("pwmfan0", pytest.approx(106 / 255), 2244.0),)


# -- normalised samples: Orin Nano 8GB ---------------------------------------------------------


def test_orin_nano_gpu_has_no_power_of_its_own(tegra_release):
    fake = FakeJtop.from_fixture("orin-nano-8gb")
    (gpu,) = _opened(fake, tegra_release, available_kb=NANO_AVAILABLE_KB).sample().gpus

    assert gpu == GpuSample(
        index=0,
        name="Orin (nvgpu)",
        unified=True,
        compute_capability="8.7",
        memory_total_bytes=7790128 * KB,
        memory_used_bytes=(7790128 - NANO_AVAILABLE_KB) * KB,
        memory_free_bytes=NANO_AVAILABLE_KB * KB,
        utilization_ratio=0.875,
        temperature_celsius=53.468,
        power_watts=None,  # VDD_CPU_GPU_CV feeds the CPU and CV too
        clocks=(Clock("gpu", 612_000_000.0),),
    )


def test_orin_nano_jetson_sample(tegra_release):
    jetson = _opened(FakeJtop.from_fixture("orin-nano-8gb"), tegra_release).sample().jetson

    assert jetson is not None
    assert jetson.module == "NVIDIA Jetson Orin Nano (Developer kit)"
    assert (jetson.nvpmodel, jetson.jetson_clocks) == ("15W", True)
    assert (jetson.emc_utilization_ratio, jetson.emc_hertz) == (0.47, 2_133_000_000.0)
    assert jetson.gpu_shared_bytes == 2742272 * KB
    # cv0..cv2 read -256 (offline) on a board without DLA and are left out.
    assert [t.sensor for t in jetson.temperatures] == ["cpu", "gpu", "soc0", "soc1", "soc2", "tj"]
    assert jetson.temperatures[0] == Temperature("cpu", 52.156)
    # VDD_IN lives in jtop's 'tot'; it is listed first, as the measured board input.
    assert jetson.power_rails == (
        PowerRail("VDD_IN", watts=8.5, average_watts=8.42, volts=5.048, amps=1.684),
        PowerRail("VDD_CPU_GPU_CV", watts=2.999, average_watts=2.96, volts=5.032, amps=0.596),
        PowerRail("VDD_SOC", watts=1.957, average_watts=1.941, volts=5.032, amps=0.389),
    )
    assert jetson.power_total_watts == 8.5
    assert jetson.fans == (Fan("pwmfan0", pytest.approx(77 / 255), 1482.0),)


def test_samples_follow_the_service(tegra_release):
    fake = FakeJtop.from_fixture("orin-nano-8gb")
    source = _opened(fake, tegra_release)
    source.sample()

    fake.fixture["gpu"]["gpu"]["status"]["load"] = 12.0
    fake.fixture["jetson_clocks"]["enabled"] = False
    fake.fixture["nvpmodel"] = {"name": "MAXN_SUPER", "id": 2}
    reading = source.sample()

    assert reading.gpus[0].utilization_ratio == 0.12
    assert reading.jetson is not None
    assert (reading.jetson.jetson_clocks, reading.jetson.nvpmodel) == (False, "MAXN_SUPER")


# -- what a board may lack ---------------------------------------------------------------------


def test_missing_readings_are_none_not_zero(tegra_release):
    fake = FakeJtop.from_fixture("agx-orin-64gb")
    del fake.fixture["memory"]["EMC"]
    fake.fixture["power"] = {}  # no INA3221 found
    fake.fixture["fan"] = {}
    fake.fixture["nvpmodel"] = None
    fake.fixture["jetson_clocks"] = None
    del fake.fixture["gpu"]["gpu"]["status"]["load"]
    fake.fixture["temperature"]["gpu"] = {"temp": -256.0, "online": False}

    reading = _opened(fake, tegra_release).sample()

    gpu, jetson = reading.gpus[0], reading.jetson
    assert jetson is not None
    assert (gpu.utilization_ratio, gpu.temperature_celsius, gpu.power_watts) == (None, None, None)
    assert (jetson.emc_utilization_ratio, jetson.emc_hertz) == (None, None)
    assert (jetson.power_rails, jetson.power_total_watts, jetson.fans) == ((), None, ())
    assert (jetson.nvpmodel, jetson.jetson_clocks) == (None, None)


def test_unreadable_emc_and_unreadable_rails_are_not_readings(tegra_release):
    fake = FakeJtop.from_fixture("agx-orin-64gb")
    fake.fixture["memory"]["EMC"] = {}  # jtop's answer when the activity monitor is unreadable
    # Every rail unreadable: jtop drops them and still sums nothing into 'tot'.
    fake.fixture["power"] = {"rail": {}, "tot": {"power": 0, "avg": 0}}

    jetson = _opened(fake, tegra_release).sample().jetson

    assert jetson is not None
    assert (jetson.emc_utilization_ratio, jetson.emc_hertz) == (None, None)
    assert (jetson.power_rails, jetson.power_total_watts) == ((), None)


def test_emc_without_a_readable_rate_is_no_reading(tegra_release):
    fake = FakeJtop.from_fixture("agx-orin-64gb")
    # jtop's placeholder rate of 1 kHz, and the activity counter divided by it.
    fake.fixture["memory"]["EMC"] = {"cur": 1, "val": 1215000, "online": True}

    jetson = _opened(fake, tegra_release).sample().jetson

    assert jetson is not None
    assert (jetson.emc_utilization_ratio, jetson.emc_hertz) == (None, None)


def test_a_gpu_not_yet_found_by_the_service_still_reports_the_memory(tegra_release):
    fake = FakeJtop.from_fixture("orin-nano-8gb")
    fake.fixture["gpu"] = {}

    (gpu,) = _opened(fake, tegra_release).sample().gpus

    assert gpu.name == "Orin (nvgpu)" and gpu.memory_total_bytes == 7790128 * KB
    assert (gpu.utilization_ratio, gpu.clocks) == (None, ())


def test_unknown_soc_names_the_gpu_by_jtops_key(tegra_release):
    fake = FakeJtop.from_fixture("orin-nano-8gb")
    fake.fixture["board"]["hardware"]["SoC"] = "tegra999"

    (gpu,) = _opened(fake, tegra_release).sample().gpus

    assert gpu.name == "gpu"


def test_jetpack_5_upper_case_gpu_zone_is_the_gpu_temperature(tegra_release):
    fake = FakeJtop.from_fixture("orin-nano-8gb")
    zones = fake.fixture["temperature"]
    zones["GPU"] = zones.pop("gpu")

    (gpu,) = _opened(fake, tegra_release).sample().gpus

    assert gpu.temperature_celsius == 53.468


def test_thor_nvml_gpu_clock_power_and_temperature(tegra_release):
    fake = FakeJtop.from_fixture("agx-orin-64gb")
    fake.fixture["board"]["hardware"].update({"SoC": "tegra264", "CUDA Arch BIN": "11.0"})
    del fake.fixture["temperature"]["gpu"]
    thor = {
        "type": "integrated",
        "status": {
            "load": 64.0,
            "3d_scaling": None,
            "railgate": None,
            "tpc_pg_mask": None,
            "temperature": 57,
            "power_draw": 38.25,
            "power_limit": 120.0,
        },
        "freq": {"governor": "nvhost_podgov", "cur": 1575, "max": 1575, "min": 0},
        "power_control": "nvml",
    }
    fake.fixture["gpu"] = {"Thor": thor}
    source = _opened(fake, tegra_release)

    (gpu,) = source.sample().gpus

    assert (gpu.name, gpu.compute_capability) == ("NVIDIA Thor", "11.0")
    assert gpu.clocks == (Clock("gpu", 1575e6),)  # NVML's MHz
    assert (gpu.temperature_celsius, gpu.power_watts, gpu.power_limit_watts) == (57.0, 38.25, 120.0)

    thor["freq"]["GPC"] = [1574400]  # devfreq's kHz, when the node exists
    assert source.sample().gpus[0].clocks == (Clock("gpu", 1574400e3),)


# -- fans --------------------------------------------------------------------------------------


def test_a_fan_with_two_channels_gives_two_fans_and_rpm_only_where_measured(tegra_release):
    fake = FakeJtop.from_fixture("agx-orin-64gb")
    fake.fixture["fan"] = {"pwmfan": {"speed": [50.0, 100.0], "rpm": [2600], "profile": "manual"}}

    jetson = _opened(fake, tegra_release).sample().jetson

    assert jetson is not None
    assert jetson.fans == (Fan("pwmfan0", 0.5, 2600.0), Fan("pwmfan1", 1.0, None))


# -- throttling derived from limits ------------------------------------------------------------


def test_a_rail_at_its_warning_current_is_power_throttling(tegra_release):
    fake = FakeJtop.from_fixture("agx-orin-64gb")
    source = _opened(fake, tegra_release)
    fake.fixture["power"]["rail"]["VDD_GPU_SOC"]["curr"] = 81900  # == warn
    fake.fixture["power"]["rail"]["VDD_CPU_CV"]["curr"] = 81899  # just below

    assert source.sample().gpus[0].throttle_reasons == ("power:VDD_GPU_SOC",)


def test_the_board_input_counts_too_and_rails_without_limits_never_do(tegra_release):
    fake = FakeJtop.from_fixture("orin-nano-8gb")
    source = _opened(fake, tegra_release)
    fake.fixture["power"]["rail"]["VDD_SOC"]["curr"] = 99999  # no 'warn' on this board
    assert source.sample().gpus[0].throttle_reasons == ()

    fake.fixture["power"]["tot"]["warn"] = 1600  # VDD_IN draws 1684 mA
    assert source.sample().gpus[0].throttle_reasons == ("power:VDD_IN",)


def test_a_zone_at_its_max_is_thermal_throttling(tegra_release):
    fake = FakeJtop.from_fixture("agx-orin-64gb")
    zones = fake.fixture["temperature"]
    # hwmon sensors are the ones jtop gives limits; an unreadable limit reads -256.
    zones["nvme Composite"] = {"temp": 81.85, "max": 81.85, "crit": 84.85, "online": True}
    zones["nvme Sensor 1"] = {"temp": 70.85, "max": 80.0, "crit": -256, "online": True}
    zones["tmp451 local"] = {"temp": 45.0, "max": -256, "crit": -256, "online": True}
    zones["nvme Sensor 2"] = {"temp": -256, "max": -256, "crit": -256, "online": False}

    (gpu,) = _opened(fake, tegra_release).sample().gpus

    assert gpu.throttle_reasons == ("thermal:nvme Composite",)


# -- skips -------------------------------------------------------------------------------------


def test_not_a_jetson_without_tegra_release(tmp_path):
    fake = FakeJtop.from_fixture("agx-orin-64gb")
    missing = tmp_path / "nv_tegra_release"

    reason = _skip_reason(JetsonSource(open_jtop=fake.opener, tegra_release=missing))

    assert reason == f"not a Jetson (no {missing})"
    assert fake.start_calls == 0


def test_missing_jetson_stats_says_what_to_install(tegra_release):
    opener = failing_opener(ImportError("No module named 'jtop'"))

    reason = _skip_reason(JetsonSource(open_jtop=opener, tegra_release=tegra_release))

    assert "pip install 'llamaherd[jetson]'" in reason
    assert "jtop.service" in reason and "No module named 'jtop'" in reason


def test_default_opener_without_jetson_stats_skips(tegra_release, monkeypatch):
    monkeypatch.setitem(sys.modules, "jtop", None)  # makes `import jtop` raise ImportError

    reason = _skip_reason(JetsonSource(tegra_release=tegra_release))

    assert "pip install 'llamaherd[jetson]'" in reason


def test_service_not_running_gives_the_librarys_message_and_the_fix(tegra_release):
    fake = FakeJtop.from_fixture("agx-orin-64gb", service_running=False)
    source = JetsonSource(
        open_jtop=fake.opener, tegra_release=tegra_release, socket_access=lambda: MEMBER
    )

    reason = _skip_reason(source)

    assert "The jtop.service is not active. Please run: sudo jtop --install-service" in reason
    assert "sudo systemctl enable --now jtop.service" in reason
    assert "\n" not in reason


def test_a_permission_error_the_groups_do_not_explain_is_not_called_a_stopped_service(
    tegra_release,
):
    # The groups allow it, yet the socket refuses: its owner or mode is not jtop.service's.
    for refusal in (PermissionError(13, "Permission denied"), JtopException(CANNOT_ACCESS)):
        reason = _skip_reason(
            JetsonSource(
                open_jtop=failing_opener(refusal),
                tegra_release=tegra_release,
                socket_access=lambda: MEMBER,
            )
        )

        assert reason.startswith("jtop.service refused this worker: ")
        assert "/run/jtop.sock should be root:jtop mode 0660" in reason
        assert "enable --now" not in reason


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("Authentication with jetson-stats server failed", "did not accept this client's key"),
        ("Mismatch of Python versions between library and service", "another Python major"),
        ("Lost connection with jtop server", "closed the connection while the client started"),
        ("Error connection", "closed the connection while the client started"),
    ],
)
def test_the_librarys_other_refusals_get_their_own_advice(tegra_release, message, expected):
    reason = _skip_reason(
        JetsonSource(
            open_jtop=failing_opener(JtopException(message)),
            tegra_release=tegra_release,
            socket_access=lambda: MEMBER,
        )
    )

    assert expected in reason and message in reason
    assert "enable --now" not in reason


# -- a service that accepts and never answers ----------------------------------------------------


def test_a_service_that_never_answers_is_skipped_after_the_start_timeout(tegra_release):
    fake = FakeJtop.from_fixture("agx-orin-64gb", service_hung=True)
    source = JetsonSource(open_jtop=fake.opener, tegra_release=tegra_release, start_timeout_s=0.1)

    started = time.monotonic()
    reason = _skip_reason(source)
    elapsed = time.monotonic() - started

    assert 0.1 <= elapsed < 2.0
    assert reason == (
        "jtop.service accepted the connection but did not answer within 0.1 s "
        "(a hung or overloaded service: sudo systemctl restart jtop.service)"
    )
    # Should the service answer after all, the abandoned client is closed, not leaked.
    fake.hang_released.set()
    _wait_for(lambda: fake.close_calls == 1)
    with pytest.raises(SourceError, match="not open"):
        source.sample()


def test_the_default_start_timeout_is_bounded():
    assert 0 < JTOP_START_TIMEOUT_S <= 30


def _wait_for(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# -- the two ways a running jtop.service refuses a worker ---------------------------------------


def test_another_major_minor_of_jetson_stats_names_both_versions_and_the_pin(tegra_release):
    fake = FakeJtop.from_fixture("agx-orin-64gb", service_version="4.3.0", client_version="4.2.12")

    reason = _skip_reason(
        JetsonSource(
            open_jtop=fake.opener, tegra_release=tegra_release, socket_access=lambda: MEMBER
        )
    )

    assert reason == (
        "jtop.service runs jetson-stats 4.3.0, this worker has 4.2.12: install "
        f"jetson-stats==4.3.* in the worker's environment ({sys.prefix})"
    )


def test_a_newer_client_is_refused_too(tegra_release):
    # jetson-stats compares major.minor both ways: a newer client is no better than an older.
    fake = FakeJtop.from_fixture("agx-orin-64gb", service_version="4.2.12")

    reason = _skip_reason(JetsonSource(open_jtop=fake.opener, tegra_release=tegra_release))

    assert reason.startswith("jtop.service runs jetson-stats 4.2.12, this worker has 7.2.2:")
    assert "install jetson-stats==4.2.*" in reason


def test_a_user_outside_the_sockets_group_is_told_the_usermod(tegra_release):
    fake = FakeJtop.from_fixture("agx-orin-64gb", socket_denied=True)

    reason = _skip_reason(
        JetsonSource(
            open_jtop=fake.opener, tegra_release=tegra_release, socket_access=lambda: OUTSIDER
        )
    )

    assert reason == (
        "user llamaherd is not in group jtop (owner of /run/jtop.sock): "
        "usermod -aG jtop llamaherd, then restart the worker"
    )


def test_a_user_added_to_the_group_after_the_worker_started_is_told_to_restart(tegra_release):
    added = dataclasses.replace(OUTSIDER, group_members=frozenset({"llamaherd"}))
    fake = FakeJtop.from_fixture("agx-orin-64gb", socket_denied=True)

    reason = _skip_reason(
        JetsonSource(
            open_jtop=fake.opener, tegra_release=tegra_release, socket_access=lambda: added
        )
    )

    assert reason == (
        "user llamaherd is in group jtop (owner of /run/jtop.sock), but this worker started "
        "before it was added: restart the worker"
    )


def test_a_stopped_service_and_a_missing_group_membership_are_both_named(tegra_release):
    # No socket while the service is down: the group it will get is jtop's.
    no_socket = dataclasses.replace(OUTSIDER, exists=False)
    fake = FakeJtop.from_fixture("agx-orin-64gb", service_running=False)

    reason = _skip_reason(
        JetsonSource(
            open_jtop=fake.opener, tegra_release=tegra_release, socket_access=lambda: no_socket
        )
    )

    assert "The jtop.service is not active" in reason and SERVICE_FIX in reason
    assert reason.endswith(
        "; also, user llamaherd is not in group jtop (the group jtop.service gives "
        "/run/jtop.sock): usermod -aG jtop llamaherd, then restart the worker"
    )


def test_a_healthy_connection_probes_ok_whatever_the_patch_versions(tegra_release):
    fake = FakeJtop.from_fixture("orin-nano-8gb", service_version="7.2.0", client_version="7.2.2")
    source = JetsonSource(
        open_jtop=fake.opener, tegra_release=tegra_release, socket_access=lambda: MEMBER
    )

    assert source.probe().available
    assert source.sample().jetson is not None
    assert fake.start_calls == 1


# -- who may open the socket (pure) -------------------------------------------------------------


def test_members_root_and_the_owner_may_connect():
    assert socket_access_problem(MEMBER) is None
    assert socket_access_problem(dataclasses.replace(OUTSIDER, uid=0)) is None
    assert socket_access_problem(dataclasses.replace(OUTSIDER, owner_uid=998)) is None
    assert socket_access_problem(dataclasses.replace(OUTSIDER, mode=0o666)) is None


def test_a_socket_the_owner_cannot_write_does_not_let_the_owner_in():
    owner_read_only = dataclasses.replace(OUTSIDER, owner_uid=998, mode=0o460)
    assert socket_access_problem(owner_read_only) is not None


def test_the_login_group_counts_as_membership_for_the_restart_advice():
    login_group = dataclasses.replace(OUTSIDER, primary_gid=JTOP_GID)
    problem = socket_access_problem(login_group)
    assert problem is not None and "restart the worker" in problem and "usermod" not in problem


def test_without_a_jtop_group_nothing_is_blamed_on_groups():
    never_installed = dataclasses.replace(OUTSIDER, exists=False, group_gid=None)
    assert socket_access_problem(never_installed) is None


# -- reading the facts from this machine ---------------------------------------------------------


def test_read_socket_access_reads_a_real_socket(tmp_path):
    path = tmp_path / "jtop.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        os.chmod(path, 0o660)

        access = read_socket_access(path)

    info = path.stat()
    assert stat.S_ISSOCK(info.st_mode)
    assert access.exists and access.socket == path
    assert (access.owner_uid, access.mode) == (info.st_uid, 0o660)
    assert (access.group_gid, access.group) == (info.st_gid, grp.getgrgid(info.st_gid).gr_name)
    assert access.uid == os.geteuid()
    assert access.gids == {os.getegid(), *os.getgroups()}


def test_read_socket_access_without_a_socket_names_the_group_the_service_would_give(tmp_path):
    own_group = grp.getgrgid(os.getegid())

    access = read_socket_access(tmp_path / "missing.sock", group=own_group.gr_name)
    assert not access.exists
    assert (access.group, access.group_gid) == (own_group.gr_name, own_group.gr_gid)
    assert access.group_members == frozenset(own_group.gr_mem)

    unknown = read_socket_access(tmp_path / "missing.sock", group="no-such-group-llamaherd")
    assert unknown.group_gid is None and socket_access_problem(unknown) is None


def test_probe_does_not_raise_on_the_unexpected(tegra_release):
    broken = failing_opener(RuntimeError("boom"))
    assert "RuntimeError: boom" in _skip_reason(
        JetsonSource(open_jtop=broken, tegra_release=tegra_release)
    )

    fake = FakeJtop.from_fixture("agx-orin-64gb")
    del fake.fixture["board"]["hardware"]
    reason = _skip_reason(JetsonSource(open_jtop=fake.opener, tegra_release=tegra_release))
    assert "KeyError" in reason
    assert fake.close_calls == 1  # the half-open client is not left running


def test_the_interval_reaches_the_client(tegra_release):
    fake = FakeJtop.from_fixture("orin-nano-8gb")
    _opened(fake, tegra_release, interval_s=0.5)
    assert fake.requested_interval == 0.5


# -- failures and closing ----------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_restarted_service_is_reconnected_with_backoff_and_the_gap_reported(tegra_release):
    fake = FakeJtop.from_fixture("agx-orin-64gb")
    clock = _Clock()
    source = JetsonSource(
        open_jtop=fake.opener,
        tegra_release=tegra_release,
        mem_available=lambda: AGX_AVAILABLE_KB * KB,
        clock=clock,
    )
    assert source.probe().available
    source.sample()

    fake.die()  # jtop.service stops: the figures stay readable, as in the real client
    fake.service_running = False
    with pytest.raises(SourceError, match="jtop stopped: JtopException: Lost connection"):
        source.sample()
    assert fake.close_calls == 1  # the dead client is closed

    clock.now += 0.5  # the first attempt goes at once, and finds no service
    with pytest.raises(SourceError) as first:
        source.sample()
    assert str(first.value).startswith(
        "jtop.service lost 0 s ago; reconnection attempt 1 failed (jtop cannot reach "
        "jtop.service: JtopException: The jtop.service is not active."
    )
    assert str(first.value).endswith("; next in 1 s")

    clock.now += 0.5  # too early for the next attempt: nothing is tried
    with pytest.raises(SourceError, match="lost 1 s ago; reconnection attempt 2 in 0 s"):
        source.sample()
    assert fake.start_calls == 2

    clock.now += 0.5
    with pytest.raises(SourceError, match=r"attempt 2 failed .*; next in 2 s"):
        source.sample()
    assert fake.start_calls == 3

    fake.service_running = True  # the service is back
    clock.now += 2
    reading = source.sample()

    assert fake.start_calls == 4
    assert reading.jetson is not None and reading.gpus[0].utilization_ratio == 0.963
    source.sample()  # and stays connected
    assert fake.start_calls == 4


def test_a_reconnection_to_a_hung_service_is_one_attempt_reported_until_it_ends(tegra_release):
    fake = FakeJtop.from_fixture("agx-orin-64gb")
    clock = _Clock()
    source = JetsonSource(
        open_jtop=fake.opener,
        tegra_release=tegra_release,
        mem_available=lambda: AGX_AVAILABLE_KB * KB,
        clock=clock,
        start_timeout_s=5.0,
    )
    assert source.probe().available
    fake.die()
    with pytest.raises(SourceError):
        source.sample()

    fake.service_hung = True
    with pytest.raises(SourceError, match=r"lost 0 s ago; reconnecting$"):
        source.sample()
    clock.now += 6
    for _ in range(3):
        with pytest.raises(SourceError, match="did not answer within 6 s"):
            source.sample()
    assert fake.start_calls == 2  # one attempt at a time, however long it hangs

    fake.hang_released.set()  # the hung call returns (its service's process ended)
    assert _sample_eventually(source).jetson is not None
    assert fake.start_calls == 2


def _sample_eventually(source: JetsonSource, timeout_s: float = 5.0) -> Reading:
    """The first sample that succeeds: a finished attempt is picked up by the next sample."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return source.sample()
        except SourceError:
            assert time.monotonic() < deadline, "no reading in time"
            time.sleep(0.01)


def test_reconnection_delays_double_up_to_a_limit():
    assert [reconnect_delay_s(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_close_during_a_reconnection_closes_the_late_client(tegra_release):
    fake = FakeJtop.from_fixture("agx-orin-64gb")
    source = _opened(fake, tegra_release)
    fake.die()
    with pytest.raises(SourceError):
        source.sample()
    fake.service_hung = True
    with pytest.raises(SourceError, match="reconnecting"):
        source.sample()

    source.close()
    fake.hang_released.set()

    _wait_for(lambda: fake.close_calls == 2)  # the dead client, then the late one
    with pytest.raises(SourceError, match="not open"):
        source.sample()


def test_a_client_whose_thread_ended_without_an_error_raises_source_error(tegra_release):
    fake = FakeJtop.from_fixture("agx-orin-64gb")
    source = _opened(fake, tegra_release)

    fake.stop_quietly()

    with pytest.raises(SourceError, match="reader thread has ended"):
        source.sample()


def test_a_failing_read_raises_source_error(tegra_release):
    fake = FakeJtop.from_fixture("agx-orin-64gb")
    source = _opened(fake, tegra_release)
    del fake.fixture["memory"]["RAM"]

    with pytest.raises(SourceError, match="jtop readings failed: KeyError: 'RAM'"):
        source.sample()


def test_sample_before_probe_raises_source_error():
    with pytest.raises(SourceError, match="not open"):
        JetsonSource(open_jtop=FakeJtop.from_fixture("agx-orin-64gb").opener).sample()


def test_close_closes_the_client_once_and_sampling_then_fails(tegra_release):
    fake = FakeJtop.from_fixture("agx-orin-64gb")
    source = _opened(fake, tegra_release)

    source.close()
    source.close()

    assert fake.close_calls == 1
    with pytest.raises(SourceError):
        source.sample()


def test_close_never_raises(tegra_release):
    fake = FakeJtop.from_fixture("agx-orin-64gb")
    source = _opened(fake, tegra_release)

    def failing_close() -> None:
        raise JtopException("already closed")

    fake.close = failing_close  # type: ignore[method-assign]
    source.close()
    JetsonSource(tegra_release=tegra_release).close()  # never opened

    with pytest.raises(SourceError, match="not open"):
        source.sample()


def test_probing_again_closes_the_previous_client(tegra_release):
    first, second = FakeJtop.from_fixture("agx-orin-64gb"), FakeJtop.from_fixture("orin-nano-8gb")
    clients = iter([first, second])

    def opener(interval: float) -> FakeJtop:
        return next(clients).opener(interval)

    source = JetsonSource(open_jtop=opener, tegra_release=tegra_release)

    assert source.probe().available and source.probe().available

    assert first.close_calls == 1
    assert source.sample().jetson is not None
    assert source.sample().jetson.module == "NVIDIA Jetson Orin Nano (Developer kit)"


def test_fixtures_are_consistent():
    for name in ("agx-orin-64gb", "orin-nano-8gb"):
        data = load_fixture(name)
        ram = data["memory"]["RAM"]
        assert 0 < ram["used"] <= ram["tot"] and ram["shared"] <= ram["used"]
        rails = [*data["power"]["rail"].values()]
        if "name" in data["power"]["tot"]:
            rails.append(data["power"]["tot"])
        for rail in rails:  # jtop computes power as int(volt * curr / 1000)
            assert rail["power"] == int(rail["volt"] * (float(rail["curr"]) / 1000))
        assert "jetson-stats 7.2.2" in data["_about"]


# -- jetson-stats 4.x: USB-C power-delivery ports listed as rails ---------------------------------


def _usb_c_port(volts_mv: int, amps_ma: int) -> dict[str, object]:
    # What jetson-stats 4.2/4.3 reads from /sys/class/power_supply/ucsi-source-psy-*: the
    # negotiated voltage and current (micro-units // 1000), current_max as 'warn'.
    power = int(volts_mv * (amps_ma / 1000))
    return {"volt": volts_mv, "curr": amps_ma, "warn": amps_ma, "online": True,
            "power": power, "avg": power}  # fmt: skip


def test_usb_c_ports_are_neither_rails_nor_in_the_board_total(tegra_release, caplog):
    fake = FakeJtop.from_fixture("agx-orin-64gb")  # no VDD_IN: the total is a sum of rails
    power = fake.fixture["power"]
    ports = {"USBC000:001": _usb_c_port(20000, 5000), "1-00081": _usb_c_port(5000, 3000)}
    power["rail"].update(ports)
    # jetson-stats 4.x's own sum, ports included: 26824 + 100000 + 15000 mW.
    power["tot"] = {"power": 141824, "avg": 141824}

    with caplog.at_level(logging.INFO, logger="worker.telemetry.jetson"):
        source = _opened(fake, tegra_release)
        reading = source.sample()
        source.sample()

    jetson = reading.jetson
    assert jetson is not None
    assert jetson.power_total_watts == pytest.approx(26.824)
    assert [r.name for r in jetson.power_rails] == [
        "VDDQ_VDD2_1V8AO",
        "VDD_CPU_CV",
        "VDD_GPU_SOC",
        "VIN_SYS_5V0",
    ]
    # A port at its negotiated current (curr == warn) is not power throttling either.
    assert reading.gpus[0].throttle_reasons == ()
    (logged,) = [r.getMessage() for r in caplog.records if "USB-C" in r.getMessage()]
    assert logged.endswith(": USBC000:001, 1-00081")


def test_a_measured_board_input_stays_the_total_beside_usb_c_ports(tegra_release):
    fake = FakeJtop.from_fixture("orin-nano-8gb")
    fake.fixture["power"]["rail"]["USBC000:001"] = _usb_c_port(15000, 3000)

    jetson = _opened(fake, tegra_release, available_kb=NANO_AVAILABLE_KB).sample().jetson

    assert jetson is not None and jetson.power_total_watts == 8.5
    assert "USBC000:001" not in [r.name for r in jetson.power_rails]


# -- JetPack when jetson-stats does not know the board's L4T ---------------------------------------


def test_jetpack_from_l4t_when_jetson_stats_reports_none(tegra_release):
    # jetson-stats 4.2.12's table ends at 36.4.0: on L4T 36.4.3 its 'Jetpack' is "".
    fake = FakeJtop.from_fixture("agx-orin-64gb")
    fake.fixture["board"]["hardware"]["Jetpack"] = ""

    jetson = _opened(fake, tegra_release).sample().jetson

    assert jetson is not None and (jetson.l4t, jetson.jetpack) == ("36.4.3", "6.2")


def test_l4t_from_nv_tegra_release_when_jtop_has_none(tmp_path):
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic\n")
    fake = FakeJtop.from_fixture("orin-nano-8gb")
    fake.fixture["board"]["hardware"].update({"L4T": "", "Jetpack": ""})

    jetson = _opened(fake, release, available_kb=NANO_AVAILABLE_KB).sample().jetson

    assert jetson is not None and (jetson.l4t, jetson.jetpack) == ("36.4.0", "6.1")


def test_jtops_own_jetpack_is_kept(tegra_release):
    fake = FakeJtop.from_fixture("agx-orin-64gb")
    fake.fixture["board"]["hardware"]["Jetpack"] = "6.2 (custom)"

    jetson = _opened(fake, tegra_release).sample().jetson

    assert jetson is not None and jetson.jetpack == "6.2 (custom)"


# -- the real jetson-stats client (where installed) against a service that never answers -----------


def test_the_real_jtop_client_against_a_silent_service_is_bounded(tmp_path, monkeypatch):
    """jetson-stats is not in the venv (it is the jetson extra); run with it on PYTHONPATH
    (pip install --target DIR jetson-stats==7.2.2, or 4.2.12 / 4.3.2) to exercise it."""
    pytest.importorskip("jtop")
    service = sys.modules["jtop.service"]
    path = tmp_path / "jtop.sock"
    monkeypatch.setattr(service, "JTOP_PIPE", str(path))  # JtopManager's address
    accepted: list[socket.socket] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen()
        # Accepts, then never says a word: the client waits in its authentication handshake.
        thread = threading.Thread(target=lambda: accepted.append(server.accept()[0]), daemon=True)
        thread.start()
        source = JetsonSource(tegra_release=tmp_path / "nv_tegra_release", start_timeout_s=0.5)
        (tmp_path / "nv_tegra_release").write_text("# R36 (release), REVISION: 4.3\n")

        started = time.monotonic()
        probe = source.probe()
        elapsed = time.monotonic() - started

        assert not probe.available and "did not answer within 0.5 s" in probe.reason
        assert elapsed < 3.0
        thread.join(timeout=5)
        for connection in accepted:
            connection.close()  # the hung client gets EOF, and its thread ends


def test_by_default_free_gpu_memory_is_the_kernels_mem_available(tegra_release, monkeypatch):
    fake = FakeJtop.from_fixture("agx-orin-64gb")
    source = JetsonSource(open_jtop=fake.opener, tegra_release=tegra_release)
    assert source.probe().available
    memory = psutil.virtual_memory()
    monkeypatch.setattr(
        psutil, "virtual_memory", lambda: memory._replace(available=AGX_AVAILABLE_KB * KB)
    )

    (gpu,) = source.sample().gpus

    assert gpu.memory_free_bytes == AGX_AVAILABLE_KB * KB
