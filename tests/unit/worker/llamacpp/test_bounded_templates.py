"""Jinja chat templates render within limits: loops, output, numbers, recursion, time.

A chat template with nested loops froze a worker for 36.5 s a request (issue 14); each
template here would run for minutes or exhaust memory in Jinja's plain sandbox."""

from __future__ import annotations

import time

import jinja2
import pytest

from worker.engine.limits import RequestLimits
from worker.llamacpp.chat_templates import RENDER_LIMITS, BoundedEnvironment

MESSAGES = [{"role": "user", "content": "hi" * 5000}]


def _render(source: str, limits: RequestLimits | None = None) -> str:
    env = BoundedEnvironment(trim_blocks=True, lstrip_blocks=True)
    token = RENDER_LIMITS.set(limits or RequestLimits())
    try:
        return env.from_string(source).render(messages=MESSAGES)
    finally:
        RENDER_LIMITS.reset(token)


def test_an_ordinary_template_renders_as_in_jinja() -> None:
    source = "{% for m in messages %}<{{ m.role }}>{{ m.content[:4] ~ '!' }}{% endfor %}"
    assert _render(source) == "<user>hihi!"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
            "more than 100000 loop iterations and calls (max_template_iterations)",
        ),
        (
            "{% for a in messages[0].content %}{% for b in messages[0].content %}"
            "{% endfor %}{% endfor %}",
            "(max_template_iterations)",
        ),
        (
            "{% set ns = namespace(x='ab') %}{% for i in range(64) %}"
            "{% set ns.x = ns.x ~ ns.x %}{% endfor %}",
            "the limit is 4194304 (max_prompt_bytes)",
        ),
        ("{{ 'x' * 1000000000 }}", "a value of 1000000000 items"),
        ("{{ 'x'|center(1000000000) }}", "the number 1000000000"),
        ("{{ '{:>999999999}'.format(1) }}", "a width of 999999999"),
        ("{{ '%999999999d' % 1 }}", "a width of 999999999"),
        ("{{ 7 ** 99999999 }}", "the number 99999999"),
        ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "recursed too deeply"),
        ("{% for i in range(200000) %}x{% endfor %}", "range() of 200000 items"),
    ],
)
def test_a_template_over_a_limit_stops_at_once_naming_it(source: str, message: str) -> None:
    started = time.monotonic()
    with pytest.raises(jinja2.TemplateError) as caught:
        _render(source)
    assert message in str(caught.value)
    assert time.monotonic() - started < 2


def test_the_rendered_output_is_capped() -> None:
    limits = RequestLimits(max_prompt_bytes=1000, max_template_iterations=10_000)
    with pytest.raises(jinja2.TemplateError, match=r"passed 1000 characters"):
        _render("{% for i in range(5000) %}{{ 'x' }}{% endfor %}", limits)


def test_a_slow_template_stops_at_the_deadline() -> None:
    limits = RequestLimits(prepare_timeout_s=0.2, max_template_iterations=10**9)
    source = "{% for a in range(4000000) %}{% for b in range(1000) %}{% endfor %}{% endfor %}"
    started = time.monotonic()
    with pytest.raises(jinja2.TemplateError, match=r"longer than 0.2 s \(prepare_timeout_s\)"):
        _render(source, limits)
    assert time.monotonic() - started < 1.5
