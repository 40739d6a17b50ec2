"""Settings of any llamaherd process, layered: defaults < config file < environment < flags.

The worker and the coordinator each have one frozen settings model; this module reads the
file and the environment for either, and explains validation errors field by field.
"""

from __future__ import annotations

import argparse
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ByteSize, ValidationError

from common.model_settings import BUILTIN_PREFIX


def log_level_name(level: str) -> str:
    upper = level.upper()
    if upper not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError(f"log_level must be DEBUG, INFO, WARNING or ERROR, not {level!r}")
    return upper


class ConfigError(Exception):
    """The process cannot start with this configuration; the message says what to fix."""


def read_config_file(path: Path) -> dict[str, Any]:
    """Reads a YAML or JSON config file; relative model paths are taken from its folder."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML/JSON: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings at the top level")
    base = path.resolve().parent
    for entry in data.get("models") or []:
        if isinstance(entry, dict) and isinstance(entry.get("path"), str):
            entry["path"] = _resolve_model_path(entry["path"], base)
    return data


def _resolve_model_path(raw: str, base: Path) -> str:
    if raw.startswith(BUILTIN_PREFIX):
        return raw
    expanded = Path(os.path.expanduser(raw))
    return str(expanded if expanded.is_absolute() else base / expanded)


def env_overrides(
    fields: Mapping[str, Any], environ: Mapping[str, str], prefix: str
) -> dict[str, str]:
    """<prefix><FIELD> for each of `fields` that the environment sets."""
    found: dict[str, str] = {}
    for name in fields:
        value = environ.get(prefix + name.upper())
        if value is not None:
            found[name] = value
    return found


SettingsT = TypeVar("SettingsT", bound=BaseModel)


def layered_settings(
    model: type[SettingsT],
    env_prefix: str,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> SettingsT:
    """Any process's settings: defaults < config file < <env_prefix><FIELD> < flags.

    Only scalar fields come from the environment; lists (models, labels) from the file or
    repeatable flags.
    """
    data: dict[str, Any] = read_config_file(config_file) if config_file else {}
    scalar_fields = {
        n: f for n, f in model.model_fields.items() if typing.get_origin(f.annotation) is not tuple
    }
    env = os.environ if environ is None else environ
    data.update(env_overrides(scalar_fields, env, env_prefix))
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        source = f" (config file {config_file})" if config_file else ""
        raise ConfigError(f"invalid settings{source}:\n{describe(exc)}") from exc


def describe(exc: ValidationError, sep: str = "\n") -> str:
    """pydantic's errors as `field.path: message` lines."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        parts.append(f"{where}: {err['msg']}")
    return sep.join(parts)


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
