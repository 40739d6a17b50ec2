"""ChatRequest.assistant_prefix: the model continues a reply already begun (what a gateway
sends to move a chat stream to another worker): the messages rendered with the generation
prompt, then the prefix."""

from __future__ import annotations

import asyncio

import pytest
from llamaherd.v1 import generation_pb2 as gen_pb

from common.errors import InvalidArgument
from tests.unit.worker.api.serving import TEMPLATE, serving
from worker.engine.generation import ChatMessage
from worker.models.chat import (
    BuiltinTemplate,
    JinjaTemplate,
    check_messages,
    with_assistant_prefix,
)

MESSAGES = [ChatMessage("user", "Hi")]


def test_a_jinja_template_renders_the_turns_then_the_prefix():
    template = JinjaTemplate(TEMPLATE, "config", "<s>", "</s>")
    assert template.render(with_assistant_prefix(MESSAGES, "Hel")) == "[user]Hi[assistant]Hel"
    assert template.render(with_assistant_prefix(MESSAGES, "")) == "[user]Hi[assistant]"


def test_a_builtin_template_renders_the_turns_then_the_prefix():
    template = BuiltinTemplate("chatml", "chat_format:chatml")
    plain = template.render(MESSAGES)
    assert plain.endswith("<|im_start|>assistant\n")
    assert template.render(with_assistant_prefix(MESSAGES, "Hel")) == plain + "Hel"


def test_a_prefix_alone_is_no_chat():
    with pytest.raises(InvalidArgument, match="messages is empty"):
        check_messages(with_assistant_prefix([], "Hel"))


def test_the_worker_continues_the_reply_after_the_prefix(tmp_path):
    async def scenario() -> None:
        async with serving(tmp_path, {"alias": "m", "chat_template": TEMPLATE}) as worker:
            worker.models.backends["m"].script("[user]Hi[assistant]Hel", "lo!")
            request = gen_pb.ChatRequest(
                model="m",
                messages=[gen_pb.ChatMessage(role="user", content="Hi")],
                assistant_prefix="Hel",
            )
            chunks = [c async for c in worker.stub.Chat(request)]
            assert "".join(c.text for c in chunks) == "lo!"

    asyncio.run(scenario())
