"""Hypothesis profiles of the property-based fuzz tests: brief in `make test`, long on demand.

`LLAMAHERD_FUZZ=long` (what `make fuzz` sets) selects thousands of examples per property;
the default keeps each property to a couple of seconds. Neither writes an example database
into the checkout: a failure prints its minimal example and the `@reproduce_failure` line.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "llamaherd-brief",
    max_examples=40,
    deadline=None,  # a shared 2-core machine: the properties bound time themselves
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile(
    "llamaherd-long",
    parent=settings.get_profile("llamaherd-brief"),
    max_examples=int(os.environ.get("LLAMAHERD_FUZZ_EXAMPLES", "3000")),
)


def fuzz_settings(examples_scale: float = 1.0) -> settings:
    """The selected profile, with its example count scaled for a slow property."""
    profile = settings.get_profile(
        "llamaherd-long" if os.environ.get("LLAMAHERD_FUZZ") == "long" else "llamaherd-brief"
    )
    return settings(profile, max_examples=max(1, int(profile.max_examples * examples_scale)))
