"""ggml's RPC backend through ctypes: lend this process's device, or use devices others lend.

llama-cpp-python binds llama.h but not ggml-rpc.h, so the few functions needed are bound
here from the libraries it ships. They must be opened by soname (libggml.so.0): opening the
unversioned symlink loads a second copy of ggml with its own device registry, and llama.cpp
would then never see the RPC devices and silently keep every layer local.

Both directions can abort the whole process from inside ggml (a lost or garbled connection
is a GGML_ABORT), so the worker only calls them in child processes (worker.split).
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass
from pathlib import Path

import llama_cpp

from common.errors import FailedPrecondition

_LIB_DIR = Path(llama_cpp.__file__).parent / "lib"
# enum ggml_backend_dev_type, in ggml-backend.h order.
_DEVICE_TYPES = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel", 4: "meta"}


@dataclass(frozen=True)
class Device:
    index: int
    name: str  # CPU, CUDA0, ...
    kind: str  # cpu, gpu, igpu, accel
    memory_free: int
    memory_total: int


@functools.cache
def _ggml() -> ctypes.CDLL:
    lib = _open("libggml.so.0")
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    lib.ggml_backend_dev_name.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_name.restype = ctypes.c_char_p
    lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_type.restype = ctypes.c_int
    lib.ggml_backend_dev_memory.argtypes = [
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_size_t),
        ctypes.POINTER(ctypes.c_size_t),
    ]
    lib.ggml_backend_register.argtypes = [ctypes.c_void_p]
    return lib


@functools.cache
def _rpc() -> ctypes.CDLL:
    lib = _open("libggml-rpc.so.0")
    lib.ggml_backend_rpc_add_server.argtypes = [ctypes.c_char_p]
    lib.ggml_backend_rpc_add_server.restype = ctypes.c_void_p
    lib.ggml_backend_rpc_start_server.argtypes = [
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_size_t,
        ctypes.POINTER(ctypes.c_void_p),
    ]
    lib.ggml_backend_rpc_start_server.restype = None
    return lib


def _open(soname: str) -> ctypes.CDLL:
    path = _LIB_DIR / soname
    if not path.exists():
        raise FailedPrecondition(
            f"{path} is missing: this llama-cpp-python build has no ggml RPC backend; "
            "rebuild it with -DGGML_RPC=ON (deploy/setup-venv.sh does)"
        )
    return ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)


def devices() -> list[Device]:
    """The compute devices ggml sees in this process, in its order."""
    lib = _ggml()
    found = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        found.append(
            Device(
                index=i,
                name=(lib.ggml_backend_dev_name(dev) or b"?").decode(),
                kind=_DEVICE_TYPES.get(lib.ggml_backend_dev_type(dev), "other"),
                memory_free=free.value,
                memory_total=total.value,
            )
        )
    return found


def lendable_device() -> Device:
    """The device a node lends: its first GPU (discrete or integrated), else the CPU."""
    found = [d for d in devices() if d.kind in ("gpu", "igpu", "cpu")]
    gpus = [d for d in found if d.kind != "cpu"]
    if gpus:
        return gpus[0]
    if found:
        return found[0]
    raise FailedPrecondition("ggml reports no device to lend")


def serve(endpoint: str, device: Device, n_threads: int) -> None:
    """Runs ggml's RPC server for `device` on `endpoint`; returns only if it fails to start.

    No tensor cache directory: the cache would write the model's weights to the helper's
    disk on every load, and edge nodes' SD cards are slow and wear out.
    """
    lib = _ggml()
    handles = (ctypes.c_void_p * 1)(lib.ggml_backend_dev_get(device.index))
    _rpc().ggml_backend_rpc_start_server(endpoint.encode(), None, n_threads, 1, handles)


def use_servers(endpoints: list[str]) -> None:
    """Makes the RPC servers at `endpoints` devices of this process (RPC0, RPC1, ...), in
    order; llama.cpp puts them first in a model's device list. Aborts the process when a
    server is unreachable, so only a child process may call it."""
    lib, rpc = _ggml(), _rpc()
    for endpoint in endpoints:
        reg = rpc.ggml_backend_rpc_add_server(endpoint.encode())
        if not reg:
            raise FailedPrecondition(f"ggml could not add RPC server {endpoint}")
        lib.ggml_backend_register(reg)
