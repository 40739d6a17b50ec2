"""Fixtures of the fleet suite: three booted Debian hosts (coordinator, PC worker, Jetson
stand-in worker) on a private bridge, an inventory for them, and the real ansible-playbook.

Runs only through `make fleet` (which installs the pinned tools and points
LLAMAHERD_FLEET_TOOLS at them), as root; skipped elsewhere with the reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.fleet import hosts
from tests.support.netns import network

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE = ROOT / "ansible"
NAMES = ("coord", "pc", "jetson")  # the order of the namespaced hosts
RECAP = re.compile(
    r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M
)
COUNTS = ("ok", "changed", "unreachable", "failed")
# llamaherd_llama_cpp_cache, where build-wheel.sh keeps a host's own builds.
HOST_BUILD_CACHE = "/var/cache/llamaherd"


@dataclass
class PlaybookRun:
    rc: int
    seconds: float
    output: str
    recap: dict[str, dict[str, int]]

    def changed(self) -> dict[str, int]:
        return {host: counts["changed"] for host, counts in self.recap.items()}


@dataclass
class Fleet:
    machines: dict[str, hosts.Machine]
    workdir: Path
    tools: Path
    api_key: str
    cache: Path
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def gateway(self) -> str:
        return f"http://{self.machines['coord'].address}:8000"

    def playbook(self, name: str, *extra: str, timeout_s: float = 1800) -> PlaybookRun:
        env = {
            **os.environ,
            "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
            "ANSIBLE_HOME": str(self.workdir / "ansible-home"),
            "ANSIBLE_LOCAL_TEMP": str(self.workdir / "ansible-tmp"),
            "ANSIBLE_NOCOLOR": "1",
            "PATH": f"{self.tools}:{os.environ['PATH']}",
        }
        started = time.monotonic()
        result = subprocess.run(
            [
                str(self.tools / "ansible-playbook"), "-i", str(self.workdir / "inventory"),
                "--vault-password-file", str(self.workdir / "vault-password"),
                "-e", f"llamaherd_wheelhouse_dir={self.cache / 'wheelhouse'}",
                str(ANSIBLE / name), *extra,
            ],
            cwd=ANSIBLE, env=env, capture_output=True, text=True, timeout=timeout_s,
        )  # fmt: skip
        output = result.stdout + result.stderr
        (self.workdir / f"{name}-{int(started)}.log").write_text(output)
        recap = {
            m[1]: dict(zip(COUNTS, map(int, m.groups()[1:]), strict=True))
            for m in RECAP.finditer(output)
        }
        return PlaybookRun(result.returncode, time.monotonic() - started, output, recap)

    def ssh(self, host: str, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ssh", *_ssh_options(self.workdir / "id_ed25519"),
             f"root@{self.machines[host].address}", command],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip


def _ssh_options(key: Path) -> list[str]:
    return [
        "-i", str(key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10", "-o", "BatchMode=yes",
    ]  # fmt: skip


def _require_fleet_tools() -> tuple[Path, Path]:
    tools = os.environ.get("LLAMAHERD_FLEET_TOOLS")
    if not tools:
        pytest.skip("the fleet suite runs through `make fleet` (it installs ansible)")
    if os.geteuid() != 0:
        pytest.skip("the fleet suite boots systemd-nspawn hosts: it needs root")
    missing = [t for t in ("debootstrap", "systemd-nspawn", "ip", "ssh", "ssh-keygen")
               if shutil.which(t) is None]  # fmt: skip
    if missing:
        pytest.skip(f"the fleet suite needs {', '.join(missing)} (apt-get install "
                    "debootstrap systemd-container iproute2 openssh-client)")  # fmt: skip
    cache = Path(os.environ.get("LLAMAHERD_FLEET_CACHE", "/var/cache/llamaherd-fleet"))
    return Path(tools), cache


def control_build_cache() -> Path:
    """deploy/llama-cpp/build-wheel.sh's cache on this machine, which `make setup` filled."""
    cache = os.environ.get("LLAMAHERD_CACHE") or str(Path.home() / ".cache/llamaherd")
    return Path(cache) / "wheels"


def _host_build_cache() -> Path:
    """The llama-cpp-python builds the hosts find in their own build cache.

    The control machine plays an x86 laptop that cannot build the fleet's kind
    (llamaherd_llama_cpp_build_on_control is false in the inventory), so the first host of
    the kind must build it. The hosts have no network and no compiler, so each gets this
    machine's build cache, read-only, as its own: the host of the same CPU and flags finds its
    kind already built there (as a board that built it before would) and the role fetches the
    wheel from it. The compile itself is what `make setup` already ran here.
    """
    wheels = control_build_cache()
    if not any(wheels.glob("llama-cpp-python-*/llama_cpp_python-*.whl")):
        raise RuntimeError(f"no llama-cpp-python build in {wheels}: run `make setup` first")
    return wheels


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_inventory(fleet: Fleet, gemma: Path) -> None:
    m = fleet.machines
    key = fleet.workdir / "id_ed25519"
    inventory = fleet.workdir / "inventory"
    (inventory / "group_vars/all").mkdir(parents=True)
    hosts_yml = {
        "all": {
            "children": {
                "coordinators": {"hosts": {"coord": {"ansible_host": m["coord"].address}}},
                "workers": {
                    "children": {
                        "pcs": {"hosts": {"pc": {"ansible_host": m["pc"].address,
                                                 "llamaherd_worker_labels": ["x86"]}}},
                        "jetsons": {"hosts": {"jetson": {
                            "ansible_host": m["jetson"].address,
                            "llamaherd_worker_labels": ["jetson", "orin-agx"],
                            "jetson_base_power_mode": 0,
                            "jetson_base_jetson_clocks": True,
                        }}},
                    }
                },
            }
        }
    }  # fmt: skip
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts_yml))
    settings = {
        "ansible_user": "root",
        "ansible_ssh_private_key_file": str(key),
        "ansible_ssh_common_args": " ".join(_ssh_options(key)[2:]),
        "ansible_python_interpreter": "/usr/bin/python3",
        "llamaherd_api_key": "{{ vault_llamaherd_api_key }}",
        # The control machine stands for a laptop that cannot build the fleet's kind.
        "llamaherd_llama_cpp_build_on_control": False,
        "llamaherd_catalog": [
            {
                "alias": "gemma-3-270m",
                "path": "/var/lib/llamaherd/models/gemma-3-270m-q4_k_m.gguf",
                "source": str(gemma),
                "sha256": _sha256(gemma),
                "replicas": 2,
                "n_ctx": 2048,
                "n_threads": 1,
                "n_parallel": 2,
            }
        ],
        # Two hosts' workers share this machine's cores: keep their reserve small.
        "llamaherd_worker_memory_reserve": "256MiB",
        "llamaherd_worker_shutdown_grace_s": 20,
    }
    (inventory / "group_vars/all/main.yml").write_text(yaml.safe_dump(settings))
    vault = inventory / "group_vars/all/vault.yml"
    vault.write_text(yaml.safe_dump({"vault_llamaherd_api_key": fleet.api_key}))
    subprocess.run(
        [str(fleet.tools / "ansible-vault"), "encrypt", "--vault-password-file",
         str(fleet.workdir / "vault-password"), str(vault)],
        check=True, capture_output=True,
    )  # fmt: skip


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory, gemma_path: Path) -> Iterator[Fleet]:
    tools, cache = _require_fleet_tools()
    host_builds = _host_build_cache()
    # The wheelhouse keeps its dependency wheels between runs but not the llama-cpp-python
    # wheels, so that every run builds its kind once on a host and fetches it back.
    for built in (cache / "wheelhouse").glob("deps-*/llama-cpp"):
        shutil.rmtree(built)
    started = time.monotonic()
    rootfs = hosts.cached_rootfs(cache)
    rootfs_s = time.monotonic() - started
    workdir = tmp_path_factory.mktemp("fleet")
    workdir.chmod(0o700)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(workdir / "id_ed25519")],
        check=True,
    )
    (workdir / "id_ed25519").chmod(0o600)
    password = workdir / "vault-password"
    password.write_text(secrets.token_hex(16))
    password.chmod(0o600)
    public_key = (workdir / "id_ed25519.pub").read_text()
    with contextlib.ExitStack() as stack:
        net = stack.enter_context(network(len(NAMES)))
        # Runs after every host is down and unmounted: their disks are a few GB together.
        stack.callback(shutil.rmtree, workdir / "hosts", ignore_errors=True)
        machines: dict[str, hosts.Machine] = {}
        for name, host in zip(NAMES, net.hosts, strict=True):
            root = stack.enter_context(hosts.overlay(rootfs, workdir / "hosts" / name))
            hosts.authorize(root, public_key)
            if name == "jetson":
                hosts.make_jetson(root)
            machines[name] = hosts.boot(
                name, host.address, host.name, root, workdir / f"{name}.console.log",
                read_only_binds=((host_builds, HOST_BUILD_CACHE + "/wheels"),),
            )  # fmt: skip
            stack.callback(hosts.shut_down, machines[name])
        for machine in machines.values():
            hosts.wait_for_ssh(machine)
        fleet = Fleet(machines, workdir, tools, secrets.token_urlsafe(24), cache)
        fleet.timings["rootfs_s"] = rootfs_s
        fleet.timings["boot_s"] = time.monotonic() - started - rootfs_s
        _write_inventory(fleet, gemma_path)
        yield fleet
