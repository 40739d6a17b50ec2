"""The worker registry over real gRPC in this process: forged heartbeats (no token, a wrong
token, no node key, another node's id) are refused and change nothing; the node id stays
bound to the key it registered with; the same worker reconnecting takes over its id."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from llamaherd.v1 import cluster_pb2 as cl_pb
from llamaherd.v1 import cluster_pb2_grpc
from pydantic import SecretStr

from common.cluster_auth import NODE_KEY_KEY, REFUSAL, auth_metadata
from common.cluster_secrets import TlsFiles
from common.cluster_tls import aio_channel
from common.hardware import HardwareInfo
from common.status import NodeStatus
from common.wire.status import node_status_to_report
from orchestrator.certs import init_ca, issue
from orchestrator.cluster.registry import WorkerRegistry

TOKEN = SecretStr("the-cluster-token")
Scenario = Callable[[WorkerRegistry, aio.Channel], Awaitable[None]]


def report(node_id: str = "worker-a", address: str = "10.0.0.1:50051") -> cl_pb.NodeReport:
    return node_status_to_report(NodeStatus(node_id, address, HardwareInfo("x86-cpu")), 0)


def metadata(token: SecretStr | None = TOKEN, key: str | None = "key-a") -> Any:
    pairs = list(auth_metadata(token))
    if key is not None:
        pairs.append((NODE_KEY_KEY, key))
    return tuple(pairs)


class Stream:
    """One worker's heartbeat stream: reports go out when `send` is called."""

    def __init__(self, channel: aio.Channel, meta: Any) -> None:
        self._queue: asyncio.Queue[cl_pb.NodeReport | None] = asyncio.Queue()
        stub = cluster_pb2_grpc.CoordinatorStub(channel)
        self.call = stub.Heartbeat(self._reports(), metadata=meta)

    async def _reports(self) -> AsyncIterator[cl_pb.NodeReport]:
        while (item := await self._queue.get()) is not None:
            yield item

    async def send(self, item: cl_pb.NodeReport) -> cl_pb.HeartbeatReply:
        await self._queue.put(item)
        reply: cl_pb.HeartbeatReply = await asyncio.wait_for(self.call.read(), 5)
        return reply

    async def refusal(self, item: cl_pb.NodeReport | None) -> aio.AioRpcError:
        """The error the call ends with after `item` is sent; None sends nothing, for a
        refusal decided on the call's metadata alone (token, node key). Sending a report
        there would race the refusal: a client write that fails because the server has
        already ended the call replaces the server's status with INTERNAL "Internal error
        from Core" (grpcio's asyncio client, grpc/grpc#36066; about 1 call in 1,000 here)."""
        with pytest.raises(aio.AioRpcError) as refused:
            if item is None:
                await asyncio.wait_for(self.call.read(), 5)
            else:
                await self.send(item)
        return refused.value

    async def close(self) -> None:
        await self._queue.put(None)
        self.call.cancel()


@asynccontextmanager
async def registry() -> AsyncIterator[tuple[WorkerRegistry, aio.Channel]]:
    reg = WorkerRegistry(1.0, 3.0, 60.0, TOKEN)
    port = await reg.start("127.0.0.1", 0)
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield reg, channel
    finally:
        await channel.close()
        await reg.stop()


def run(scenario: Scenario) -> None:
    async def main() -> None:
        async with registry() as (reg, channel):
            await scenario(reg, channel)

    asyncio.run(main())


@pytest.mark.parametrize("token", [None, SecretStr("a-guessed-token")])
def test_a_forged_heartbeat_without_the_token_is_refused_and_changes_nothing(
    token: SecretStr | None,
) -> None:
    async def scenario(reg: WorkerRegistry, channel: aio.Channel) -> None:
        before = reg.snapshot()
        forged = Stream(channel, metadata(token=token, key="forger"))
        refused = await forged.refusal(None)  # refused on its metadata, before any report
        assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
        assert refused.details() == REFUSAL
        after = reg.snapshot()
        assert after.nodes == () and after.version == before.version

    run(scenario)


def test_a_stream_without_a_node_key_is_refused() -> None:
    async def scenario(reg: WorkerRegistry, channel: aio.Channel) -> None:
        keyless = Stream(channel, metadata(key=None))
        refused = await keyless.refusal(None)  # refused on its metadata
        assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
        assert reg.snapshot().nodes == ()
        (refusal,) = reg.snapshot().refusals
        assert (refusal.node_id, refusal.reason) == ("", "it sent no node key")

    run(scenario)


def test_a_registration_under_a_live_workers_id_with_another_key_is_refused() -> None:
    async def scenario(reg: WorkerRegistry, channel: aio.Channel) -> None:
        live = Stream(channel, metadata(key="key-a"))
        assert (await live.send(report())).heartbeat_interval_s == 1.0
        version = reg.snapshot().version

        impostor = Stream(channel, metadata(key="key-b"))
        refused = await impostor.refusal(report(address="10.6.6.6:50051"))
        assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
        assert refused.details() == "registration refused", "nothing about the live node"
        await impostor.close()
        await asyncio.sleep(0.1)  # the refused stream's end has been handled

        (node,) = reg.snapshot().nodes
        assert node.up and node.address == "10.0.0.1:50051"
        # The nodes did not change; only the refusal was recorded (for the dashboards).
        assert reg.snapshot().version == version + 1
        (refusal,) = reg.snapshot().refusals
        assert (refusal.seq, refusal.node_id) == (1, "worker-a")
        assert refusal.reason == "its node id is bound to another node key"
        assert refusal.peer.startswith("ipv4:127.0.0.1:")
        # The live worker's stream is unaffected: its reports still go through.
        await live._queue.put(report())
        await asyncio.sleep(0.1)
        assert reg.snapshot().version == version + 2 and reg.snapshot().nodes[0].up
        await live.close()

    run(scenario)


def test_the_same_worker_reconnecting_takes_over_its_id_and_the_old_stream_no_longer_counts() -> (
    None
):
    async def scenario(reg: WorkerRegistry, channel: aio.Channel) -> None:
        old = Stream(channel, metadata(key="key-a"))
        await old.send(report())
        new = Stream(channel, metadata(key="key-a"))
        await new.send(report(address="10.0.0.9:50051"))  # restarted, maybe elsewhere
        await old.close()
        await asyncio.sleep(0.1)
        (node,) = reg.snapshot().nodes
        assert node.up and node.address == "10.0.0.9:50051"
        await new.close()
        await asyncio.sleep(0.1)
        (node,) = reg.snapshot().nodes
        assert not node.up and node.down_reason == "heartbeat stream closed"

    run(scenario)


def test_a_stream_cannot_switch_to_another_node_id() -> None:
    async def scenario(reg: WorkerRegistry, channel: aio.Channel) -> None:
        stream = Stream(channel, metadata())
        await stream.send(report("worker-a"))
        reply = await stream.send(report("worker-b"))
        assert "cannot switch" in reply.error
        assert [n.node_id for n in reg.snapshot().nodes] == ["worker-a"]
        assert reg.snapshot().refusals == (), "a bad report is not a refused registration"

    run(scenario)


# ---- with mutual TLS: the node id is the certificate's common name -----------------------------
@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tls")
    init_ca(folder)
    for name in ("coordinator", "worker-a"):
        issue(name, folder)
    return folder


def tls_files(pki: Path, name: str) -> TlsFiles:
    files = TlsFiles.load(pki / "ca.crt", pki / f"{name}.crt", pki / f"{name}.key")
    assert files is not None
    return files


def run_tls(
    pki: Path,
    client: str | None,
    scenario: Callable[[WorkerRegistry, aio.Channel], Awaitable[None]],
) -> None:
    async def main() -> None:
        reg = WorkerRegistry(1.0, 3.0, 60.0, TOKEN, tls=tls_files(pki, "coordinator"))
        port = await reg.start("127.0.0.1", 0)
        address = f"127.0.0.1:{port}"
        if client is None:  # trusts the CA but has no certificate of its own
            ca = (pki / "ca.crt").read_bytes()
            channel = aio.secure_channel(address, grpc.ssl_channel_credentials(ca))
        else:
            channel = aio_channel(address, tls_files(pki, client))
        try:
            await scenario(reg, channel)
        finally:
            await channel.close()
            await reg.stop()

    asyncio.run(main())


def test_with_tls_a_worker_registers_under_its_certificates_name_only(pki: Path) -> None:
    async def scenario(reg: WorkerRegistry, channel: aio.Channel) -> None:
        other = Stream(channel, metadata(key="key-b"))
        refused = await other.refusal(report("worker-b"))
        assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
        assert reg.snapshot().nodes == ()
        (refusal,) = reg.snapshot().refusals
        assert refusal.node_id == "worker-b"
        assert refusal.reason == "its certificate names 'worker-a'"
        own = Stream(channel, metadata(key="key-a"))
        await own.send(report("worker-a"))
        assert [n.node_id for n in reg.snapshot().nodes] == ["worker-a"]
        await own.close()

    run_tls(pki, "worker-a", scenario)


def test_with_tls_a_client_without_a_cluster_certificate_gets_no_connection(pki: Path) -> None:
    async def scenario(reg: WorkerRegistry, channel: aio.Channel) -> None:
        refused = await Stream(channel, metadata()).refusal(report("worker-a"))
        assert refused.code() == grpc.StatusCode.UNAVAILABLE
        assert reg.snapshot().nodes == ()

    run_tls(pki, None, scenario)
