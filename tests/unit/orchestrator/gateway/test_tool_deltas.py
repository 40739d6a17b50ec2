"""Tool calls put together from the worker's deltas (first delta: id and name; later ones:
more arguments), as the Anthropic and Ollama front doors read them."""

from __future__ import annotations

import pytest
from llamaherd.v1 import generation_pb2 as gen_pb

from common.errors import Internal
from orchestrator.gateway.tool_deltas import (
    AssembledCall,
    ToolCallAssembler,
    arguments_object,
    assembled,
    suffix_of,
)


def delta(
    index: int, call_id: str = "", name: str = "", arguments: str = ""
) -> gen_pb.ToolCallDelta:
    return gen_pb.ToolCallDelta(index=index, id=call_id, name=name, arguments=arguments)


def test_calls_are_assembled_by_index_in_the_models_order():
    chunks = [
        gen_pb.GenerationChunk(tool_calls=[delta(1, "call_b", "g", "{")]),
        gen_pb.GenerationChunk(
            tool_calls=[delta(0, "call_a", "f", '{"x": 1}'), delta(1, arguments="}")]
        ),
        gen_pb.GenerationChunk(text="no calls here"),
    ]
    assert assembled(chunks) == [
        AssembledCall("call_a", "f", '{"x": 1}'), AssembledCall("call_b", "g", "{}")
    ]  # fmt: skip


def test_add_says_which_calls_a_chunk_started():
    assembler = ToolCallAssembler()
    assert assembler.add([delta(0, "call_a", "f", "{"), delta(1, "call_b", "g")]) == [0, 1]
    assert assembler.add([delta(0, arguments="}")]) == []
    assert assembler.call(0).arguments_object() == {}


def test_arguments_must_be_a_json_object_or_nothing():
    assert arguments_object("f", "  ") == {}
    assert arguments_object("f", '{"a": [1]}') == {"a": [1]}
    with pytest.raises(Internal, match="arguments of 'f' that are not JSON"):
        arguments_object("f", '{"a": ')
    with pytest.raises(Internal, match="not a JSON object"):
        arguments_object("f", "[1]")


def test_the_unique_part_of_a_call_id():
    assert suffix_of("call_0123abcd") == "0123abcd"
    assert suffix_of("toolu_1") == "toolu_1"
