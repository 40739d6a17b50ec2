"""A stand-in for jetson-stats' `jtop.jtop` client that serves a recorded fixture instead of
talking to `jtop.service`, for the Jetson telemetry source's tests.

Shapes follow jetson-stats 7.2.2 (jtop/jtop.py and jtop/core/*.py): `memory`, `gpu` and
`fan` read like dicts without being dict subclasses (the library's GenericInterface);
`nvpmodel` is an object with `.name`, `.id`, `.models` whose str() is its name, or None;
`jetson_clocks` is an object whose bool() says whether the clocks are pinned, with
`.status`, or None; `board`, `power`, `temperature`, `engine`, `cpu` and `processes` are
plain dicts/lists. Like the real client, properties other than `board` read the last data
received and raise KeyError before `start()`; after the reader thread dies they go on
returning the last data, and only `ok()`/`is_alive()` tell.

The fixture format is described in the `_about` of tests/fixtures/telemetry/jetson/*.json.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "telemetry" / "jetson"

# The real messages of jtop.jtop.start() and of its reader thread.
SERVICE_NOT_ACTIVE = "The jtop.service is not active. Please run:\nsudo jtop --install-service"
CANNOT_ACCESS = "I can't access jtop.service.\nPlease logout or reboot this board."
VERSION_MISMATCH = (
    "Mismatch version jtop service: [{service_version}] and client: [{client_version}]. "
    "Please run:\n\nsudo jtop --install-service"
)
LOST_CONNECTION = "Lost connection with jtop server"
CLIENT_VERSION = "7.2.2"  # the jetson-stats the fixtures were recorded with


class JtopException(Exception):
    """Named like jetson-stats' own (jtop.core.exceptions.JtopException): str() is the
    message."""

    def __init__(self, message: str, errors: str = "") -> None:
        super().__init__(message, errors)
        self.message = message
        self.errors = errors

    def __str__(self) -> str:
        return str(self.message)


def load_fixture(name: str) -> dict[str, Any]:
    """A fixture by file stem, e.g. "agx-orin-64gb"; a fresh copy each time, free to edit."""
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


class DictLike:
    """Reads like the library's GenericInterface (Memory, GPU, Fan): the dict-style methods,
    over the fixture's own dict, so edits to the fixture show in the next read."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def items(self) -> Any:
        return self._data.items()

    def keys(self) -> Any:
        return self._data.keys()

    def values(self) -> Any:
        return self._data.values()

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default)

    def __len__(self) -> int:
        return len(self._data)

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, DictLike):
            return self._data == other._data
        if isinstance(other, dict):
            return self._data == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # like the library's: unhashable

    def __repr__(self) -> str:
        return repr(self._data)


class FakeNVPModel:
    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    @property
    def name(self) -> str:
        return str(self._data["name"])

    @property
    def id(self) -> int:
        return int(self._data["id"])

    @property
    def models(self) -> list[str]:
        return list(self._data.get("models", []))

    def __repr__(self) -> str:  # the library defines only __repr__, which str() uses
        return self.name


class FakeJetsonClocks:
    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    @property
    def status(self) -> str:
        return str(self._data["status"])

    @property
    def boot(self) -> bool:
        return bool(self._data.get("boot", False))

    def is_config(self) -> bool:
        return bool(self._data.get("config", False))

    def __bool__(self) -> bool:
        return bool(self._data["enabled"])


class FakeJtop:
    """Serves one fixture through the `jtop.jtop` client's attributes.

    `fixture` is the live data: edit it (or `fake.fixture[...]`) between samples to change
    what the next read returns. `start()` fails as the real one does, in its order:
    `service_running=False` raises the library's "service not active" JtopException,
    `socket_denied=True` its "can't access" one (the socket refused this user, errno 13),
    and a `service_version` whose major.minor differs from `client_version` its version
    mismatch; `service_hung=True` makes it block, as the real one does against a service that
    accepts and never answers, until `hang_released` is set. `die()` ends the reader thread
    as a lost service does; a later `start()` connects afresh, as a new client would (the
    real source makes a new client each time; this one serves again). `opener` is what to
    hand to JetsonSource as `open_jtop`.
    """

    def __init__(
        self,
        fixture: dict[str, Any],
        *,
        service_running: bool = True,
        socket_denied: bool = False,
        service_version: str = CLIENT_VERSION,
        client_version: str = CLIENT_VERSION,
        service_hung: bool = False,
    ) -> None:
        self.fixture = copy.deepcopy(fixture)
        self.service_running = service_running
        self.socket_denied = socket_denied
        self.service_version = service_version
        self.client_version = client_version
        self.service_hung = service_hung
        self.hang_released = threading.Event()
        self.requested_interval: float | None = None
        self.start_calls = 0
        self.close_calls = 0
        self._stats: dict[str, Any] = {}
        self._running = False
        self._alive = False
        self._error: BaseException | None = None

    @classmethod
    def from_fixture(
        cls,
        name: str,
        *,
        service_running: bool = True,
        socket_denied: bool = False,
        service_version: str = CLIENT_VERSION,
        client_version: str = CLIENT_VERSION,
        service_hung: bool = False,
    ) -> FakeJtop:
        return cls(
            load_fixture(name),
            service_running=service_running,
            socket_denied=socket_denied,
            service_version=service_version,
            client_version=client_version,
            service_hung=service_hung,
        )

    def opener(self, interval: float) -> FakeJtop:
        """Does what JetsonSource's default opener does with the real library."""
        self.requested_interval = interval
        self.start()
        return self

    # -- the client's lifecycle ----------------------------------------------------------

    def start(self) -> None:
        self.start_calls += 1
        if self.service_hung:
            # jtop's start() waits on the service without a timeout; so does this.
            self.hang_released.wait()
        if not self.service_running:
            raise JtopException(SERVICE_NOT_ACTIVE)
        if self.socket_denied:
            raise JtopException(CANNOT_ACCESS)
        if _major_minor(self.service_version) != _major_minor(self.client_version):
            raise JtopException(
                VERSION_MISMATCH.format(
                    service_version=self.service_version, client_version=self.client_version
                )
            )
        self._stats = self.fixture
        self._error = None  # a new connection: the last one's error is not this one's
        self._running = True
        self._alive = True

    def ok(self, spin: bool = False) -> bool:
        if self._error is not None:
            raise self._error
        return self._running

    def is_alive(self) -> bool:
        return self._alive

    def close(self) -> None:
        self.close_calls += 1
        self._running = False
        self._alive = False

    def die(self, error: BaseException | None = None) -> None:
        """The reader thread ends on an error, as when jtop.service goes away: it stores the
        error (by default the library's "Lost connection" JtopException) for ok() to raise."""
        self._error = error if error is not None else JtopException(LOST_CONNECTION)
        self._alive = False

    def stop_quietly(self) -> None:
        """The reader thread ends with nothing stored, as after someone else closed the
        client: ok() then answers False."""
        self._alive = False
        self._running = False

    # -- what the client reads -----------------------------------------------------------

    @property
    def board(self) -> dict[str, Any]:
        board: dict[str, Any] = self.fixture["board"]
        return board

    @property
    def memory(self) -> DictLike:
        return DictLike(self._stats["memory"])

    @property
    def gpu(self) -> DictLike:
        return DictLike(self._stats["gpu"])

    @property
    def fan(self) -> DictLike:
        return DictLike(self._stats["fan"])

    @property
    def power(self) -> dict[str, Any]:
        power: dict[str, Any] = self._stats["power"]
        return power

    @property
    def temperature(self) -> dict[str, Any]:
        temperature: dict[str, Any] = self._stats["temperature"]
        return temperature

    @property
    def engine(self) -> dict[str, Any]:
        engine: dict[str, Any] = self._stats.get("engine", {})
        return engine

    @property
    def cpu(self) -> dict[str, Any]:
        cpu: dict[str, Any] = self._stats["cpu"]
        return cpu

    @property
    def processes(self) -> list[list[Any]]:
        processes: list[list[Any]] = self._stats["processes"]
        return processes

    @property
    def uptime(self) -> timedelta:
        return timedelta(seconds=self._stats["uptime"])

    @property
    def interval(self) -> float:
        return float(self._stats["interval"])

    @property
    def nvpmodel(self) -> FakeNVPModel | None:
        data = self._stats.get("nvpmodel")
        return FakeNVPModel(data) if data is not None else None

    @property
    def jetson_clocks(self) -> FakeJetsonClocks | None:
        data = self._stats.get("jetson_clocks")
        return FakeJetsonClocks(data) if data is not None else None

    @property
    def stats(self) -> dict[str, Any]:
        """The flat summary the real `stats` gives (a subset: no time/uptime)."""
        flat: dict[str, Any] = {}
        for index, core in enumerate(self.cpu["cpu"], start=1):
            flat[f"CPU{index}"] = 100 - int(core["idle"]) if core["online"] else "OFF"
        ram = self.memory["RAM"]
        flat["RAM"] = ram["used"] / ram["tot"] if ram["tot"] > 0 else 0
        for index, gpu in enumerate(self.gpu.values()):
            flat["GPU" if index == 0 else f"GPU{index}"] = gpu["status"]["load"]
        for name, zone in self.temperature.items():
            flat[f"Temp {name}"] = zone["temp"]
        if self.power:
            for name, rail in self.power["rail"].items():
                flat[f"Power {name}"] = rail["power"]
            flat["Power TOT"] = self.power["tot"]["power"]
        return flat


def _major_minor(version: str) -> str:
    """What jetson-stats' compare_versions compares (jtop/core/common.py)."""
    return ".".join(version.split(".")[:2])


def failing_opener(error: BaseException) -> Callable[[float], Any]:
    """An `open_jtop` that fails as importing or starting the library can."""

    def opener(interval: float) -> Any:
        raise error

    return opener
