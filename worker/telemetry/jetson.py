"""The Jetson source: the integrated GPU, the unified RAM it allocates from, EMC, power rails,
thermal zones, fans and power mode of an NVIDIA Jetson, read through jetson-stats' `jtop`
client. jtop itself reads nothing: it connects to jetson-stats' root service (jtop.service)
over a socket, and a thread of the client copies the service's latest figures every interval.

Units as jtop gives them (jetson-stats 7.x): memory in kB, frequencies in kHz, EMC and GPU load
in percent, rails in mV/mA/mW, temperatures in Celsius with -256 for a zone it cannot read,
fan speed in percent. Everything leaves here in base units (see samples.py).

Two things keep a worker from connecting on a board where jtop.service runs, and the probe
names whichever it is: the client refuses a service of another major.minor version
(jetson-stats' compare_versions), and the service's socket /run/jtop.sock is mode 0660,
owned by root and group jtop, so a user outside that group is refused. The group is checked
from the socket's owner and this process's groups (os.stat, os.getgroups, grp), which needs
no answer from the service.
"""

from __future__ import annotations

import contextlib
import dataclasses
import grp
import logging
import os
import pwd
import re
import stat
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from common.telemetry import Clock, Fan, GpuSample, JetsonSample, PowerRail, Temperature
from worker.telemetry.jetpack import jetpack_for_l4t, l4t_from_tegra_release
from worker.telemetry.source import Probe, Reading, SourceError, TelemetrySource

log = logging.getLogger(__name__)

TEGRA_RELEASE = Path("/etc/nv_tegra_release")
SERVICE_HINT = "sudo systemctl enable --now jtop.service"
RESTART_HINT = "sudo systemctl restart jtop.service"
# jtop's start() waits on the service with no timeout (it hands its wait to Queue.get as
# `block`, not `timeout`), so a service that accepts the connection and never answers would
# hang the worker's start. 10 s is far above a healthy service's answer (well under 1 s).
JTOP_START_TIMEOUT_S = 10.0
# After jtop.service went away: the first reconnection at once, then 1, 2, 4 ... 30 s apart.
JTOP_RECONNECT_MIN_S = 1.0
JTOP_RECONNECT_MAX_S = 30.0
# How long one sample() waits for a reconnection under way before reporting the gap: the
# sampler thread reads the other sources too.
_SAMPLE_WAIT_S = 0.2
KIB = 1024
OFFLINE_CELSIUS = -256.0  # jtop's reading for a zone (or a limit) it could not read
JTOP_SOCKET = Path("/run/jtop.sock")  # jetson-stats' JTOP_PIPE (jtop/service.py)
JTOP_GROUP = "jtop"  # jetson-stats' JTOP_USER: the group jtop.service gives its socket

# jtop.jtop.start()'s message when the service's major.minor differs from the client's (the
# same from 4.2 to 7.x; only the advice after it changed).
VERSION_MISMATCH = re.compile(
    r"Mismatch version jtop service: \[(?P<service>[^\]]*)\] and client: \[(?P<client>[^\]]*)\]"
)

# CUDA's name for each SoC's GPU, as llama.cpp logs it and as NVML names it where the BSP
# ships NVML (JetPack 6+): the same board then shows the same GPU name whichever source
# read it. jtop only knows the devfreq node's name ("gpu", "ga10b"), which says little.
CUDA_DEVICE_NAMES = {
    "tegra264": "NVIDIA Thor",
    "tegra234": "Orin (nvgpu)",
    "tegra194": "Xavier",
    "tegra186": "NVIDIA Tegra X2",
    "tegra210": "NVIDIA Tegra X1",
}

# jetson-stats 4.x lists USB-C power-delivery ports (/sys/class/power_supply/ucsi-source-psy-*,
# with that prefix cut off) as rails; their "power" is the negotiated voltage times current,
# not a measurement, and its sum into 'tot' inflated the board's power (7.x skips them). The
# names left are the UCSI device's and the port's: "USBC000:001" (ACPI), "1-00081" (I2C).
_POWER_SUPPLY_RAIL = re.compile(r"^(ucsi-source-psy-.*|USBC\d+:\d+|\d+-[0-9a-fA-F]{4}\d+)$")

OpenJtop = Callable[[float], Any]
Row = tuple[str, Any]  # (name, jtop's dict for it)


def default_open_jtop(interval_s: float) -> Any:
    """Connects a jtop client to jtop.service; raises ImportError without jetson-stats and
    jtop.JtopException when the service is not running or its version differs."""
    import jtop  # here, not at the top: only Jetsons have jetson-stats

    client = jtop.jtop(interval=interval_s)
    client.start()
    return client


@dataclass(frozen=True)
class _Board:
    """What does not change while the board runs (jtop's board['hardware'])."""

    model: str
    module: str
    soc: str
    cuda_arch: str
    l4t: str
    jetpack: str


class JetsonSource(TelemetrySource):
    """Normalises one jtop client's figures into a GpuSample for the integrated GPU and a
    JetsonSample for the rest.

    - GPU name: CUDA's name for the SoC (CUDA_DEVICE_NAMES, e.g. "Orin (nvgpu)"), else the
      key jtop files the GPU under (its devfreq node's name, or NVML's on Thor).
    - GPU memory: the unified RAM, counted as the host source counts it: free is the
      kernel's MemAvailable (read through psutil, as jtop has no such figure), used is
      total - free. jtop's own "used" (MemTotal - MemFree - Buffers - Cached) counts all of
      buffers and page cache as free, which the kernel cannot always give back (shmem, dirty
      pages), so it made the GPU look freer than the host.
    - GPU power: the GPU's own rail where the board has one (VDD_GPU_SOC on AGX Orin, which
      also feeds the SoC; GPU on AGX Xavier; POM_5V_GPU on Nano); None where the GPU shares a
      rail with the CPU (VDD_CPU_GPU_CV on Orin Nano/NX), as that rail cannot be split.
    - Throttling: jtop reports no throttle state, so throttle_reasons holds what its figures
      show: "thermal:<zone>" for an online zone at or above its 'max' (jtop has limits only
      for hwmon sensors, not for the SoC's thermal zones, so BPMP's own thermal throttling
      stays invisible) and "power:<rail>" for a rail whose current is at or above its 'warn'
      limit (the INA3221 over-current warning, where the kernel exposes it).
    - power_total_watts: the measured board input (VDD_IN, POM_5V_IN, VIN) where the board
      has one, else the sum of the measured rails (AGX Orin: the module's rails, which miss
      the carrier board). A measured input is also listed as a rail. USB-C power-delivery
      ports that jetson-stats 4.x lists as rails are neither rails nor in the sum (their
      figure is a negotiated limit, not a measurement); they are named once in the log.
    - JetPack: jtop's, else the project's table from L4T (jetpack.py), as jetson-stats
      releases older than the board know no JetPack for its L4T. L4T: jtop's, else
      /etc/nv_tegra_release's.
    - Fans: one Fan per PWM channel, named "<fan><channel>" like jtop's stats ("pwmfan0").

    A reading jtop lacks is None, never 0.

    Connecting runs on its own thread, bounded by `start_timeout_s`: jtop's start() has no
    timeout of its own. When the client's thread dies (jtop.service stopped or restarted)
    sample() raises SourceError and reconnects with a new client, at once and then with a
    doubling delay (JTOP_RECONNECT_MIN_S to _MAX_S), one attempt at a time, each reported in
    its SourceError until the readings come back; `clock` times the delays.

    When the client cannot start, probe() skips with the fix for the cause: the versions
    and the pin to install when the service runs another jetson-stats major.minor, the
    usermod command when this process is not in the socket's group (or a restart when the
    user was added after the worker started), a service that accepts but does not answer,
    else the library's own message with the advice that fits it.
    `socket_access` reads the socket's owner and this process's groups (read_socket_access);
    `mem_available` the kernel's MemAvailable in bytes.
    """

    name = "jetson"

    def __init__(
        self,
        interval_s: float = 1.0,
        open_jtop: OpenJtop | None = None,
        tegra_release: Path = TEGRA_RELEASE,
        socket_access: Callable[[], SocketAccess] | None = None,
        *,
        start_timeout_s: float = JTOP_START_TIMEOUT_S,
        mem_available: Callable[[], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval = interval_s
        self._open = open_jtop if open_jtop is not None else default_open_jtop
        self._tegra_release = tegra_release
        self._socket_access = socket_access if socket_access is not None else read_socket_access
        self._start_timeout = start_timeout_s
        self._mem_available = mem_available if mem_available is not None else _mem_available
        self._clock = clock
        self._client: Any = None
        self._board: _Board | None = None
        self._opened = False  # probe() succeeded and close() has not run: reconnect when lost
        self._attempt: _Attempt | None = None
        self._lost_at = 0.0
        self._failed_attempts = 0
        self._next_attempt_at = 0.0
        self._supplies_logged = False

    def probe(self) -> Probe:
        if not self._tegra_release.exists():
            return Probe.skip(f"not a Jetson (no {self._tegra_release})")
        self.close()
        attempt = _Attempt(self._open, self._interval, self._clock())
        if not attempt.wait(self._start_timeout):
            attempt.abandon()  # its client, should it ever start, is closed
            return Probe.skip(self._hung_reason())
        reason = self._failure_reason(attempt)
        if reason is not None:
            return Probe.skip(reason)
        self._install(attempt)
        return Probe.ok()

    def sample(self) -> Reading:
        if not self._opened:
            raise SourceError("jtop is not open (probe() did not succeed, or close() was called)")
        if self._client is not None:
            try:
                _check_alive(self._client)
            except SourceError as exc:
                self._lose()
                raise SourceError(f"{exc}; reconnecting to jtop.service") from exc
        else:
            self._reconnect()
        client, board = self._client, self._board
        assert client is not None and board is not None  # _reconnect() raises otherwise
        try:
            gpu, jetson = _read(client, board, self._mem_available())
        except Exception as exc:
            raise SourceError(f"jtop readings failed: {_describe(exc)}") from exc
        self._log_power_supplies(client)
        return Reading(gpus=(gpu,), jetson=jetson)

    def close(self) -> None:
        self._opened = False
        attempt, self._attempt = self._attempt, None
        if attempt is not None:
            attempt.abandon()
        client, self._client, self._board = self._client, None, None
        if client is not None:
            _close_quietly(client)

    # -- connecting and reconnecting ----------------------------------------------------

    def _install(self, attempt: _Attempt) -> None:
        board = attempt.board
        assert board is not None  # a finished attempt without an error has read it
        l4t = board.l4t or l4t_from_tegra_release(self._tegra_release)
        # jetson-stats releases older than the board's L4T report an empty JetPack.
        jetpack = board.jetpack or jetpack_for_l4t(l4t)
        self._client = attempt.client
        self._board = dataclasses.replace(board, l4t=l4t, jetpack=jetpack)
        self._opened = True
        self._failed_attempts = 0

    def _lose(self) -> None:
        """The client's thread died: drop it; the next sample() starts reconnecting."""
        client, self._client = self._client, None
        _close_quietly(client)
        self._lost_at = self._next_attempt_at = self._clock()
        self._failed_attempts = 0

    def _reconnect(self) -> None:
        """Installs a new client, or raises SourceError saying how the reconnection stands."""
        now = self._clock()
        lost_for = f"jtop.service lost {now - self._lost_at:.0f} s ago"
        if self._attempt is None:
            if now < self._next_attempt_at:
                raise SourceError(
                    f"{lost_for}; reconnection attempt {self._failed_attempts + 1} "
                    f"in {self._next_attempt_at - now:.0f} s"
                )
            self._attempt = _Attempt(self._open, self._interval, now)
        attempt = self._attempt
        if not attempt.wait(min(self._start_timeout, _SAMPLE_WAIT_S)):
            waited = now - attempt.started_at
            if waited < self._start_timeout:
                raise SourceError(f"{lost_for}; reconnecting")
            # One attempt at a time: a hung connection ends when the service's process does.
            raise SourceError(f"{lost_for}; {self._hung_reason(waited)}")
        self._attempt = None
        reason = self._failure_reason(attempt)
        if reason is None:
            self._install(attempt)
            log.info("jtop: reconnected to jtop.service after %.1f s", now - self._lost_at)
            return
        self._failed_attempts += 1
        delay = reconnect_delay_s(self._failed_attempts)
        self._next_attempt_at = now + delay
        raise SourceError(
            f"{lost_for}; reconnection attempt {self._failed_attempts} failed ({reason}); "
            f"next in {delay:.0f} s"
        )

    def _failure_reason(self, attempt: _Attempt) -> str | None:
        """Why a finished attempt did not give a client; None when it did."""
        exc = attempt.error
        if exc is None:
            return None
        if attempt.stage == "board":
            return f"jtop answered but its board is unreadable: {_describe(exc)}"
        if isinstance(exc, ImportError):
            return (
                f"jetson-stats is not installed ({_describe(exc)}): "
                f"pip install 'llamaherd[jetson]' and make sure jtop.service runs "
                f"({SERVICE_HINT})"
            )
        return self._start_failure(exc)

    def _hung_reason(self, waited: float | None = None) -> str:
        seconds = round(self._start_timeout if waited is None else waited, 1)
        return (
            f"jtop.service accepted the connection but did not answer within {seconds:g} s "
            f"(a hung or overloaded service: {RESTART_HINT})"
        )

    def _start_failure(self, exc: BaseException) -> str:
        """Names the cause an operator can fix: a version the service refuses, then a group
        this process lacks, then what the library said, with the advice that fits it."""
        versions = _version_mismatch(exc)
        if versions is not None:
            return _version_reason(*versions)
        reason = _library_failure(exc)
        access = self._socket_access()
        problem = socket_access_problem(access)
        if problem is None:
            return reason
        if access.exists:
            return problem
        # No socket: the service is down, and once it runs the group will refuse us too.
        return f"{reason}; also, {problem}"

    def _log_power_supplies(self, client: Any) -> None:
        if self._supplies_logged:
            return
        self._supplies_logged = True
        supplies = [str(n) for n in ((client.power or {}).get("rail") or {}) if _supply(str(n))]
        if supplies:
            log.info(
                "jtop: leaving USB-C power-delivery ports out of the power rails and the "
                "board total (negotiated limits, not measurements): %s",
                ", ".join(supplies),
            )


def reconnect_delay_s(failed_attempts: int) -> float:
    """The wait before the next reconnection after `failed_attempts` failed ones (>= 1)."""
    doubled = JTOP_RECONNECT_MIN_S * float(2 ** max(failed_attempts - 1, 0))
    return min(doubled, JTOP_RECONNECT_MAX_S)


class _Attempt:
    """One try at starting a jtop client and reading its board, on a daemon thread of its
    own: jtop's start() can block forever on a service that accepts and never answers, and
    only the caller's wait is bounded. An abandoned attempt closes its client when (if ever)
    it finishes."""

    def __init__(self, open_jtop: OpenJtop, interval_s: float, started_at: float) -> None:
        self.started_at = started_at
        self.client: Any = None
        self.board: _Board | None = None
        self.error: BaseException | None = None
        self.stage = "start"
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._abandoned = False
        thread = threading.Thread(
            target=self._run, args=(open_jtop, interval_s), name="jtop-connect", daemon=True
        )
        thread.start()

    def wait(self, timeout_s: float) -> bool:
        return self._done.wait(timeout_s)

    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            client, self.client = self.client, None
        if client is not None:
            _close_quietly(client)

    def _run(self, open_jtop: OpenJtop, interval_s: float) -> None:
        client: Any = None
        board: _Board | None = None
        error: BaseException | None = None
        try:
            client = open_jtop(interval_s)
            self.stage = "board"
            # Read once: board['hardware'] is fixed, and reading `board` waits for jtop's
            # library scan (nvcc, dpkg), which belongs here rather than in every sample.
            board = _read_board(client.board)
        except BaseException as exc:  # handed to the caller, who names it
            error = exc
            if client is not None:
                _close_quietly(client)
                client = None
        with self._lock:
            if not self._abandoned:
                self.client, self.board, self.error = client, board, error
                client = None
        if client is not None:  # abandoned meanwhile: nobody will use it
            _close_quietly(client)
        self._done.set()


# -- why jtop.service refuses this worker ----------------------------------------------------


@dataclass(frozen=True)
class SocketAccess:
    """What decides whether this process may connect to jtop.service's socket: the socket's
    owner and mode, its group in the group database, and this process's identity. Read by
    read_socket_access() without the service; judged by socket_access_problem()."""

    socket: Path
    exists: bool
    owner_uid: int
    mode: int  # permission bits
    group: str  # the socket's group; without a socket, the group the service will give it
    group_gid: int | None  # None: no such group (jetson-stats was never installed as a service)
    group_members: frozenset[str]  # the group's members in /etc/group
    user: str
    uid: int  # effective
    gids: frozenset[int]  # effective gid and supplementary groups of this process
    primary_gid: int | None  # the user's login group in /etc/passwd


def read_socket_access(socket: Path = JTOP_SOCKET, group: str = JTOP_GROUP) -> SocketAccess:
    """Reads SocketAccess for this process; never raises."""
    uid = os.geteuid()
    try:
        account: pwd.struct_passwd | None = pwd.getpwuid(uid)
    except KeyError:  # a uid without an entry (containers)
        account = None
    try:
        info = os.stat(socket)
    except OSError:
        info = None
    if info is not None:
        gid: int | None = info.st_gid
        name = _group_name(info.st_gid)
    else:
        gid, name = _group_gid(group), group
    return SocketAccess(
        socket=socket,
        exists=info is not None,
        owner_uid=info.st_uid if info is not None else 0,  # the service runs as root
        mode=stat.S_IMODE(info.st_mode) if info is not None else 0o660,  # what it sets
        group=name,
        group_gid=gid,
        group_members=_group_members(gid),
        user=account.pw_name if account is not None else str(uid),
        uid=uid,
        gids=frozenset({os.getegid(), *os.getgroups()}),
        primary_gid=account.pw_gid if account is not None else None,
    )


def socket_access_problem(access: SocketAccess) -> str | None:
    """Why this process cannot connect to the socket, with the fix; None when it can (or
    when nothing here says it cannot). Connecting to a Unix socket needs write permission."""
    if access.uid == 0 or access.group_gid is None:
        return None
    if access.exists and access.owner_uid == access.uid and access.mode & stat.S_IWUSR:
        return None
    if access.mode & stat.S_IWOTH:
        return None
    if access.group_gid in access.gids:
        return None  # allowed by the group (or, without group write, nothing we can fix here)
    where = (
        f"owner of {access.socket}"
        if access.exists
        else f"the group jtop.service gives {access.socket}"
    )
    if access.user in access.group_members or access.primary_gid == access.group_gid:
        # Group lists are read at login: a running process keeps the ones it started with.
        return (
            f"user {access.user} is in group {access.group} ({where}), but this worker "
            f"started before it was added: restart the worker"
        )
    return (
        f"user {access.user} is not in group {access.group} ({where}): "
        f"usermod -aG {access.group} {access.user}, then restart the worker"
    )


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _group_gid(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def _group_members(gid: int | None) -> frozenset[str]:
    if gid is None:
        return frozenset()
    try:
        return frozenset(grp.getgrgid(gid).gr_mem)
    except KeyError:
        return frozenset()


def _version_mismatch(exc: BaseException) -> tuple[str, str] | None:
    """(service version, client version) when the library refused the service's version."""
    found = VERSION_MISMATCH.search(str(exc))
    return (found["service"], found["client"]) if found else None


def _version_reason(service: str, client: str) -> str:
    # The client accepts exactly the service's major.minor (jetson-stats' compare_versions).
    wanted = ".".join(service.split(".")[:2])
    return (
        f"jtop.service runs jetson-stats {service}, this worker has {client}: install "
        f"jetson-stats=={wanted}.* in the worker's environment ({sys.prefix})"
    )


# jtop.jtop.start()'s other refusals (the same words from 4.2 to 7.x), each with its advice.
_NOT_ACTIVE = "The jtop.service is not active"
_NO_ACCESS = "I can't access jtop.service"
_NO_AUTH = "Authentication with jetson-stats server failed"
_PYTHON_MISMATCH = "Mismatch of Python versions"
_CONNECTION_LOST = ("Lost connection with jtop server", "Error connection")


def _library_failure(exc: BaseException) -> str:
    described = _describe(exc)
    message = str(exc)
    if _NO_ACCESS in message or isinstance(exc, PermissionError):
        # errno 13 on the socket although the groups this process has allow it (the group
        # check runs first): the socket's owner or mode is not what jtop.service sets.
        return (
            f"jtop.service refused this worker: {described} (the socket {JTOP_SOCKET} "
            f"should be root:{JTOP_GROUP} mode 0660, as jtop.service makes it: {RESTART_HINT})"
        )
    if _NO_AUTH in message:
        return (
            f"jtop.service did not accept this client's key: {described} (the service and "
            f"this worker run different jetson-stats builds; `jtop --version` names the "
            f"service's: install that one in the worker's environment, {sys.prefix})"
        )
    if _PYTHON_MISMATCH in message:
        return (
            f"jtop.service runs on another Python major version than this worker: "
            f"{described} (reinstall jetson-stats for Python 3: sudo pip3 install -U "
            f"jetson-stats, then {RESTART_HINT})"
        )
    if any(lost in message for lost in _CONNECTION_LOST):
        return (
            f"jtop.service closed the connection while the client started: {described} "
            f"(restart it: {RESTART_HINT})"
        )
    # JtopException is matched by name: jtop may be importable only inside the opener.
    if _NOT_ACTIVE in message or type(exc).__name__ == "JtopException" or isinstance(exc, OSError):
        return f"jtop cannot reach jtop.service: {described} (start it: {SERVICE_HINT})"
    return f"jtop failed to start: {described} (check jtop.service: {SERVICE_HINT})"


def _check_alive(client: Any) -> None:
    """jtop keeps serving its last figures after its thread died, so reading alone would
    report a dead service's numbers as current."""
    try:
        running = client.ok(spin=True)  # spin: do not wait for the next update
    except Exception as exc:  # ok() re-raises whatever ended the thread
        raise SourceError(f"jtop stopped: {_describe(exc)}") from exc
    if not running or not client.is_alive():
        raise SourceError("jtop stopped: its reader thread has ended (is jtop.service running?)")


def _mem_available() -> int:
    """The kernel's MemAvailable, as the host source reads it."""
    return int(psutil.virtual_memory().available)


def _close_quietly(client: Any) -> None:
    # Best effort: the service keeps nothing of ours, so a failing close loses nothing.
    with contextlib.suppress(Exception):
        client.close()


def _describe(exc: BaseException) -> str:
    # jtop's messages span lines ("...Please run:\nsudo jtop --install-service").
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _read_board(board: Any) -> _Board:
    hardware = board["hardware"]
    return _Board(
        model=str(hardware.get("Model", "")),
        module=str(hardware.get("Module", "")),
        soc=str(hardware.get("SoC", "")),
        cuda_arch=str(hardware.get("CUDA Arch BIN", "")),
        l4t=str(hardware.get("L4T", "")),
        jetpack=str(hardware.get("Jetpack", "")),
    )


# -- one reading -----------------------------------------------------------------------------


def _read(client: Any, board: _Board, mem_available: int) -> tuple[GpuSample, JetsonSample]:
    memory = client.memory
    ram = memory["RAM"]
    total = int(ram["tot"]) * KIB
    free = min(max(mem_available, 0), total)
    gpu_key, gpu = _integrated_gpu(client.gpu)
    status = gpu.get("status") or {}
    zones = client.temperature
    power = client.power or {}
    rails = _rails(power)
    emc_ratio, emc_hertz = _emc(memory.get("EMC"))
    gpu_sample = GpuSample(
        index=0,
        name=CUDA_DEVICE_NAMES.get(board.soc, gpu_key or "Jetson GPU"),
        unified=True,
        compute_capability=board.cuda_arch,
        memory_total_bytes=total,
        memory_used_bytes=total - free,
        memory_free_bytes=free,
        utilization_ratio=_ratio(status.get("load")),
        temperature_celsius=_gpu_temperature(zones, status),
        power_watts=_gpu_power(rails, status),
        # Only Thor's NVML path knows a GPU limit; elsewhere the budget is the nvpmodel mode.
        power_limit_watts=_number(status.get("power_limit")),
        clocks=_gpu_clocks(gpu),
        throttle_reasons=_throttle_reasons(zones, rails),
    )
    jetson = JetsonSample(
        model=board.model,
        module=board.module,
        soc=board.soc,
        cuda_arch=board.cuda_arch,
        l4t=board.l4t,
        jetpack=board.jetpack,
        nvpmodel=_nvpmodel_name(client.nvpmodel),
        jetson_clocks=None if client.jetson_clocks is None else bool(client.jetson_clocks),
        emc_utilization_ratio=emc_ratio,
        emc_hertz=emc_hertz,
        gpu_shared_bytes=int(ram.get("shared", 0)) * KIB,
        temperatures=tuple(Temperature(name, c) for name, c in _online_zones(zones)),
        power_rails=tuple(_power_rail(name, rail) for name, rail in rails),
        power_total_watts=_power_total(power, rails),
        fans=_fans(client.fan),
    )
    return gpu_sample, jetson


def _integrated_gpu(gpus: Any) -> tuple[str, Any]:
    """jtop files GPUs by name; a Jetson has one, integrated (none while the service has
    not found the devfreq node yet)."""
    entries = list(gpus.items())
    for key, gpu in entries:
        if gpu.get("type") == "integrated":
            return str(key), gpu
    return (str(entries[0][0]), entries[0][1]) if entries else ("", {})


def _gpu_clocks(gpu: Any) -> tuple[Clock, ...]:
    hertz = _gpu_hertz(gpu)
    return (Clock("gpu", hertz),) if hertz is not None else ()


def _gpu_hertz(gpu: Any) -> float | None:
    freq = gpu.get("freq") or {}
    if gpu.get("power_control") == "nvml":
        # Thor (NVML path): 'cur' is NVML's SM clock in MHz, or 0 when NVML has none, and
        # 'GPC' holds the devfreq clock in kHz when the node exists.
        gpc = freq.get("GPC") or []
        khz = _number(gpc[0]) if gpc else None
        if khz:
            return khz * 1e3
        mhz = _number(freq.get("cur"))
        return mhz * 1e6 if mhz else None
    khz = _number(freq.get("cur"))
    return khz * 1e3 if khz else None


def _gpu_temperature(zones: Any, status: Any) -> float | None:
    for name, celsius in _online_zones(zones):
        if name.lower() == "gpu":  # "gpu" on JetPack 6, "GPU" on JetPack 5
            return celsius
    return _number(status.get("temperature"))  # Thor's NVML path


def _gpu_power(rails: list[Row], status: Any) -> float | None:
    draw = _number(status.get("power_draw"))  # Thor's NVML path, already in watts
    if draw is not None:
        return draw
    for name, rail in rails:
        upper = name.upper()
        if "GPU" in upper and "CPU" not in upper:
            return _milli(rail.get("power"))
    return None


def _emc(emc: Any) -> tuple[float | None, float | None]:
    if not emc:  # absent, or {} when the activity monitor is unreadable
        return None, None
    khz = _number(emc.get("cur"))
    # jtop starts 'cur' at 1 kHz and keeps it when the rate file is unreadable; 'val' was then
    # divided by that placeholder too.
    if khz is None or khz <= 1:
        return None, None
    return _ratio(emc.get("val")), khz * 1e3


def _online_zones(zones: Any) -> list[tuple[str, float]]:
    found = []
    for name, zone in zones.items():
        celsius = _zone_celsius(zone)
        if celsius is not None:
            found.append((str(name), celsius))
    return found


def _zone_celsius(zone: Any) -> float | None:
    celsius = _number(zone.get("temp"))
    if not zone.get("online", True) or celsius is None or celsius <= OFFLINE_CELSIUS:
        return None
    return celsius


def _rails(power: Any) -> list[Row]:
    """Every online rail, the board input first. jtop moves VDD_IN (POM_5V_IN, VIN) out of
    'rail' into 'tot' and names it there; an unnamed 'tot' is only jtop's sum, not a rail."""
    total = power.get("tot") or {}
    named_total = [(str(total["name"]), total)] if "name" in total else []
    rows = [*named_total, *((str(n), r) for n, r in (power.get("rail") or {}).items())]
    return [
        (n, r)
        for n, r in rows
        if r.get("online", True) and _milli(r.get("power")) is not None and not _supply(n)
    ]


def _supply(name: str) -> bool:
    """A USB-C power-delivery port that jetson-stats 4.x lists as a rail."""
    return _POWER_SUPPLY_RAIL.match(name) is not None


def _power_rail(name: str, rail: Any) -> PowerRail:
    return PowerRail(
        name=name,
        watts=float(rail["power"]) / 1e3,
        average_watts=_milli(rail.get("avg")),
        volts=_milli(rail.get("volt")),
        amps=_milli(rail.get("curr")),
    )


def _power_total(power: Any, rails: list[Row]) -> float | None:
    total = power.get("tot") or {}
    if "name" in total:  # the measured board input
        return _milli(total.get("power"))
    # jtop's unnamed 'tot' is its sum of every rail it lists, USB-C ports included on 4.x:
    # the sum is redone over the measured rails. With none, jtop still sums nothing into
    # {'power': 0}: not a reading.
    if not rails:
        return None
    return sum(float(rail["power"]) for _, rail in rails) / 1e3


def _throttle_reasons(zones: Any, rails: list[Row]) -> tuple[str, ...]:
    reasons = []
    for name, zone in zones.items():
        celsius, limit = _zone_celsius(zone), _number(zone.get("max"))
        # jtop adds 'max' to every hwmon sensor and reads -256 where the file is missing.
        if celsius is not None and _over(celsius, limit, floor=OFFLINE_CELSIUS):
            reasons.append(f"thermal:{name}")
    for name, rail in rails:
        amps = _number(rail.get("curr"))
        if amps is not None and _over(amps, _number(rail.get("warn")), floor=0.0):
            reasons.append(f"power:{name}")
    return tuple(reasons)


def _over(value: float, limit: float | None, floor: float) -> bool:
    return limit is not None and limit > floor and value >= limit


def _fans(fans: Any) -> tuple[Fan, ...]:
    found = []
    for name, fan in fans.items():
        rpms = list(fan.get("rpm") or [])
        for channel, speed in enumerate(fan.get("speed") or []):
            ratio = _ratio(speed)
            if ratio is None:
                continue
            rpm = _number(rpms[channel]) if channel < len(rpms) else None
            found.append(Fan(f"{name}{channel}", ratio, rpm))
    return tuple(found)


def _nvpmodel_name(model: Any) -> str | None:
    if model is None:  # the board has no nvpmodel
        return None
    try:
        return str(model.name)
    except (KeyError, TypeError):  # jtop holds no current mode (`nvpmodel -q` failed)
        return None


# -- units -----------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _milli(value: Any) -> float | None:
    number = _number(value)
    return number / 1e3 if number is not None else None


def _ratio(percent: Any) -> float | None:
    """Percent to 0..1; clamped because jtop's EMC figure is an integer quotient of two
    counters that can overshoot at a frequency change."""
    number = _number(percent)
    return min(max(number / 100.0, 0.0), 1.0) if number is not None else None
