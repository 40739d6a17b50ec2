"""JetPack from L4T: the project's own copy of NVIDIA's release list, for the jetson-stats
versions whose table predates the board's L4T (jetson-stats 4.2.12 knows nothing after
36.4.0, so a JetPack 6.2 board reports an empty JetPack through it).

The table is jetson-stats 7.2.2's NVIDIA_JETPACK (jtop/core/jetson_variables.py), which
follows NVIDIA's JetPack archive; extend it from there when NVIDIA publishes a release.
"""

from __future__ import annotations

import re
from pathlib import Path

# L4T release -> JetPack, as jetson-stats 7.2.2 names them (suffixes such as "GA" or "DP" kept).
L4T_TO_JETPACK: dict[str, str] = {
    # JetPack 7
    "39.2.2": "7.2.2",
    "39.2.1": "7.2.1",
    "39.2.0": "7.2 GA",
    "39.0.0": "7.2 EA",
    "38.4.0": "7.1",
    "38.2.2": "7.0",
    "38.2.1": "7.0",
    "38.2.0": "7.0",
    # JetPack 6
    "36.5.2": "6.2.3",
    "36.5.0": "6.2.2",
    "36.4.7": "6.2.1",
    "36.4.4": "6.2.1",
    "36.4.3": "6.2",
    "36.4.2": "6.1 (rev1)",
    "36.4.0": "6.1",
    "36.3.0": "6.0",
    "36.2.0": "6.0 DP",
    "36.0.0": "6.0 EA",
    # JetPack 5
    "35.6.5": "5.1.7",
    "35.6.4": "5.1.6",
    "35.6.3": "5.1.5",
    "35.6.2": "5.1.5",
    "35.6.1": "5.1.5",
    "35.6.0": "5.1.4",
    "35.5.0": "5.1.3",
    "35.4.1": "5.1.2",
    "35.3.1": "5.1.1",
    "35.3.0": "5.1.1 PRE",
    "35.2.1": "5.1",
    "35.1.0": "5.0.2 GA",
    "34.1.1": "5.0.1 DP",
    "34.1.0": "5.0 DP",
    "34.0.1": "5.0 PRE-DP",
}

# /etc/nv_tegra_release's first line: "# R36 (release), REVISION: 4.3, GCID: ..., BOARD: ..."
_TEGRA_RELEASE = re.compile(r"#\s*R(?P<major>\d+)\s*\(release\),\s*REVISION:\s*(?P<rev>[\d.]+)")
_VERSION = re.compile(r"\d+(\.\d+)*")


def jetpack_for_l4t(l4t: str) -> str:
    """JetPack for an L4T release ("36.4.3" -> "6.2"); "" where the release is not known.

    "36.3" counts as "36.3.0". A release missing from the table gets the part of JetPack
    that every known release of its L4T major.minor shares, when they share at least
    major.minor ("35.6.9" -> "5.1"), and nothing otherwise: no guessing across releases.
    """
    l4t = l4t.strip()
    if not _VERSION.fullmatch(l4t):
        return ""
    parts = l4t.split(".")
    normalised = ".".join([*parts, "0", "0"][:3]) if len(parts) < 3 else l4t
    if normalised in L4T_TO_JETPACK:
        return L4T_TO_JETPACK[normalised]
    prefix = ".".join(normalised.split(".")[:2]) + "."
    siblings = [jp.split()[0] for rel, jp in L4T_TO_JETPACK.items() if rel.startswith(prefix)]
    shared = _common_version_prefix(siblings)
    return shared if shared.count(".") >= 1 else ""


def l4t_from_tegra_release(path: Path) -> str:
    """L4T ("36.4.3") from /etc/nv_tegra_release ("# R36 (release), REVISION: 4.3, ..."); "" when
    the file is missing or says something else."""
    try:
        first_line = path.read_text(errors="replace").splitlines()[0]
    except (OSError, IndexError):
        return ""
    found = _TEGRA_RELEASE.search(first_line)
    return f"{found['major']}.{found['rev']}" if found else ""


def _common_version_prefix(versions: list[str]) -> str:
    if not versions:
        return ""
    split = [v.split(".") for v in versions]
    shared: list[str] = []
    for fields in zip(*split, strict=False):
        if len(set(fields)) != 1:
            break
        shared.append(fields[0])
    return ".".join(shared)
