"""Which device llama.cpp gives each offloaded layer."""

from __future__ import annotations

import pytest

from common.layout import device_layer_counts, offloaded_layers


@pytest.mark.parametrize(
    ("n_gpu_layers", "n_layer", "offloaded"),
    [(-1, 18, 18), (0, 18, 0), (7, 18, 7), (18, 18, 18), (99, 18, 18), (-1, 0, 0)],
)
def test_offloaded_layers_are_the_last_n_gpu_layers_at_most_all(n_gpu_layers, n_layer, offloaded):
    assert offloaded_layers(n_gpu_layers, n_layer) == offloaded


@pytest.mark.parametrize(
    ("offloaded", "shares", "counts"),
    [
        (18, [1, 1], [9, 9]),
        (8, [3, 1], [6, 2]),
        (10, [1, 1, 1], [4, 3, 3]),  # remainders go to the earlier devices
        (4, [1, 0, 1], [2, 0, 2]),  # a device with no share gets no layer
        (5, [0.25, 0.75], [2, 3]),  # fractions, not only weights
        (7, [5], [7]),
        (0, [1, 2], [0, 0]),
        (1, [1, 1], [1, 0]),
    ],
)
def test_device_layer_counts_follow_llama_cpp(offloaded, shares, counts):
    assert device_layer_counts(offloaded, shares) == counts


@pytest.mark.parametrize("offloaded", range(0, 40))
@pytest.mark.parametrize("shares", [[1, 1], [2, 1, 1], [0.1, 0.9], [5, 3, 2, 7], [1, 0, 0]])
def test_device_layer_counts_always_sum_to_the_offloaded_layers(offloaded, shares):
    counts = device_layer_counts(offloaded, shares)
    assert sum(counts) == offloaded and len(counts) == len(shares)
    total = sum(shares)
    for count, share in zip(counts, shares, strict=True):
        assert abs(count - offloaded * share / total) < 1 + 1e-9  # within one layer of exact
