"""JetPack from L4T (worker/telemetry/jetpack.py): the table, its fallback within a release
line, and reading L4T from /etc/nv_tegra_release."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.telemetry.jetpack import jetpack_for_l4t, l4t_from_tegra_release


@pytest.mark.parametrize(
    ("l4t", "jetpack"),
    [
        ("36.4.3", "6.2"),  # unknown to jetson-stats 4.2.12 and 4.3.2
        ("36.4.4", "6.2.1"),
        ("36.4.0", "6.1"),
        ("36.3", "6.0"),  # two fields count as .0
        ("36.3.0", "6.0"),
        ("35.6.0", "5.1.4"),
        ("35.4.1", "5.1.2"),
        ("38.2.0", "7.0"),
    ],
)
def test_known_releases(l4t, jetpack):
    assert jetpack_for_l4t(l4t) == jetpack


def test_an_unknown_release_gets_only_what_its_line_shares():
    assert jetpack_for_l4t("35.6.9") == "5.1"  # every 35.6.x is JetPack 5.1.x
    assert jetpack_for_l4t("36.4.9") == ""  # 36.4.x spans 6.1 and 6.2: no guess
    assert jetpack_for_l4t("40.0.0") == ""


@pytest.mark.parametrize("l4t", ["", "N.N.N", "36.4.3-custom", " "])
def test_no_release_or_a_malformed_one_is_empty(l4t):
    assert jetpack_for_l4t(l4t) == ""


def test_l4t_from_nv_tegra_release(tmp_path: Path):
    path = tmp_path / "nv_tegra_release"
    path.write_text(
        "# R35 (release), REVISION: 6.0, GCID: 36191598, BOARD: t186ref, EABI: aarch64, "
        "DATE: Mon May  6 17:00:00 UTC 2024\n# KERNEL_VARIANT: oot\n"
    )
    assert l4t_from_tegra_release(path) == "35.6.0"
    assert jetpack_for_l4t(l4t_from_tegra_release(path)) == "5.1.4"


def test_l4t_from_a_missing_or_odd_file_is_empty(tmp_path: Path):
    assert l4t_from_tegra_release(tmp_path / "absent") == ""
    odd = tmp_path / "nv_tegra_release"
    odd.write_text("")
    assert l4t_from_tegra_release(odd) == ""
    odd.write_text("something else\n")
    assert l4t_from_tegra_release(odd) == ""
