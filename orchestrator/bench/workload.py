"""What a benchmark sends and when: load levels, arrival schedules and synthetic prompts.

Pure: the random generator is passed in, so a seed gives the same prompts and the same
arrival times on every run.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

LoadKind = Literal["concurrency", "rate", "poisson"]


class WorkloadError(ValueError):
    """A workload the command line described that cannot be run; the message says why."""


@dataclass(frozen=True)
class Level:
    """One load level: `concurrency` streams kept busy (closed loop), or an open-loop
    arrival rate in requests per second, evenly spaced (`rate`) or Poisson (`poisson`)."""

    kind: LoadKind
    value: float

    @property
    def label(self) -> str:
        if self.kind == "concurrency":
            return f"c={int(self.value)}"
        prefix = "poisson " if self.kind == "poisson" else ""
        return f"{prefix}{self.value:g} req/s"

    @property
    def streams(self) -> int:
        """Streams kept busy (concurrency levels) or used for warm-up (rate levels: one)."""
        return int(self.value) if self.kind == "concurrency" else 1


def parse_levels(kind: LoadKind, text: str) -> tuple[Level, ...]:
    """`1,2,4` for `--concurrency`, `0.5,2` for `--rate` and `--poisson`."""
    flag = f"--{kind}"
    levels = []
    for part in text.split(","):
        part = part.strip()
        try:
            value = float(part)
        except ValueError:
            raise WorkloadError(f"{flag} {text!r}: {part!r} is not a number") from None
        if not math.isfinite(value) or value <= 0:
            unit = "streams" if kind == "concurrency" else "requests per second"
            raise WorkloadError(f"{flag} {text!r}: {part} must be more than 0 {unit}")
        if kind == "concurrency" and value != int(value):
            raise WorkloadError(f"{flag} {text!r}: {part} is not a whole number of streams")
        levels.append(Level(kind, value))
    return tuple(levels)


def arrival_offsets(
    level: Level, rng: random.Random, count: int | None = None, within_s: float | None = None
) -> list[float]:
    """Send times, in seconds from the level's start, of open-loop requests: the first at 0,
    then gaps of 1/rate (`rate`) or exponential gaps of mean 1/rate (`poisson`, as vLLM's
    `--request-rate` with burstiness 1). `count` times, or those inside `within_s`."""
    if level.kind == "concurrency":
        raise WorkloadError("a concurrency level has no arrival schedule")
    if count is None and within_s is None:
        raise WorkloadError("an arrival schedule needs a request count or a duration")
    offsets: list[float] = []
    now = 0.0
    while (count is None or len(offsets) < count) and (within_s is None or now <= within_s):
        offsets.append(now)
        now += rng.expovariate(level.value) if level.kind == "poisson" else 1 / level.value
    return offsets


# Common English words that most tokenizers (SentencePiece, BPE) hold as one token with
# their leading space, so a prompt's token count grows one per word and a word count
# can hit a token count exactly.
WORDS = tuple(
    "the of and to in is it that was for on are as with his they at be this from have or "
    "by one had not but what all were when we there can an your which their said if do "
    "will each about how up out them then she many some so these would other into has "
    "more her two like him see time could no make than first been its who now people my "
    "made over did down only way find use may water long little very after words called "
    "just where most know get through back much go good new write our me man too any day "
    "same right look think also around another came come work three word must because "
    "does part even place well such here take why things help put years different away "
    "again off went old number great tell men say small every found still between name "
    "should home big give air line set own under read last never us left end along while "
    "might next sound below saw something thought both few those always looked show large "
    "often together asked house world going want school important until form food keep".split()
)


def prompt_text(words: int, rng: random.Random) -> str:
    """`words` words drawn from WORDS. Each request gets its own draw, so a server's prompt
    cache cannot serve one request's prefix from another's."""
    return " ".join(rng.choice(WORDS) for _ in range(max(words, 1)))


def request_rng(seed: int, level: int, index: int) -> random.Random:
    """The generator for one request's prompt: the same seed gives the same prompts."""
    return random.Random(f"{seed}:{level}:{index}")


# ---- length distributions ------------------------------------------------------------
LENGTH_FORM = "N, uniform:MIN-MAX or normal:MEAN,STDEV (whole tokens; normal clipped to 1 or more)"


@dataclass(frozen=True)
class Lengths:
    """A token length per request: `fixed` N, `uniform` over [low, high] inclusive, or
    `normal` with mean `low` and standard deviation `high`, rounded and clipped to 1 or more.
    Drawn from a generator passed in, so a seed gives the same lengths."""

    kind: Literal["fixed", "uniform", "normal"]
    low: float
    high: float = 0.0

    @property
    def text(self) -> str:
        if self.kind == "fixed":
            return f"{self.low:g}"
        sep = "-" if self.kind == "uniform" else ","
        return f"{self.kind}:{self.low:g}{sep}{self.high:g}"

    @property
    def mean(self) -> float:
        """The distribution's centre (before clipping): what the prompt is calibrated at."""
        return (self.low + self.high) / 2 if self.kind == "uniform" else self.low

    @property
    def fixed(self) -> int | None:
        return int(self.low) if self.kind == "fixed" else None

    def draw(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            return int(self.low)
        if self.kind == "uniform":
            return rng.randint(int(self.low), int(self.high))
        return max(1, round(rng.gauss(self.low, self.high)))


def parse_lengths(flag: str, text: str) -> Lengths:
    """`128`, `uniform:64-256` or `normal:128,32` -> Lengths; WorkloadError naming the flag."""
    raw = text.strip().lower()
    kind, _, spec = raw.partition(":")
    bad = f"{flag} {text!r} is not of the form {LENGTH_FORM}"
    if not spec:
        if not kind.isdigit():
            raise WorkloadError(bad)
        if int(kind) < 1:
            raise WorkloadError(f"{flag} {text}: must be at least 1")
        return Lengths("fixed", int(kind))
    parts = spec.split("-" if kind == "uniform" else ",")
    if kind not in ("uniform", "normal") or len(parts) != 2:
        raise WorkloadError(bad)
    try:
        a, b = (float(part) for part in parts)
    except ValueError:
        raise WorkloadError(bad) from None
    if kind == "uniform":
        if a != int(a) or b != int(b) or not 1 <= a <= b:
            raise WorkloadError(f"{flag} {text!r}: MIN and MAX must be whole, 1 <= MIN <= MAX")
    elif not (math.isfinite(a) and math.isfinite(b) and a >= 1 and b >= 0):
        raise WorkloadError(f"{flag} {text!r}: MEAN must be 1 or more and STDEV 0 or more")
    return Lengths(kind, a, b)  # type: ignore[arg-type]


def length_rng(seed: int, what: str, level: int, index: int) -> random.Random:
    """The generator for one request's `what` ("prompt" or "output") length."""
    return random.Random(f"{seed}:{what}-length:{level}:{index}")


def words_for(tokens: int, overhead: int) -> int:
    """Words of WORDS (one token each) that make a prompt of `tokens` tokens when the
    server adds `overhead` tokens of its own (BOS, chat template)."""
    return max(tokens - overhead, 1)


def next_word_count(points: list[tuple[int, int]], target_tokens: int) -> int:
    """The next word count to try so that a prompt holds `target_tokens` tokens, given
    (words, tokens) measured so far: a secant step through the last two points (one token
    per word and a fixed overhead from one point)."""
    if not points:
        return max(target_tokens, 1)
    if len(points) == 1 or points[-1][0] == points[-2][0]:
        words, tokens = points[-1]
        return max(words + target_tokens - tokens, 1)
    (w0, t0), (w1, t1) = points[-2], points[-1]
    slope = (t1 - t0) / (w1 - w0) or 1.0
    return max(round(w1 + (target_tokens - t1) / slope), 1)
