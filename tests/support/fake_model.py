"""Real LocalModels over the fake llama.cpp backend, for the registry's and the servicer's
unit tests.

FakeModelBackend adds to tests/support/fake_backend.py's FakeBackend the few model reads a
LocalModel needs besides the engine's calls (worker.models.local.ModelBackend): still a
stand-in at the llama.cpp boundary only. `FakeModels` is the registry's LocalFactory: it
builds the LocalModel (its jobs, leases, engine and chat template selection are the real
code) and keeps each backend, so tests can script replies or slow steps down.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from support.fake_backend import EOS, FakeBackend, FakeSampler

from common.model_settings import ModelConfig
from worker.engine.sampling import SamplingParams
from worker.models.chat import select_template
from worker.models.local import LocalModel
from worker.models.served import ModelFacts

NO_BOS = -1  # the fake's tokenize adds no BOS, so no token is one


class FakeModelBackend(FakeBackend):
    def __init__(self, n_seq: int, n_batch: int, n_ctx_seq: int) -> None:
        super().__init__(n_seq=n_seq, n_batch=n_batch, n_ctx_seq=n_ctx_seq, record=False)
        self.bos = NO_BOS
        self.closed = False
        self.sampled_with: list[SamplingParams] = []  # the params of every sampler built

    def sampler(self, params: SamplingParams, grammar: str | None) -> FakeSampler:  # type: ignore[override]
        self.sampled_with.append(params)
        return FakeSampler(self)  # greedy whatever the params: the scripted token

    def detokenize(self, tokens: Sequence[int]) -> str:
        return bytes(t for t in tokens if t < EOS).decode("utf-8", errors="replace")

    def token_bytes(self, token: int) -> bytes:
        return b"</s>" if token == EOS else bytes((token,))

    def close(self) -> None:
        if self.closed:
            raise RuntimeError("backend closed twice")
        self.closed = True


class FakeModels:
    """Builds LocalModels over fake backends; `backends[alias]` is the latest for an alias."""

    def __init__(self) -> None:
        self.backends: dict[str, FakeModelBackend] = {}
        self.built: list[str] = []

    def __call__(self, config: ModelConfig, facts: ModelFacts) -> LocalModel:
        backend = FakeModelBackend(facts.n_parallel, config.n_batch, facts.n_ctx)
        template = None
        if not config.embedding:
            template = select_template(
                config_template=config.chat_template,
                chat_format=config.chat_format,
                gguf_template=facts.gguf.chat_template,
                architecture=facts.gguf.architecture,
                bos_token="",
                eos_token="</s>",
            )
        self.backends[config.alias] = backend
        self.built.append(config.alias)
        return LocalModel(config, facts, backend, template)


if TYPE_CHECKING:
    from worker.models.local import ModelBackend

    def _conforms(backend: FakeModelBackend) -> ModelBackend:
        return backend
