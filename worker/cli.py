"""`llamaherd worker`, and flags derived from a settings model so they never drift from it."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ByteSize

from worker.config import ConfigError, WorkerSettings, build_settings


def add_settings_flags(
    parser: argparse.ArgumentParser,
    model: type[BaseModel],
    skip: set[str] = frozenset(),  # type: ignore[assignment]
) -> None:
    """One --flag per field of `model`; help text and defaults come from the field itself.

    Flags default to None so that only flags given on the command line override the config
    file and environment. Tuple fields become repeatable flags.
    """
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        help_text = field.description or ""
        default = field.get_default(call_default_factory=True)
        if default is not None:
            if isinstance(default, ByteSize):
                shown = default.human_readable(separator=" ")
            elif isinstance(default, tuple):
                shown = ", ".join(map(str, default))
            else:
                shown = str(default)
            help_text += f" (default: {shown})"
        annotation = field.annotation
        if typing.get_origin(annotation) is tuple:
            item = typing.get_args(annotation)[0]
            parser.add_argument(
                flag.removesuffix("s"), dest=name, action="append", type=item, default=None,
                help=help_text + "; repeat for several",
            )  # fmt: skip
        elif annotation is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            kind: type = annotation if annotation in (int, float) else str  # type: ignore[assignment]
            parser.add_argument(flag, type=kind, default=None, metavar=name.upper(), help=help_text)


def add_worker_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "worker",
        help="run a worker node that serves GGUF models over gRPC",
        description="Run a worker: hosts GGUF models with llama.cpp and serves them over gRPC "
        "(the llamaherd.v1.Worker service, health checks and reflection). With no models "
        "configured it serves the embedded Gemma 3 270M model.",
    )
    parser.add_argument(
        "--config", type=Path, help="YAML or JSON settings file (see deploy/worker.example.yaml)"
    )
    parser.add_argument(
        "--model", dest="model_paths", action="append", type=Path, metavar="GGUF",
        help="serve this GGUF file (alias: its file name without .gguf); repeat for several; "
        "adds to the config file's models",
    )  # fmt: skip
    add_settings_flags(parser, WorkerSettings, skip={"models"})
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
    from worker.server import serve  # imports llama.cpp: only when actually serving

    try:
        asyncio.run(serve(settings))
    except ConfigError as exc:
        print(f"llamaherd worker: {exc}", file=sys.stderr)
        return 2
    return 0
