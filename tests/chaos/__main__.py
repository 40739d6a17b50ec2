"""`make chaos`: the chaos and abuse suite against a real cluster on loopback.

Starts `llamaherd coordinator` (its own local Ray) and worker processes serving the embedded
Gemma, with a cluster join token in the environment, then runs each scenario under a steady
load of mixed streaming and non-streaming OpenAI HTTP requests and prints one line per
scenario. Exits 1 when any request was lost or a scenario's check failed (see RELIABILITY.md).

    PYTHONPATH=tests .venv/bin/python -m chaos [--json chaos.json] [--scenarios a,b]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path

from chaos.scenarios import SCENARIOS, TOKEN_ENV, Chaos, Row

COLUMNS = ("scenario", "sent", "ok", "failed", "lost", "recovery s", "verdict")


def table(rows: list[Row]) -> str:
    cells = [
        (r.scenario, str(r.sent), str(r.ok), str(r.failed), str(r.lost),
         "-" if r.recovery_s is None else f"{r.recovery_s:.1f}", r.verdict)
        for r in rows
    ]  # fmt: skip
    widths = [max(len(c[i]) for c in [COLUMNS, *cells]) for i in range(len(COLUMNS))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(COLUMNS, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row, cell in zip(rows, cells, strict=True):
        lines.append("  ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)))
        lines += [f"    {note}" for note in row.notes]
        lines += [f"    lost: {d}" for d in row.lost_details[:5]]
        lines += [f"    failed: {d}" for d in row.failed_details[:3]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=3, help="worker processes (default 3)")
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help=f"comma-separated: {', '.join(SCENARIOS)}"
    )
    parser.add_argument("--no-split", action="store_true", help="skip the split model")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--workdir", type=Path, help="logs and configs (default: a temp dir)")
    args = parser.parse_args(argv)
    names = [n for n in args.scenarios.split(",") if n]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(unknown)}")
    command = "make chaos" + (f" ARGS={shlex.quote(' '.join(argv or sys.argv[1:]))}"
                              if (argv or sys.argv[1:]) else "")  # fmt: skip
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="llamaherd-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    # Every process started inherits the join token (as a real cluster's do), and keeps its
    # secrets in the work directory rather than the user's.
    os.environ.setdefault(TOKEN_ENV, secrets.token_urlsafe(32))
    os.environ["LLAMAHERD_NODE_KEY_DIR"] = str(workdir / "node-keys")
    os.environ["LLAMAHERD_COORDINATOR_CLUSTER_TOKEN_FILE"] = str(workdir / "cluster-token")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

    def log(line: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {line}", flush=True)

    started = time.monotonic()
    chaos = Chaos(workdir, args.workers, split=not args.no_split, log=log)
    rows: list[Row] = []
    try:
        log(f"starting the coordinator and {args.workers} workers (logs in {workdir})")
        chaos.start()
        log(f"cluster started; healthy after {chaos.heal():.1f} s more")
        for name in names:
            log(f"scenario {name}")
            began = time.monotonic()
            try:
                row = SCENARIOS[name](chaos)
            except Exception as exc:  # one broken scenario must not hide the rest
                row = Row(name, verdict="FAIL", notes=[f"harness error: {exc!r}"])
                traceback.print_exc()
            row.seconds = round(time.monotonic() - began, 1)
            rows.append(row)
            log(f"  {row.scenario}: sent {row.sent} ok {row.ok} failed {row.failed} "
                f"lost {row.lost} ({row.verdict})")  # fmt: skip
            if name != names[-1]:
                try:
                    chaos.heal()
                except TimeoutError as exc:
                    log(f"  the cluster did not heal: {exc}; later scenarios may fail")
    except Exception as exc:  # report what ran, then fail
        traceback.print_exc()
        rows.append(Row("cluster start", verdict="FAIL", notes=[f"{exc!r}"[:500]]))
    finally:
        chaos.stop()
    total = round(time.monotonic() - started, 1)
    print(f"\n{command}    ({total} s, {args.workers} workers, logs in {workdir})\n")
    print(table(rows))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "command": command,
                    "seconds": total,
                    "workers": args.workers,
                    "rows": [r.as_dict() for r in rows],
                },
                indent=2,
            )
        )
    bad = [r.scenario for r in rows if r.verdict == "FAIL"]
    lost = sum(r.lost for r in rows)
    print(f"\nlost requests: {lost}; failing scenarios: {', '.join(bad) or 'none'}")
    return 1 if bad or lost else 0


if __name__ == "__main__":
    sys.exit(main())
