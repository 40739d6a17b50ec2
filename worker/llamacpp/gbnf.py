"""A request's constraint as a GBNF grammar, within the worker's limits; and why a grammar
was rejected.

llama.cpp is the judge of what a grammar means; but its parser prints the reason to stderr
and only returns "failed". After it refuses a grammar, this lint looks for the usual
mistakes so the client's error can say which rule is wrong. It never accepts or rejects a
grammar itself. What it does refuse, before llama.cpp or the schema converter sees them,
are grammars and schemas over the request limits (worker.engine.limits): their size and
their repetition counts bound the work and memory a constraint costs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from llama_cpp.llama_grammar import JSON_GBNF, SchemaConverter, json_schema_to_gbnf

from common.errors import InvalidArgument
from worker.engine.generation import Constraint, ConstraintKind
from worker.engine.limits import RequestLimits, check_size, parse_schema

_WORD = re.compile(r"[A-Za-z0-9_-]+")
_BOUNDS = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")


def _strip_literals(text: str) -> str:
    """Blanks out strings, character classes, token literals, comments and repetition counts."""
    out: list[str] = []
    i, n = 0, len(text)
    closers = {'"': '"', "[": "]", "<": ">", "{": "}"}
    while i < n:
        c = text[i]
        if c == "#":
            while i < n and text[i] != "\n":
                i += 1
            continue
        if c in closers:
            end = closers[c]
            i += 1
            while i < n and text[i] != end:
                i += 2 if text[i] == "\\" else 1
            i += 1
            out.append(" ")
            continue
        out.append(c)
        i += 1
    return "".join(out)


def diagnose(grammar: str) -> str | None:
    """A human explanation of what is wrong with `grammar`, if a common mistake is found."""
    code = _strip_literals(grammar)
    defined = set(re.findall(r"([A-Za-z0-9_-]+)\s*::=", code))
    if not defined:
        return 'it defines no rules (a rule looks like: root ::= "yes" | "no")'
    if "root" not in defined:
        return f"it has no `root` rule to start from (rules defined: {', '.join(sorted(defined))})"
    used = {w for w in _WORD.findall(re.sub(r"::=", " ", code)) if not w.isdigit()}
    undefined = sorted(used - defined)
    if undefined:
        return f"it uses rules that are never defined: {', '.join(undefined)}"
    return None


def repetition_bounds(grammar: str) -> list[int]:
    """The numbers in the grammar's repetition operators (`{m}`, `{m,}`, `{m,n}`), outside
    its literals and comments: llama.cpp expands each into that many rule items."""
    bounds: list[int] = []
    i, n = 0, len(grammar)
    closers = {'"': '"', "[": "]", "<": ">"}
    while i < n:
        c = grammar[i]
        if c == "#":
            while i < n and grammar[i] != "\n":
                i += 1
            continue
        if c in closers:
            end = closers[c]
            i += 1
            while i < n and grammar[i] != end:
                i += 2 if grammar[i] == "\\" else 1
            i += 1
            continue
        if c == "{":
            match = _BOUNDS.match(grammar, i)
            if match:
                bounds.extend(int(g) for g in match.groups() if g)
                i = match.end()
                continue
        i += 1
    return bounds


def check_grammar(grammar: str, limits: RequestLimits, what: str = "constraint.grammar") -> None:
    """Refuses a grammar larger than max_grammar_bytes or repeating more than max_repetition."""
    check_size(
        what, len(grammar.encode("utf-8", "surrogatepass")), limits.max_grammar_bytes,
        "max_grammar_bytes",
    )  # fmt: skip
    largest = max(repetition_bounds(grammar), default=0)
    if largest > limits.max_repetition:
        raise InvalidArgument(
            f"{what} repeats an item {largest} times; the limit is {limits.max_repetition} "
            "(max_repetition)"
        )


def constraint_grammar(constraint: Constraint, limits: RequestLimits | None = None) -> str:
    """The GBNF grammar that enforces `constraint`, within `limits` (blocking: a schema's
    conversion runs in Python, so call this off the event loop)."""
    limits = limits or RequestLimits()
    if constraint.kind is ConstraintKind.GRAMMAR:
        check_grammar(constraint.text, limits)
        return constraint.text
    if constraint.kind is ConstraintKind.JSON_OBJECT:
        return JSON_GBNF
    parse_schema(constraint.text, limits)
    try:
        grammar: str = json_schema_to_gbnf(constraint.text)
    except Exception as exc:  # the converter raises bare Exceptions on schemas it cannot express
        raise InvalidArgument(f"constraint.json_schema cannot be enforced: {exc}") from exc
    check_grammar(grammar, limits, "the grammar of constraint.json_schema")
    return grammar


# ---- tool calls -------------------------------------------------------------------------------
@dataclass(frozen=True)
class CallLayout:
    """How a model family writes its calls, for the grammar that makes it call tools:
    `prefix`, then each call as `call_open` + JSON object + `call_close`, separated by
    `separator`, then `suffix`. The object is {"name": ..., `arguments_key`: {...}}."""

    arguments_key: str = "arguments"
    prefix: str = ""
    call_open: str = ""
    call_close: str = ""
    separator: str = ", "
    suffix: str = ""


def tool_calls_grammar(
    schemas: Mapping[str, dict[str, Any]],
    layout: CallLayout,
    *,
    one_call: bool,
    limits: RequestLimits | None = None,
) -> str:
    """A GBNF grammar whose every sentence is one call (`one_call`) or several to the tools
    `schemas` (each tool's arguments JSON Schema, by name), written as `layout` says
    (blocking: the schemas are converted in Python)."""
    limits = limits or RequestLimits()
    converter = SchemaConverter(  # type: ignore[no-untyped-call]
        prop_order={"name": 0, layout.arguments_key: 1},
        allow_fetch=False, dotall=False, raw_pattern=False,
    )  # fmt: skip
    try:
        alternatives = []
        for i, (name, schema) in enumerate(schemas.items()):
            resolved = converter.resolve_refs(schema, f"tools-{i}")  # each schema's own #/ refs
            alternatives.append({
                "type": "object",
                "properties": {"name": {"const": name}, layout.arguments_key: resolved},
                "required": ["name", layout.arguments_key],
            })  # fmt: skip
        call = {"anyOf": alternatives} if len(alternatives) > 1 else alternatives[0]
        converter.visit(call, "call")  # type: ignore[no-untyped-call]
    except Exception as exc:  # the converter raises bare Exceptions on schemas it cannot express
        raise InvalidArgument(f"tools[].parameters cannot be enforced: {exc}") from exc
    item = " ".join(
        part for part in (_literal(layout.call_open), "call", _literal(layout.call_close)) if part
    )
    more = "" if one_call else f" ({_literal(layout.separator)} {item})*"
    body = " ".join(
        part for part in (_literal(layout.prefix), f"{item}{more}", _literal(layout.suffix)) if part
    )
    rules = converter.format_grammar()  # type: ignore[no-untyped-call]
    grammar = f"root ::= {body}\n{rules}"
    check_grammar(grammar, limits, "the grammar of the tools (tool_choice required)")
    return grammar


def _literal(text: str) -> str:
    """`text` as a GBNF string literal ("" when empty)."""
    if not text:
        return ""
    return json.dumps(text)
