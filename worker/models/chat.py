"""Renders chat messages into a model's prompt.

Where the template comes from, in order: the model config's `chat_template` (Jinja), its
`chat_format` (one of llama.cpp's built-in templates), the GGUF's own
`tokenizer.chat_template` (Jinja), and last a fallback by architecture (some GGUFs, like the
embedded Gemma, ship without a template; Gemma's format is well known, anything else gets
ChatML). Jinja templates come from model files, i.e. from strangers: they run in Jinja's
immutable sandbox.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import jinja2

from common.errors import InvalidArgument
from worker.engine.generation import ChatMessage, Tools
from worker.llamacpp.chat_templates import (
    BoundedEnvironment,
    apply_builtin_template,
    bounded_filter,
    builtin_template_names,
)
from worker.models.tool_calls import (
    ToolFormat,
    arguments_object,
    detect_format,
    generic_messages,
    tool_dicts,
)

log = logging.getLogger(__name__)

# GGUF architectures whose chat format is known when the file carries no template.
ARCHITECTURE_FALLBACKS = {"gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma"}
DEFAULT_FALLBACK = "chatml"
MAX_MESSAGES = 4096
# A chat whose last entry has this role continues an assistant reply already begun: the
# entry's content is appended after the generation prompt, not rendered as a turn. The
# Worker API's ChatRequest.assistant_prefix arrives this way (with_assistant_prefix), so
# every template and every ServedModel handle it without a parameter of their own.
ASSISTANT_PREFIX_ROLE = "llamaherd:assistant_prefix"


class ChatTemplate(Protocol):
    @property
    def source(self) -> str:
        """Where the template came from: config, chat_format:<name>, gguf or fallback:<name>."""
        ...

    def render(self, messages: Sequence[ChatMessage]) -> str: ...


@dataclass(frozen=True)
class RenderedChat:
    """A chat's prompt, and the call syntax the model was taught for the tools in it."""

    text: str
    tool_format: ToolFormat = ToolFormat.GENERIC


def render_chat(
    template: ChatTemplate,
    messages: Sequence[ChatMessage],
    tools: Tools,
    schemas: dict[str, dict[str, Any]],
) -> RenderedChat:
    """Renders `messages` offering `tools` (`schemas`: their checked parameters by name).

    A Jinja template gets the tools and the calls in the history as Hugging Face templates
    take them. When it ignores them (it renders the same text without the tools), and for
    llama.cpp's built-in templates, which take no tools, the tools are described in the
    system turn instead and the model is asked for the generic JSON form."""
    if isinstance(template, JinjaTemplate):
        if not tools.tools:
            return RenderedChat(template.render(messages))
        text = template.render(messages, tool_dicts(tools.tools, schemas))
        if text != template.render(messages):
            return RenderedChat(text, template.tool_format)
    elif not tools.tools and not any(m.tool_calls or m.role == "tool" for m in messages):
        return RenderedChat(template.render(messages))
    return RenderedChat(template.render(generic_messages(messages, tools, schemas)))


@dataclass(frozen=True)
class BuiltinTemplate:
    """One of llama.cpp's built-in templates, applied by llama_chat_apply_template."""

    name: str
    source: str

    def render(self, messages: Sequence[ChatMessage]) -> str:
        turns, prefix = split_assistant_prefix(messages)
        text = apply_builtin_template(self.name, [(m.role, m.content) for m in turns])
        if text is None:
            raise InvalidArgument(
                f"the {self.name!r} chat template could not render these messages"
            )
        return text + prefix


class JinjaTemplate:
    """A Hugging Face style Jinja chat template, rendered in a sandbox."""

    def __init__(self, text: str, source: str, bos_token: str, eos_token: str) -> None:
        # Bounded: loops, output and time per render (worker.llamacpp.chat_templates).
        env = BoundedEnvironment(trim_blocks=True, lstrip_blocks=True)
        # tojson writes messages and tools: its value is data, only `indent` is a size
        env.filters["tojson"] = bounded_filter("tojson", _tojson, data_arguments=1)
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
        try:
            self._template = env.from_string(text)
        except jinja2.TemplateError as exc:
            raise InvalidArgument(f"the {source} chat template does not compile: {exc}") from exc
        self.source = source
        self.tool_format = detect_format(text)
        self._bos = bos_token
        self._eos = eos_token

    def render(
        self, messages: Sequence[ChatMessage], tools: list[dict[str, Any]] | None = None
    ) -> str:
        """The prompt; `tools` in OpenAI's shape when the chat offers any."""
        turns, prefix = split_assistant_prefix(messages)
        extra = {"tools": tools} if tools else {}
        try:
            text = self._template.render(
                messages=[_message_dict(m) for m in turns],
                add_generation_prompt=True,
                bos_token=self._bos,
                eos_token=self._eos,
                **extra,
            )
        except jinja2.TemplateError as exc:
            raise InvalidArgument(f"the chat template rejected the messages: {exc}") from exc
        return text + prefix


def with_assistant_prefix(messages: Sequence[ChatMessage], prefix: str) -> list[ChatMessage]:
    """The messages, then `prefix` as the start of the assistant's reply (if not empty)."""
    tail = [ChatMessage(ASSISTANT_PREFIX_ROLE, prefix)] if prefix else []
    return [*messages, *tail]


def split_assistant_prefix(messages: Sequence[ChatMessage]) -> tuple[Sequence[ChatMessage], str]:
    """The turns to render, and the start of the reply that follows the generation prompt."""
    if messages and messages[-1].role == ASSISTANT_PREFIX_ROLE:
        return messages[:-1], messages[-1].content
    return messages, ""


def _message_dict(m: ChatMessage) -> dict[str, Any]:
    """A message as Hugging Face templates read it: calls with their arguments as objects,
    tool results with the id and name of the call they answer."""
    message: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        message["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": arguments_object(c.arguments)},
            }
            for c in m.tool_calls
        ]
    if m.tool_call_id:
        message["tool_call_id"] = m.tool_call_id
    if m.name:
        message["name"] = m.name
    return message


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(value: Any, indent: int | None = None, **_: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def select_template(
    *,
    config_template: str | None,
    chat_format: str | None,
    gguf_template: str | None,
    architecture: str,
    bos_token: str,
    eos_token: str,
) -> ChatTemplate:
    if config_template:
        return JinjaTemplate(config_template, "config", bos_token, eos_token)
    if chat_format:
        known = builtin_template_names()
        if chat_format not in known:
            raise InvalidArgument(
                f"chat_format {chat_format!r} is not a llama.cpp built-in template; "
                f"known: {', '.join(known)}"
            )
        return BuiltinTemplate(chat_format, f"chat_format:{chat_format}")
    if gguf_template:
        try:
            return JinjaTemplate(gguf_template, "gguf", bos_token, eos_token)
        except InvalidArgument as exc:
            # A broken template in a model file must not make the model unusable for Generate.
            log.warning("%s; falling back by architecture", exc.message)
    fallback = ARCHITECTURE_FALLBACKS.get(architecture, DEFAULT_FALLBACK)
    log.warning(
        "model has no chat template; using llama.cpp's %r for architecture %r "
        "(set chat_format or chat_template in its config to choose)",
        fallback,
        architecture,
    )
    return BuiltinTemplate(fallback, f"fallback:{fallback}")


def check_messages(messages: Sequence[ChatMessage]) -> None:
    messages, _ = split_assistant_prefix(messages)
    if not messages:
        raise InvalidArgument("messages is empty: a chat needs at least one message")
    if len(messages) > MAX_MESSAGES:
        raise InvalidArgument(f"messages has {len(messages)} entries; at most {MAX_MESSAGES}")
    for i, m in enumerate(messages):
        if not m.role.strip():
            raise InvalidArgument(f"messages[{i}].role is empty")
