"""`llamaherd worker` (also `python -m worker`): flags derived from WorkerSettings, so they
never drift from it."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from common.cluster_secrets import refuse_token_flag
from common.settings import ConfigError, add_settings_flags
from worker.config import WorkerSettings, build_settings
from worker.models.tools_cli import add_model_tool_parsers

DESCRIPTION = (
    "Run a worker: hosts GGUF models with llama.cpp and serves them over gRPC (the "
    "llamaherd.v1.Worker service, health checks and reflection). With no models configured "
    "it serves the embedded Gemma 3 270M model."
)
# Settings a person never sets: the worker writes them for the child hosting a split model.
INTERNAL_SETTINGS = {"split_child"}
# The join token never goes on a command line (ps, shell history): LLAMAHERD_CLUSTER_TOKEN,
# the config file or --cluster-token-file.
SECRET_SETTINGS = {"cluster_token"}


__all__ = ["add_model_tool_parsers", "add_worker_parser", "configure_parser", "run_worker"]


def add_worker_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "worker", help="run a worker node that serves GGUF models over gRPC",
        description=DESCRIPTION,
    )  # fmt: skip
    configure_parser(parser)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, help="YAML or JSON settings file (see deploy/worker.example.yaml)"
    )
    parser.add_argument(
        "--model", dest="model_paths", action="append", type=Path, metavar="GGUF",
        help="serve this GGUF file (alias: its file name without .gguf); repeat for several; "
        "adds to the config file's models",
    )  # fmt: skip
    add_settings_flags(
        parser, WorkerSettings, skip={"models", *INTERNAL_SETTINGS, *SECRET_SETTINGS}
    )
    refuse_token_flag(parser)
    parser.set_defaults(run=run_worker)


def _models_from_flags(paths: list[Path] | None) -> list[dict[str, str]]:
    return [
        {"alias": p.name.removesuffix(".gguf"), "path": str(p.expanduser().resolve())}
        for p in paths or []
    ]


def run_worker(args: argparse.Namespace) -> int:
    overrides = {n: getattr(args, n, None) for n in WorkerSettings.model_fields if n != "models"}
    try:
        settings = build_settings(args.config, overrides=overrides)
        extra = _models_from_flags(args.model_paths)
        if extra:
            merged = [m.model_dump() for m in settings.models] + extra
            settings = build_settings(args.config, overrides={**overrides, "models": merged})
    except ConfigError as exc:
        print(f"llamaherd worker: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    from worker.api.server import serve  # imports llama.cpp: only when actually serving

    try:
        return asyncio.run(serve(settings))
    except ConfigError as exc:
        print(f"llamaherd worker: {exc}", file=sys.stderr)
        return 2
