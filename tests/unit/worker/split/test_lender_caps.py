"""StartRpcServer refuses a lease without memory set aside and leases beyond the node's cap
(issue 14: reserve_bytes=0 started RPC server processes with no cap at all)."""

from __future__ import annotations

import asyncio

import pytest

from common.errors import InvalidArgument, ResourceExhausted
from common.memory import GiB
from worker.models.estimate import MemoryBudget
from worker.split.lender import RpcLender


def _lender(max_leases: int = 8) -> tuple[RpcLender, MemoryBudget]:
    budget = MemoryBudget(limit_bytes=8 * GiB, reserve_bytes=0, available=lambda: 8 * GiB)
    return RpcLender("127.0.0.1", "127.0.0.1", budget, 1, max_leases), budget


@pytest.mark.parametrize("reserve", [0, -1])
def test_a_lease_with_no_memory_set_aside_is_refused(reserve: int) -> None:
    lender, budget = _lender()
    with pytest.raises(InvalidArgument, match=f"reserve_bytes is {reserve}: a lease must"):
        asyncio.run(lender.start("l1", "127.0.0.1", reserve))
    assert lender.leases() == [] and budget.reserved_bytes == 0


def test_leases_beyond_max_leases_are_resource_exhausted_before_any_process_starts() -> None:
    lender, budget = _lender(max_leases=0)
    with pytest.raises(ResourceExhausted, match=r"lends 0 RPC servers.*max_leases=0"):
        asyncio.run(lender.start("l1", "127.0.0.1", GiB))
    assert lender.leases() == [] and budget.reserved_bytes == 0
