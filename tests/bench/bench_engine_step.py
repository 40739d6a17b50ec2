"""The batching engine's own time per decode step, without the model.

Drives worker.engine.batching.ModelEngine over the fake llama.cpp backend
(tests/support/fake_backend.py, whose calls cost next to nothing) with 1, 8 and 32
sequences decoding at once (n_parallel = sequences), and times every backend call. One step
is the interval from one run() of the backend to the next: sampling and streaming the last
batch's tokens, checks, batch assembly. The engine's time per step is that interval minus
the time spent inside the backend's calls (the fake's and the timing wrapper's own work).
Clients read their streams on an asyncio loop thread, as the servicer does, so the figures
include handing every token to the event loop and the GIL it shares with the engine.

On a GPU a small model's step takes a few milliseconds; the engine's share decides whether
the worker keeps up with llama-server there. Goal: <= 0.2 ms per step at 8 sequences.

    .venv/bin/python tests/bench/bench_engine_step.py [--steps 400] [--repeats 5] \\
        [--sequences 1 8 32] [--json out.json] [--profile 8]

--profile N prints where the engine thread's time goes at N sequences (cProfile).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import itertools
import json
import pstats
import shlex
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for support.*
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository

from support.fake_backend import FakeBackend, FakeSampler

from common.errors import Unavailable
from worker.engine.batching import GenerationJob, ModelEngine
from worker.engine.generation import GenerationEvent
from worker.engine.streams import EventStream

PROMPT_TOKENS = 16
WARMUP_STEPS = 20  # prefill and the first decodes, before the measured steps
clock = time.perf_counter


class Meter:
    """Accumulates the time spent inside backend calls; marks each run()."""

    def __init__(self, steps: int, profile: cProfile.Profile | None) -> None:
        self.inside = 0.0
        self.marks: list[tuple[float, float]] = []  # (entry time of a run, inside so far)
        self.done = threading.Event()
        self._limit = WARMUP_STEPS + steps + 1
        self._profile = profile


class TimedSampler:
    def __init__(self, inner: FakeSampler, meter: Meter) -> None:
        self._inner, self._meter = inner, meter

    def sample(self, index: int) -> int:
        t = clock()
        token = self._inner.sample(index)
        self._meter.inside += clock() - t
        return token

    def sample_saved(self, seq_id: int) -> int:
        t = clock()
        token = self._inner.sample_saved(seq_id)
        self._meter.inside += clock() - t
        return token

    def close(self) -> None:
        self._inner.close()


class TimedBackend:
    """The fake backend with every call timed (worker.engine.backend.Backend)."""

    def __init__(self, inner: FakeBackend, meter: Meter) -> None:
        self._inner, self._m = inner, meter
        self.n_vocab, self.n_seq = inner.n_vocab, inner.n_seq

    @property
    def batch_room(self) -> int:
        t = clock()
        room = self._inner.batch_room
        self._m.inside += clock() - t
        return room

    def tokenize(
        self, text: str, add_special: bool = True, parse_special: bool = True
    ) -> list[int]:
        return self._inner.tokenize(text, add_special, parse_special)

    def piece(self, token: int) -> bytes:
        t = clock()
        piece = self._inner.piece(token)
        self._m.inside += clock() - t
        return piece

    def is_eog(self, token: int) -> bool:
        t = clock()
        eog = self._inner.is_eog(token)
        self._m.inside += clock() - t
        return eog

    def add(self, tokens: Sequence[int], start_pos: int, seq_id: int, logits: bool) -> int:
        t = clock()
        index = self._inner.add(tokens, start_pos, seq_id, logits)
        self._m.inside += clock() - t
        return index

    def run(self, all_logits: bool = False) -> None:
        t = clock()
        m = self._m
        m.marks.append((t, m.inside))
        if m._profile is not None and len(m.marks) == WARMUP_STEPS:
            m._profile.enable()  # on this, the engine's, thread
        if len(m.marks) >= m._limit:
            if m._profile is not None:
                m._profile.disable()
            m.done.set()
        self._inner.run(all_logits)
        m.inside += clock() - t

    def remove(self, seq_id: int, start: int) -> bool:
        return self._inner.remove(seq_id, start)

    def clear(self) -> None:
        self._inner.clear()

    def save_logits(self, seq_id: int, index: int) -> None:
        t = clock()
        self._inner.save_logits(seq_id, index)
        self._m.inside += clock() - t

    def sequence_embedding(self, seq_id: int) -> list[float]:
        return self._inner.sequence_embedding(seq_id)


async def _drain(stream: EventStream[GenerationEvent]) -> None:
    try:
        async for _ in stream.events():
            pass
    except Unavailable:
        pass  # the engine closed at the end of the measurement


def measure(
    sequences: int, steps: int, profile: cProfile.Profile | None = None
) -> tuple[list[float], list[float]]:
    """Engine time and wall time (ms) of each of `steps` decode steps with `sequences`
    decoding."""
    loop = asyncio.new_event_loop()
    loop_thread = threading.Thread(target=loop.run_forever, daemon=True)
    loop_thread.start()
    meter = Meter(steps, profile)
    fake = FakeBackend(n_seq=sequences, n_batch=max(512, sequences), record=False)
    backend = TimedBackend(fake, meter)
    engine = ModelEngine(f"bench-{sequences}", backend, max_queue=sequences)
    jobs, readers = [], []
    for i in range(sequences):
        stream: EventStream[GenerationEvent] = EventStream(loop)
        prompt = [(i * 7 + k) % 256 for k in range(PROMPT_TOKENS)]  # distinct first tokens
        sampler = TimedSampler(fake.sampler(), meter)
        jobs.append(GenerationJob(f"r{i}", prompt, sampler, (), 1 << 30, stream))
        readers.append(asyncio.run_coroutine_threadsafe(_drain(stream), loop))
    for job in jobs:
        engine.submit(job)
    if not meter.done.wait(600):
        raise RuntimeError("the engine stopped stepping")
    engine.close("benchmark over", 10)
    for reader in readers:
        reader.result(10)
    loop.call_soon_threadsafe(loop.stop)
    loop_thread.join(10)
    marks = meter.marks[WARMUP_STEPS : WARMUP_STEPS + steps + 1]
    pairs = list(itertools.pairwise(marks))
    engine = [((t1 - t0) - (in1 - in0)) * 1e3 for (t0, in0), (t1, in1) in pairs]
    wall = [(t1 - t0) * 1e3 for (t0, _), (t1, _) in pairs]
    return engine, wall


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sequences", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--steps", type=int, default=400, help="measured steps per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--profile", type=int, metavar="N", help="cProfile at N sequences")
    args = parser.parse_args()
    command = shlex.join([".venv/bin/python", "tests/bench/bench_engine_step.py", *sys.argv[1:]])

    if args.profile:
        profile = cProfile.Profile()
        measure(args.profile, args.steps, profile)
        print(f"engine thread at {args.profile} sequences, {args.steps} steps:")
        pstats.Stats(profile).sort_stats("tottime").print_stats(18)
        return

    results = []
    for n in args.sequences:
        medians, everything, walls = [], [], []
        for _ in range(args.repeats):
            per_step, wall = measure(n, args.steps)
            medians.append(statistics.median(per_step))
            everything.extend(per_step)
            walls.extend(wall)
        results.append(
            {
                "sequences": n,
                "steps": len(everything),
                "median_ms": statistics.median(everything),
                "p90_ms": percentile(everything, 0.9),
                "per_sequence_us": statistics.median(everything) / n * 1e3,
                "wall_median_ms": statistics.median(walls),  # with the fake's own calls
                "repeat_medians_ms": medians,
            }
        )

    print(f"command: {command}\n")
    print(
        "| sequences | engine ms/step p50 | p90 | µs per sequence (p50) | "
        "step with fake calls p50 (ms) | repeat medians (ms) |"
    )
    print("|---:|---:|---:|---:|---:|---|")
    for r in results:
        spread = ", ".join(f"{m:.3f}" for m in r["repeat_medians_ms"])
        print(
            f"| {r['sequences']} | {r['median_ms']:.3f} | {r['p90_ms']:.3f} | "
            f"{r['per_sequence_us']:.1f} | {r['wall_median_ms']:.3f} | {spread} |"
        )
    report = {"command": command, "python": sys.version.split()[0], "results": results}
    text = json.dumps(report, indent=2)
    print("\n" + text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
