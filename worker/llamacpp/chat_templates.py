"""Chat templates: llama.cpp's built-in ones (llama_chat_apply_template), which need no
Jinja, and the bounded Jinja environment that renders the others.

The template logic lives in llama.cpp or in the model's Jinja text; worker.models.chat
chooses which template a model uses and turns refusals into client errors.
"""

from __future__ import annotations

import contextvars
import ctypes
import functools
import re
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from llama_cpp import llama_cpp as C

from worker.engine.limits import RequestLimits


def builtin_template_names() -> list[str]:
    """The names llama_chat_apply_template knows (chatml, gemma, llama3, ...)."""
    count = C.llama_chat_builtin_templates(None, 0)
    names = (ctypes.c_char_p * count)()
    C.llama_chat_builtin_templates(names, count)
    return [n.decode() for n in names if n]


def apply_builtin_template(name: str, messages: Sequence[tuple[str, str]]) -> str | None:
    """Renders (role, content) pairs with the built-in template `name`, ending with the
    assistant's turn opened; None if llama.cpp refuses (unknown template or messages)."""
    encoded = [(role.encode(), content.encode()) for role, content in messages]
    chat = (C.llama_chat_message * len(encoded))()
    for slot, (role, content) in zip(chat, encoded, strict=True):
        slot.role = role
        slot.content = content
    # A first guess that fits most chats; llama.cpp reports the size it needs otherwise.
    size = sum(len(r) + len(c) for r, c in encoded) * 2 + 256
    while True:
        buf = ctypes.create_string_buffer(size)
        n = C.llama_chat_apply_template(name.encode(), chat, len(encoded), True, buf, size)
        if n < 0:
            return None
        if n <= size:
            return buf.raw[:n].decode("utf-8", errors="replace")
        size = n


# ---- Jinja templates within limits ---------------------------------------------------------
# A Jinja chat template comes from a model file or a LoadModel request: a stranger's program.
# Jinja's sandbox stops it from reaching Python's internals, not from running long or
# building huge strings (nested loops froze a worker for 36.5 s a request). The environment
# below bounds both: every loop iteration, call and concatenation is counted against a
# per-render budget (iterations, output size, a deadline), checked as the template runs.

RENDER_LIMITS: contextvars.ContextVar[RequestLimits] = contextvars.ContextVar(
    "RENDER_LIMITS",
    default=RequestLimits(),  # noqa: B039 (a frozen dataclass)
)
"""The limits a render on this thread applies; the request's preparation sets them."""

_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("_BUDGET", default=None)
_LOOP_FILTER = "llamaherd_bounded_loop"
_SIZE_FILTER = "llamaherd_bounded_size"
_FORMAT_NUMBER = re.compile(r"\d+")


class TemplateLimitError(jinja2.TemplateError):
    """A template went over a render limit; the message names the limit and its setting."""


class _Budget:
    """What one render may still do."""

    def __init__(self, limits: RequestLimits, clock: Callable[[], float]) -> None:
        self.limits = limits
        self.clock = clock
        self.deadline = clock() + limits.prepare_timeout_s
        self.steps = 0

    def step(self) -> None:
        self.steps += 1
        if self.steps > self.limits.max_template_iterations:
            raise TemplateLimitError(
                f"the template ran more than {self.limits.max_template_iterations} loop "
                "iterations and calls (max_template_iterations)"
            )
        if self.steps % 256 == 0:
            self.check_time()

    def check_time(self) -> None:
        if self.clock() > self.deadline:
            raise TemplateLimitError(
                f"the template ran longer than {self.limits.prepare_timeout_s:g} s "
                "(prepare_timeout_s)"
            )

    def check_size(self, value: Any) -> Any:
        if isinstance(value, str | list | tuple | dict):
            self.check_length(len(value))
        return value

    def check_length(self, length: int) -> None:
        if length > self.limits.max_prompt_bytes:
            raise TemplateLimitError(
                f"the template built a value of {length} items; the limit is "
                f"{self.limits.max_prompt_bytes} (max_prompt_bytes)"
            )

    def check_arguments(self, *args: Any) -> None:
        """Refuses a number (or a width inside a format string) that would make a string
        larger than the output may be, before the string is made."""
        cap = self.limits.max_prompt_bytes
        for arg in args:
            if isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) > cap:
                raise TemplateLimitError(
                    f"the template used the number {arg}; numbers above {cap} "
                    "(max_prompt_bytes) are refused"
                )
            if isinstance(arg, str) and ("%" in arg or "{" in arg):
                for number in _FORMAT_NUMBER.findall(arg):
                    if len(number) > 12 or int(number) > cap:
                        raise TemplateLimitError(
                            f"the template formats with a width of {number}; the limit is "
                            f"{cap} (max_prompt_bytes)"
                        )


def _budget() -> _Budget:
    budget = _BUDGET.get()
    if budget is None:  # rendered other than through BoundedTemplate.render
        budget = _Budget(RENDER_LIMITS.get(), time.monotonic)
        _BUDGET.set(budget)
    return budget


def _bounded_loop(iterable: Any) -> Iterator[Any]:
    budget = _budget()
    for item in iterable:
        budget.step()
        yield item


def _bounded_size(value: Any) -> Any:
    return _budget().check_size(value)


def _bounded_range(*args: int) -> range:
    budget = _budget()
    numbers = range(*args)  # lazy: its length is known without making it
    if len(numbers) > budget.limits.max_template_iterations:
        raise TemplateLimitError(
            f"range() of {len(numbers)} items; the limit is "
            f"{budget.limits.max_template_iterations} (max_template_iterations)"
        )
    return numbers


def bounded_filter(
    name: str, fn: Callable[..., Any], data_arguments: int = 0
) -> Callable[..., Any]:
    """`fn` as a filter counted against the render's budget (steps, argument sizes, result
    size), as every filter of BoundedEnvironment is. The first `data_arguments` arguments
    are data (a message's text), not sizes or formats: their numbers are not checked."""

    @functools.wraps(fn)  # keeps jinja's pass_context/pass_environment marks
    def bounded(*args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.step()
        budget.check_arguments(*args[data_arguments:], *kwargs.values())
        return budget.check_size(fn(*args, **kwargs))

    return bounded


class BoundedTemplate(jinja2.Template):
    """Renders within the RENDER_LIMITS of the calling context."""

    def render(self, *args: Any, **kwargs: Any) -> str:
        budget = _Budget(RENDER_LIMITS.get(), time.monotonic)
        token = _BUDGET.set(budget)
        try:
            chunks: list[str] = []
            size = 0
            for chunk in self.generate(*args, **kwargs):
                size += len(chunk)
                if size > budget.limits.max_prompt_bytes:
                    raise TemplateLimitError(
                        f"the rendered prompt passed {budget.limits.max_prompt_bytes} "
                        "characters (max_prompt_bytes)"
                    )
                budget.check_time()
                chunks.append(chunk)
            return "".join(chunks)
        except RecursionError:
            raise TemplateLimitError("the template recursed too deeply") from None
        except MemoryError:
            raise TemplateLimitError("the template ran out of memory") from None
        finally:
            _BUDGET.reset(token)


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox with every loop, call, filter, range and string operation
    counted against the render's budget (RENDER_LIMITS)."""

    template_class = BoundedTemplate
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.filters = {name: bounded_filter(name, fn) for name, fn in self.filters.items()}
        self.filters[_LOOP_FILTER] = _bounded_loop
        self.filters[_SIZE_FILTER] = _bounded_size
        self.globals["range"] = _bounded_range

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        # Jinja has no hook for loops or for `~`: wrap each loop's iterable and each
        # concatenation in a counting filter in the parsed tree, before it is compiled.
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Filter(
                loop.iter, _LOOP_FILTER, [], [], None, None, lineno=loop.lineno
            )
        for parent in [tree, *tree.find_all(nodes.Node)]:  # a snapshot: new nodes not in it
            for field, value in parent.iter_fields():
                if isinstance(value, nodes.Concat):
                    setattr(parent, field, _sized(value))
                elif isinstance(value, list):
                    value[:] = [_sized(v) if isinstance(v, nodes.Concat) else v for v in value]
        return tree

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.step()
        if __obj is not _bounded_range:  # a range is bounded by its length instead
            budget.check_arguments(getattr(__obj, "__self__", None), *args, *kwargs.values())
        return budget.check_size(super().call(__context, __obj, *args, **kwargs))

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, str) and attribute in ("format", "format_map"):
            _budget().check_arguments(obj)  # the widths in a format string
        return super().getattr(obj, attribute)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        budget = _budget()
        budget.step()
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int):
                    budget.check_length(len(seq) * max(times, 0))
        elif operator == "**":
            budget.check_arguments(right)
            if isinstance(right, int) and abs(right) > 1024 and abs(left) > 1:
                raise TemplateLimitError(f"the template raised a number to the power {right}")
        elif operator == "%":
            budget.check_arguments(left)
        return budget.check_size(super().call_binop(context, operator, left, right))


def _sized(concat: nodes.Concat) -> nodes.Filter:
    return nodes.Filter(concat, _SIZE_FILTER, [], [], None, None, lineno=concat.lineno)
