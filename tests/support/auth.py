"""The integration tests' cluster join token: one per test run, in LLAMAHERD_CLUSTER_TOKEN
(tests/integration/conftest.py sets it), so every worker and coordinator a test starts
inherits it, and the clients below send it."""

from __future__ import annotations

import os

import grpc
from pydantic import SecretStr

from common.cluster_auth import auth_metadata, sync_channel
from common.cluster_secrets import TOKEN_ENV, new_secret


def use_run_token() -> SecretStr:
    """For scripts outside pytest (benchmarks): a join token for this run in the
    environment, which every worker and coordinator they start inherits."""
    return SecretStr(os.environ.setdefault(TOKEN_ENV, new_secret()))


def cluster_token() -> SecretStr:
    return SecretStr(os.environ[TOKEN_ENV])


def worker_channel(address: str) -> grpc.Channel:
    """A channel to a worker of the test run that sends the join token with every call."""
    return sync_channel(address, cluster_token())


def token_metadata() -> tuple[tuple[str, str], ...]:
    return auth_metadata(cluster_token())
