"""A worker is installed without the coordinator's extras (the fleet's wheelhouse, the
container images): every third-party module the worker and `common` import must come with
llamaherd's core dependencies, directly or through theirs."""

from __future__ import annotations

import ast
import contextlib
import re
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Imported only where the library is optional and the import is guarded.
OPTIONAL = {"jtop", "cryptography"}
_NAME = re.compile(r"^[A-Za-z0-9._-]+")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_top_levels(*packages: str) -> dict[str, str]:
    """Top-level module -> a file importing it at module level (not inside a function)."""
    found: dict[str, str] = {}
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text(), str(path))
            for node in tree.body:
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for name in names:
                    found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def _requirement_closure(requirements: list[str]) -> set[str]:
    """Distributions installed by these requirements, without extras, transitively."""
    seen: set[str] = set()
    todo = list(requirements)
    while todo:
        requirement = todo.pop()
        if "extra ==" in requirement:
            continue
        if ";" in requirement and "sys_platform" in requirement and sys.platform not in requirement:
            continue
        match = _NAME.match(requirement.strip())
        if match is None:
            continue
        name = _canonical(match.group(0))
        if name in seen:
            continue
        seen.add(name)
        with contextlib.suppress(metadata.PackageNotFoundError):  # not installed here
            todo.extend(metadata.requires(name) or [])
    return seen


def test_the_worker_imports_only_what_its_core_dependencies_install() -> None:
    core = [r for r in metadata.requires("llamaherd") or [] if "extra ==" not in r]
    installed = _requirement_closure(core)
    providers = metadata.packages_distributions()
    missing = {}
    for module, where in _imported_top_levels("worker", "common").items():
        if module in OPTIONAL or module in sys.stdlib_module_names:
            continue
        if module in {"worker", "common", "llamaherd"}:
            continue
        dists = {_canonical(d) for d in providers.get(module, [])}
        if not dists & installed:
            missing[module] = where
    assert not missing, (
        "the worker imports modules its core dependencies do not install "
        f"(add them to [project] dependencies in pyproject.toml): {missing}"
    )
