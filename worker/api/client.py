"""A small synchronous client of the Worker API, for the CLI, benchmarks and tools."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from llamaherd.v1 import generation_pb2 as gen_pb
from llamaherd.v1 import worker_pb2 as pb
from llamaherd.v1 import worker_pb2_grpc
from pydantic import SecretStr

from common.channels import ChannelClient
from common.cluster_tls import TlsFiles
from common.wire.generation import chat_request


class WorkerClient(ChannelClient):
    """The Worker API, synchronous: for the CLI, benchmarks and tools. A worker with a join
    token needs `token` (common.cluster_secrets.resolve_token reads it from a file)."""

    def __init__(
        self,
        address: str,
        timeout: float | None = None,
        token: SecretStr | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        super().__init__(address, timeout, token, tls)
        self.stub = worker_pb2_grpc.WorkerStub(self._channel)

    def list_models(self) -> list[pb.ModelInfo]:
        return list(self.stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout).models)

    def generate(
        self, model: str, prompt: str, sampling: gen_pb.SamplingParams | None = None
    ) -> Iterator[gen_pb.GenerationChunk]:
        request = gen_pb.GenerateRequest(model=model, prompt=prompt, sampling=sampling)
        yield from self.stub.Generate(request, timeout=self.timeout)

    def chat(
        self,
        model: str,
        messages: Sequence[tuple[str, str]],
        sampling: gen_pb.SamplingParams | None = None,
    ) -> Iterator[gen_pb.GenerationChunk]:
        request = chat_request(model, messages, sampling)
        yield from self.stub.Chat(request, timeout=self.timeout)
