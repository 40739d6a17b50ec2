"""Measured capacities (`llamaherd capacity`): what one node sustains for one model within an
SLO, and the JSON file in the coordinator's state directory that keeps them.

The file (`state_dir`/capacity.json, 0600) is the durable store: `llamaherd capacity --save`
writes it on the coordinator's machine, the worker registry reads it at start and again when
it changes, and every cluster snapshot carries its records to the gateways (admission,
orchestrator.routing.admission) and to the status view. Plain values, no I/O but the file's.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

CAPACITY_FILE = "capacity.json"
FILE_VERSION = 1


class CapacityFileError(ValueError):
    """The capacity file cannot be read or written; the message names it and the problem."""


@dataclass(frozen=True)
class CapacityRecord:
    """One measurement: `node` sustains `max_streams` concurrent streams of `model` (an
    alias) loaded with `n_ctx` context while meeting `slo` (e.g. ttft_p99=2s,itl_p99=150ms).

    The rates explain the figure: `prefill_tps` prompt tokens per second (the prompt over the
    TTFT of a lone request), `decode_tps_stream` output tokens per second of one stream and
    `decode_tps_total` of all streams together, both at `max_streams`. `e2e_s` is the mean
    end-to-end time of a request at `max_streams`, from which admission estimates when a
    stream frees. `watts` is the node's mean reported power during the run, when it reports
    power; `measured_at` is Unix time."""

    node: str
    model: str
    n_ctx: int
    slo: str
    max_streams: int  # 0: not even one stream met the SLO
    prefill_tps: float
    decode_tps_stream: float
    decode_tps_total: float
    e2e_s: float
    prompt_tokens: int
    output_tokens: int
    measured_at: float
    model_sha256: str = ""
    quant: str = ""
    watts: float | None = None

    @property
    def key(self) -> tuple[str, str, int]:
        """A later record with the same key replaces an earlier one."""
        return (self.node, self.model, self.n_ctx)

    @property
    def streams_per_watt(self) -> float | None:
        if self.watts is None or self.watts <= 0:
            return None
        return self.max_streams / self.watts


@dataclass(frozen=True)
class _CapacityFile:
    version: int
    records: tuple[CapacityRecord, ...]


@functools.cache
def _adapter() -> TypeAdapter[_CapacityFile]:
    return TypeAdapter(_CapacityFile)


def merged(records: Iterable[CapacityRecord], new: CapacityRecord) -> tuple[CapacityRecord, ...]:
    """`records` with `new` added, replacing the record of the same node, model and n_ctx;
    sorted by that key so the file and the snapshot list them in a stable order."""
    kept = {r.key: r for r in records}
    kept[new.key] = new
    return tuple(kept[k] for k in sorted(kept))


def load_records(path: Path) -> tuple[CapacityRecord, ...]:
    """The records in `path`; none when it does not exist. CapacityFileError when it cannot
    be read or holds something else."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ()
    except OSError as exc:
        raise CapacityFileError(f"cannot read {path}: {exc.strerror}") from None
    try:
        document = _adapter().validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CapacityFileError(f"{path} is not a capacity file: {where}: {first['msg']}") from None
    if document.version != FILE_VERSION:
        raise CapacityFileError(f"{path} has version {document.version}; this reads {FILE_VERSION}")
    return document.records


def save_records(path: Path, records: Sequence[CapacityRecord]) -> None:
    """Writes `records` to `path` (0600, its directory 0700 when created) atomically: a
    reader sees the old file or the new one, never half of one."""
    document = _CapacityFile(FILE_VERSION, tuple(records))
    text = json.dumps(dataclasses.asdict(document), indent=1) + "\n"
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".new")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(partial, path)
    except OSError as exc:
        raise CapacityFileError(f"cannot write {exc.filename or path}: {exc.strerror}") from None


def save_record(path: Path, record: CapacityRecord) -> tuple[CapacityRecord, ...]:
    """Adds `record` to the file at `path` (replacing the one of the same key); returns
    every record the file now holds."""
    records = merged(load_records(path), record)
    save_records(path, records)
    return records


def record_for(
    records: Iterable[CapacityRecord], node: str, model: str, n_ctx: int
) -> CapacityRecord | None:
    """The measurement that applies to `node` serving `model` with `n_ctx` context: one made
    with another context does not (a reload changed what the node can hold)."""
    return records_by_key(records).get((node, model, n_ctx))


def records_by_key(
    records: Iterable[CapacityRecord],
) -> dict[tuple[str, str, int], CapacityRecord]:
    """record_for for many lookups: each (node, model, n_ctx) and the record that applies
    to it, the first of `records` for that key."""
    by_key: dict[tuple[str, str, int], CapacityRecord] = {}
    for record in records:
        by_key.setdefault((record.node, record.model, record.n_ctx), record)
    return by_key


def replicas_needed(target_streams: int, measured: Sequence[int]) -> int | None:
    """How many replicas serve `target_streams` concurrent streams, given the measured
    streams of the replicas there are: the best ones first, then, past them all, more
    replicas like the average measured one. None when nothing was measured (or every
    measurement was 0 streams): there is nothing to plan from."""
    per_replica = sorted((max(m, 0) for m in measured), reverse=True)
    if target_streams <= 0:
        return 0
    total = 0
    for count, streams in enumerate(per_replica, start=1):
        total += streams
        if total >= target_streams:
            return count
    mean = sum(per_replica) / len(per_replica) if per_replica else 0
    if mean <= 0:
        return None
    return len(per_replica) + math.ceil((target_streams - total) / mean)
