"""Real Debian hosts for the fleet tests: systemd as PID 1 in `systemd-nspawn`, one per
network namespace on a private bridge, reached over SSH like real boards.

The root filesystem is bootstrapped once (debootstrap) and cached outside the repository,
keyed by the suite and package list; each host boots an overlay of it, so a host's changes
vanish with it. Needs root, debootstrap, systemd-nspawn and iproute2.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# What the hosts have before Ansible arrives: systemd, SSH and Python (as on a fresh board),
# plus the packages the roles require, since the hosts have no network to fetch them.
PACKAGES = (
    "systemd,systemd-sysv,dbus,python3,python3-venv,python3-apt,iproute2,openssh-server,"
    "sudo,libgomp1,ca-certificates"
)
BOOT_TIMEOUT_S = 90.0

# A real-format release file of JetPack 6.2 (L4T R36.4.3), as an AGX Orin has it.
NV_TEGRA_RELEASE = (
    "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, "
    "DATE: Wed Jan  8 01:49:37 UTC 2025\n"
    "# KERNEL_VARIANT: oot\nTARGET_USERSPACE_LIB_DIR=nvidia\n"
    "TARGET_USERSPACE_LIB_DIR_PATH=usr/lib/aarch64-linux-gnu/nvidia\n"
)
# Stand-ins for the two Jetson tools the role runs, keeping their state in /var/lib so that a
# second converge sees what the first one set; output in the real tools' format.
NVPMODEL = """#!/bin/sh
state=/var/lib/nvpmodel.mode
[ -f $state ] || echo 2 > $state
case "$1" in
  -q) echo "NV Power Mode: MODE_$(cat $state)"; cat $state ;;
  -m) echo "$2" > $state ;;
  *) echo "usage: nvpmodel -q | -m MODE" >&2; exit 2 ;;
esac
"""
JETSON_CLOCKS = """#!/bin/sh
state=/var/lib/jetson_clocks.pinned
case "$1" in
  --show)
    if [ -f $state ]; then min=2201600; else min=729600; fi
    echo "SOC family:tegra234  Machine:NVIDIA Jetson AGX Orin Developer Kit"
    echo "cpu0: Online=1 Governor=schedutil MinFreq=$min MaxFreq=2201600 CurrentFreq=2201600" ;;
  --restore) rm -f $state ;;
  "") touch $state ;;
esac
"""


@dataclass
class Machine:
    """One booted host."""

    name: str
    address: str
    netns: str
    root: Path  # the overlay the host boots from (its / from outside)
    process: subprocess.Popen[bytes]


def rootfs_key() -> str:
    return hashlib.sha256(f"{SUITE} {MIRROR} {PACKAGES}".encode()).hexdigest()[:12]


def cached_rootfs(cache: Path) -> Path:
    """The bootstrapped root filesystem, made on first use (about 2 minutes)."""
    root = cache / f"rootfs-{SUITE}-{rootfs_key()}"
    if (root / "usr/bin/python3").exists():
        return root
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["debootstrap", "--variant=minbase", f"--include={PACKAGES}", SUITE, str(partial), MIRROR],
        check=True, capture_output=True,
    )  # fmt: skip
    # Empty: each host gets its own machine id at boot, as a freshly flashed board does.
    (partial / "etc/machine-id").write_text("")
    partial.rename(root)
    return root


def authorize(root: Path, public_key: str) -> None:
    ssh = root / "root/.ssh"
    ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys = ssh / "authorized_keys"
    keys.write_text(public_key)
    keys.chmod(0o600)


def make_jetson(root: Path) -> None:
    """A real-format /etc/nv_tegra_release and stand-ins for nvpmodel and jetson_clocks."""
    (root / "etc/nv_tegra_release").write_text(NV_TEGRA_RELEASE)
    for name, script in (("nvpmodel", NVPMODEL), ("jetson_clocks", JETSON_CLOCKS)):
        tool = root / "usr/sbin" / name
        tool.write_text(script)
        tool.chmod(0o755)


@contextlib.contextmanager
def overlay(lower: Path, work: Path) -> Iterator[Path]:
    """A writable view of `lower` whose changes land in `work`; unmounted afterwards."""
    upper, scratch, merged = work / "upper", work / "work", work / "root"
    for path in (upper, scratch, merged):
        path.mkdir(parents=True, exist_ok=True)
    options = f"lowerdir={lower},upperdir={upper},workdir={scratch}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(merged)], check=True)
    try:
        yield merged
    finally:
        subprocess.run(["umount", "-l", str(merged)], check=False)


def boot(
    name: str,
    address: str,
    netns: str,
    root: Path,
    log: Path,
    read_only_binds: tuple[tuple[Path, str], ...] = (),
) -> Machine:
    """Boots `root` with systemd as PID 1 inside network namespace `netns`, with each
    (outside folder, inside path) of `read_only_binds` mounted read-only."""
    (root / "etc/hostname").write_text(name + "\n")
    binds = [f"--bind-ro={outside}:{inside}" for outside, inside in read_only_binds]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                "systemd-nspawn", "--boot", "--register=no", "--keep-unit", "--quiet",
                f"--machine={name}", f"--directory={root}",
                f"--network-namespace-path=/run/netns/{netns}", *binds,
            ],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    return Machine(name, address, netns, root, process)


def wait_for_ssh(machine: Machine, timeout_s: float = BOOT_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if machine.process.poll() is not None:
            code = machine.process.returncode
            raise RuntimeError(f"{machine.name}: systemd-nspawn exited ({code})")
        with contextlib.suppress(OSError), socket.create_connection((machine.address, 22), 1):
            return
        time.sleep(0.5)
    raise TimeoutError(f"{machine.name}: no SSH on {machine.address}:22 after {timeout_s:.0f} s")


def shut_down(machine: Machine, timeout_s: float = 30.0) -> None:
    """SIGTERM makes nspawn power the host off cleanly; SIGKILL if it does not in time."""
    if machine.process.poll() is None:
        os.killpg(machine.process.pid, signal.SIGTERM)
        try:
            machine.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(machine.process.pid, signal.SIGKILL)
            machine.process.wait(10)
