"""The top-k search behind log-probabilities agrees with a full sort, however peaked the
distribution (worker.llamacpp.backend._top_k)."""

from __future__ import annotations

import numpy as np
import pytest

from worker.llamacpp.backend import _top_k


@pytest.mark.parametrize("k", [1, 5, 20])
@pytest.mark.parametrize("spread", [0.1, 3.0, 300.0])
def test_top_k_matches_a_full_sort(k: int, spread: float) -> None:
    logits = (np.random.default_rng(k).standard_normal(50_000) * spread).astype(np.float32)
    expected = np.argsort(-logits, kind="stable")[:k]
    assert list(_top_k(logits, float(logits.max()), k)) == list(expected)


def test_a_peaked_row_with_masked_tokens_still_gives_k_ids() -> None:
    logits = np.full(1000, -np.inf, dtype=np.float32)
    logits[[7, 3, 900]] = [50.0, -2000.0, -10.0]
    assert list(_top_k(logits, 50.0, 3)) == [7, 900, 3]
    assert list(_top_k(logits, 50.0, 5))[:3] == [7, 900, 3]  # then two of the masked ones
