"""Generation requests as the command-line clients build them (worker and gateway alike)."""

from __future__ import annotations

from collections.abc import Sequence

from llamaherd.v1 import generation_pb2 as gen_pb


def chat_request(
    model: str, messages: Sequence[tuple[str, str]], sampling: gen_pb.SamplingParams | None
) -> gen_pb.ChatRequest:
    """A ChatRequest from (role, content) pairs."""
    return gen_pb.ChatRequest(
        model=model,
        messages=[gen_pb.ChatMessage(role=role, content=content) for role, content in messages],
        sampling=sampling,
    )
