"""Explains why a GBNF grammar was rejected.

llama.cpp is the judge of what a grammar means; but its parser prints the reason to stderr
and only returns "failed". After it refuses a grammar, this lint looks for the usual
mistakes so the client's error can say which rule is wrong. It never accepts or rejects a
grammar itself.
"""

from __future__ import annotations

import json
import re

from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from common.errors import InvalidArgument
from worker.engine.generation import Constraint, ConstraintKind

_WORD = re.compile(r"[A-Za-z0-9_-]+")


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


def constraint_grammar(constraint: Constraint) -> str:
    """The GBNF grammar that enforces `constraint`."""
    if constraint.kind is ConstraintKind.GRAMMAR:
        return constraint.text
    if constraint.kind is ConstraintKind.JSON_OBJECT:
        return JSON_GBNF
    try:
        json.loads(constraint.text)
    except ValueError as exc:
        raise InvalidArgument(f"constraint.json_schema is not valid JSON: {exc}") from exc
    try:
        grammar: str = json_schema_to_gbnf(constraint.text)
    except Exception as exc:  # the converter raises bare Exceptions on schemas it cannot express
        raise InvalidArgument(f"constraint.json_schema cannot be enforced: {exc}") from exc
    return grammar
