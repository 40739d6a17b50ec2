"""Ollama's request bodies to the generation protos (through openai_schema) and the protos
back to Ollama's replies; every refusal a precise 400 naming Ollama's field."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from llamaherd.v1 import generation_pb2 as gen_pb

from common.hardware import HardwareInfo
from common.memory import MemoryEstimate
from common.model_settings import ModelConfig
from common.status import ModelState, ModelStatus, NodeStatus
from orchestrator.cluster.types import ClusterSnapshot, Node, PlacementProblem
from orchestrator.gateway import ollama_schema as ol
from orchestrator.gateway.errors import BadRequest, ModelNotServed

ALIASES = {"gemma", "qwen:7b", "embedder"}
HI = [{"role": "user", "content": "Hi"}]


def chat(**fields: object) -> ol.GenerationCall:
    return ol.parse_chat({"model": "gemma", "messages": HI, **fields}, ALIASES)


def refusal(parse, body: object) -> BadRequest:  # type: ignore[no-untyped-def]
    with pytest.raises(BadRequest) as info:
        parse(body, ALIASES)
    return info.value


def chat_refusal(**fields: object) -> BadRequest:
    return refusal(ol.parse_chat, {"model": "gemma", "messages": HI, **fields})


# ---- requests ---------------------------------------------------------------------------
def test_chat_becomes_the_same_chat_request_the_openai_api_builds():
    call = chat(stream=False)
    assert call.kind == "chat" and call.name == "gemma" and not call.stream
    assert call.call is not None
    request = call.call.request
    assert isinstance(request, gen_pb.ChatRequest)
    assert request.model == "gemma"
    assert [(m.role, m.content) for m in request.messages] == [("user", "Hi")]
    assert not request.sampling.HasField("max_tokens")


def test_streaming_is_the_default():
    assert chat().stream is True
    assert chat(stream=True).stream is True
    assert chat(stream=None).stream is True


def test_options_map_to_the_sampling_fields():
    options = {
        "temperature": 0, "top_k": 20, "top_p": 0.9, "min_p": 0.05, "repeat_penalty": 1.1,
        "repeat_last_n": 32, "presence_penalty": 0.5, "frequency_penalty": 0.25,
        "seed": 42, "stop": ["\n", "user:"], "num_predict": 12,
    }  # fmt: skip
    assert chat(options=options).call is not None
    sampling = chat(options=options).call.request.sampling  # type: ignore[union-attr]
    assert sampling.temperature == 0 and sampling.top_k == 20
    assert sampling.top_p == pytest.approx(0.9) and sampling.min_p == pytest.approx(0.05)
    assert sampling.repeat_penalty == pytest.approx(1.1) and sampling.repeat_last_n == 32
    assert sampling.presence_penalty == 0.5 and sampling.frequency_penalty == 0.25
    assert sampling.seed == 42 and list(sampling.stop) == ["\n", "user:"]
    assert sampling.max_tokens == 12


def test_integral_floats_are_integers_and_nulls_keep_the_default():
    sampling = chat(options={"top_k": 40.0, "num_predict": 8.0, "temperature": None})
    assert sampling.call is not None
    params = sampling.call.request.sampling
    assert params.top_k == 40 and params.max_tokens == 8
    assert not params.HasField("temperature")


def test_num_predict_minus_one_and_seed_minus_one_are_ollamas_defaults():
    call = chat(options={"num_predict": -1, "seed": -1})
    assert call.call is not None
    assert not call.call.request.sampling.HasField("max_tokens")
    assert not call.call.request.sampling.HasField("seed")


@pytest.mark.parametrize("value", [-2, -100, 0])
def test_num_predict_must_be_minus_one_or_positive(value):
    error = chat_refusal(options={"num_predict": value})
    assert error.param == "options.num_predict"
    assert error.message == (
        f"options.num_predict must be -1 (no limit) or a count of at least 1, not {value}"
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"temperature": "hot"}, 'options.temperature must be a number, not the string "hot"'),
        ({"top_p": True}, "options.top_p must be a number, not the boolean true"),
        ({"top_k": 1.5}, "options.top_k must be an integer, not the number 1.5"),
        ({"seed": "42"}, 'options.seed must be an integer, not the string "42"'),
        ({"num_predict": [1]}, "options.num_predict must be an integer, not an array"),
        ({"num_ctx": {"n": 1}}, "options.num_ctx must be an integer, not an object"),
        ({"use_mmap": "yes"}, 'options.use_mmap must be true or false, not the string "yes"'),
        ({"stop": "\n"}, 'options.stop must be a list of strings, not the string "\\n"'),
        ({"stop": ["a", 1]}, "options.stop must be a list of strings, not an array"),
    ],
)
def test_an_option_of_the_wrong_type_is_refused_naming_it(options, message):
    error = chat_refusal(options=options)
    assert error.message == message
    assert error.param == f"options.{next(iter(options))}"


def test_options_that_are_not_an_object_are_refused():
    error = chat_refusal(options=["temperature", 0])
    assert (error.param, error.message) == ("options", "options must be an object, not an array")


def test_unknown_options_are_ignored_and_load_options_are_reported_as_ignored():
    call = chat(options={"num_thread": 8, "num_gpu": 99, "mirostat": 2, "no_such": "x"})
    assert call.call is not None
    assert call.ignored == (
        "options.num_thread (the catalog sets how a model is loaded)",
        "options.num_gpu (the catalog sets how a model is loaded)",
    )


def test_keep_alive_is_accepted_and_ignored_with_its_reason():
    for keep_alive in ("5m", 0, -1, 3600.5):
        call = chat(keep_alive=keep_alive)
        assert call.ignored == (ol.KEEP_ALIVE_IGNORED,)
    assert "placement" in ol.KEEP_ALIVE_IGNORED
    assert chat().ignored == ()


def test_typical_p_is_refused_unless_off():
    assert chat(options={"typical_p": 1.0}).call is not None
    error = chat_refusal(options={"typical_p": 0.7})
    assert error.param == "options.typical_p" and "not supported" in error.message


def test_num_ctx_is_carried_for_the_check_against_the_replica():
    assert chat(options={"num_ctx": 2048}).num_ctx == 2048
    ol.check_num_ctx(1024, "gemma", 1024)
    ol.check_num_ctx(512, "gemma", 1024)
    ol.check_num_ctx(4096, "gemma", None)  # no replica known: the router refuses
    with pytest.raises(BadRequest) as info:
        ol.check_num_ctx(4096, "gemma:latest", 1024)
    assert info.value.param == "options.num_ctx"
    assert info.value.message.startswith(
        "options.num_ctx 4096 is above the context of model 'gemma:latest' (1024 tokens)"
    )
    error = chat_refusal(options={"num_ctx": 0})
    assert error.message == "options.num_ctx must be at least 1, not 0"


def test_format_json_and_a_schema_become_output_constraints():
    json_call = chat(format="json").call
    assert json_call is not None and json_call.request.constraint.json_object
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}}
    schema_call = chat(format=schema).call
    assert schema_call is not None
    assert json.loads(schema_call.request.constraint.json_schema) == schema
    for nothing in ("", None):
        plain = chat(format=nothing).call
        assert plain is not None and plain.request.constraint.WhichOneof("kind") is None


@pytest.mark.parametrize(
    ("fmt", "shown"),
    [("yaml", 'the string "yaml"'), (5, "the number 5"), (["json"], "an array"),
     (True, "the boolean true")],
)  # fmt: skip
def test_a_format_that_is_neither_json_nor_a_schema_is_refused(fmt, shown):
    error = chat_refusal(format=fmt)
    assert error.param == "format"
    assert error.message == f'format must be "json" or a JSON schema object, not {shown}'


def test_a_missing_or_empty_model_is_refused():
    for body in ({"messages": HI}, {"model": "", "messages": HI}):
        error = refusal(ol.parse_chat, body)
        assert (error.param, error.message) == ("model", "model is required")
    error = refusal(ol.parse_generate, {"prompt": "Hi"})
    assert error.message == "model is required"
    error = refusal(ol.parse_embed, {"input": "Hi"})
    assert error.message == "model is required"


@pytest.mark.parametrize("messages", ["Hi", {"role": "user"}, 3])
def test_messages_that_are_not_a_list_are_refused(messages):
    error = chat_refusal(messages=messages)
    assert error.param == "messages"
    assert error.message.startswith("messages: Input should be a valid list")


def test_a_message_of_the_wrong_shape_is_refused_naming_it():
    error = chat_refusal(messages=[{"role": "user", "content": 5}])
    assert error.param == "messages[0].content"
    error = chat_refusal(messages=[{"content": "Hi"}])
    assert (error.param, error.message) == ("messages[0].role", "messages[0].role: Field required")
    error = chat_refusal(messages=[{"role": "user", "content": "Hi", "images": ["aGk="]}])
    assert error.param == "messages[0].images" and "text models" in error.message


def test_a_body_that_is_not_an_object_is_refused():
    assert refusal(ol.parse_chat, [1]).message == "request body must be a JSON object"


def test_roles_are_lower_cased_and_unknown_ones_refused_by_the_openai_rules():
    call = chat(messages=[{"role": "System", "content": "Be brief."}, *HI])
    assert call.call is not None
    assert [m.role for m in call.call.request.messages] == ["system", "user"]
    error = chat_refusal(messages=[{"role": "narrator", "content": "x"}])
    assert error.param == "messages[0].role" and "narrator" in error.message


def test_refusals_from_the_openai_rules_name_ollamas_fields():
    error = chat_refusal(options={"stop": [str(i) for i in range(17)]})
    assert (error.param, error.message) == ("options.stop", "options.stop holds at most 16 strings")
    error = chat_refusal(options={"temperature": 1e39})
    assert error.param == "options.temperature" and "finite" in error.message
    error = chat_refusal(format={"type": "object", "properties": {"a": "\ud800"}})
    assert "surrogate" in error.message


WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Now",
                                            "parameters": WEATHER_SCHEMA}}  # fmt: skip


def test_think_asks_for_the_reasoning_and_false_drops_it():
    assert chat().thinking and chat(think=True).thinking and chat(think="high").thinking
    assert not chat(think=False).thinking
    error = chat_refusal(think="very")
    assert error.param == "think" and "true, false or one of high, medium, low" in error.message


def test_tools_pass_as_openais_and_tool_choice_is_an_extension():
    call = chat(tools=[WEATHER])
    assert call.call is not None
    request = call.call.request
    assert isinstance(request, gen_pb.ChatRequest)
    assert [(t.name, t.description) for t in request.tools] == [("get_weather", "Now")]
    assert json.loads(request.tools[0].parameters_json) == WEATHER_SCHEMA
    assert request.tool_choice.mode == gen_pb.ToolChoice.MODE_AUTO
    forced = chat(tools=[WEATHER], tool_choice="required", parallel_tool_calls=False).call
    assert forced is not None and forced.request.tool_choice.mode == gen_pb.ToolChoice.MODE_REQUIRED
    assert forced.request.parallel_tool_calls is False
    assert chat_refusal(tools=[WEATHER], tool_choice="always").param == "tool_choice"


@pytest.mark.parametrize(
    ("tools", "param"),
    [
        ([{"type": "function", "function": {"parameters": {}}}], "tools[0].function.name"),
        ([{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}],
         "tools[0].function.parameters"),
    ],
)  # fmt: skip
def test_bad_tools_are_refused_naming_the_field(tools, param):
    assert chat_refusal(tools=tools).param == param


def test_history_calls_get_ids_and_tool_messages_answer_them_by_name():
    history = [
        *HI,
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            {"function": {"name": "get_time", "arguments": {}}}]},
        {"role": "tool", "content": "09:00", "tool_name": "get_time"},
        {"role": "tool", "content": "18 C"},
    ]  # fmt: skip
    call = chat(messages=history, tools=[WEATHER])
    assert call.call is not None
    messages = call.call.request.messages
    assert [(c.id, c.name, json.loads(c.arguments)) for c in messages[1].tool_calls] == [
        ("call_1_0", "get_weather", {"city": "Paris"}), ("call_1_1", "get_time", {})
    ]  # fmt: skip
    assert [(m.role, m.tool_call_id, m.name, m.content) for m in messages[2:]] == [
        ("tool", "call_1_1", "get_time", "09:00"), ("tool", "call_1_0", "get_weather", "18 C")
    ]  # fmt: skip
    error = chat_refusal(messages=[*HI, {"role": "assistant", "tool_calls": [
        {"function": {"name": "f", "arguments": [1]}}]}])  # fmt: skip
    assert error.param == "messages[1].tool_calls[0].function.arguments"


def test_logprobs_map_to_the_chat_and_the_completion_forms():
    call = chat(logprobs=True, top_logprobs=3)
    assert call.logprobs and call.call is not None
    assert call.call.request.sampling.top_logprobs == 3
    raw = ol.parse_generate(
        {"model": "gemma", "prompt": "Hi", "raw": True, "logprobs": True, "top_logprobs": 2},
        ALIASES,
    )
    assert raw.logprobs and raw.call is not None and raw.call.request.sampling.top_logprobs == 2
    assert not chat().call.request.sampling.HasField("top_logprobs")  # type: ignore[union-attr]
    assert chat_refusal(logprobs=True, top_logprobs=50).param == "top_logprobs"


def test_an_empty_chat_is_a_load_request():
    for messages in ([], None):
        call = ol.parse_chat({"model": "gemma:latest", "messages": messages}, ALIASES)
        assert call.call is None and call.alias == "gemma" and call.name == "gemma:latest"


def test_generate_renders_the_prompt_as_a_chat_turn_and_raw_sends_it_as_written():
    call = ol.parse_generate({"model": "gemma", "prompt": "Hi", "system": "Be brief."}, ALIASES)
    assert call.kind == "generate" and call.call is not None
    request = call.call.request
    assert isinstance(request, gen_pb.ChatRequest)
    assert [(m.role, m.content) for m in request.messages] == [
        ("system", "Be brief."), ("user", "Hi")
    ]  # fmt: skip
    raw = ol.parse_generate(
        {"model": "gemma", "prompt": "<start_of_turn>", "raw": True, "options": {"seed": 3}},
        ALIASES,
    )
    assert raw.call is not None
    assert isinstance(raw.call.request, gen_pb.GenerateRequest)
    assert raw.call.request.prompt == "<start_of_turn>" and raw.call.request.sampling.seed == 3
    assert ol.parse_generate({"model": "gemma"}, ALIASES).call is None  # a load request


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"suffix": "end"}, "suffix"),
        ({"template": "{{ .Prompt }}"}, "template"),
        ({"context": [1, 2, 3]}, "context"),
        ({"images": ["aGk="]}, "images"),
        ({"raw": True, "system": "x"}, "system"),
        ({"raw": "yes"}, "raw"),
        ({"prompt": 5}, "prompt"),
    ],
)
def test_generate_refuses_what_it_cannot_do(fields, param):
    error = refusal(ol.parse_generate, {"model": "gemma", "prompt": "Hi", **fields})
    assert error.param == param


def test_model_names_take_ollamas_default_tag():
    assert ol.resolve("gemma", ALIASES) == "gemma"
    assert ol.resolve("gemma:latest", ALIASES) == "gemma"
    assert ol.resolve("qwen:7b", ALIASES) == "qwen:7b"
    assert ol.resolve("qwen", ALIASES) == "qwen"  # no such alias: the router says so
    assert ol.resolve("gemma:2b", ALIASES) == "gemma:2b"
    assert ol.tagged("gemma") == "gemma:latest" and ol.tagged("qwen:7b") == "qwen:7b"


def test_embed_takes_a_text_or_a_list():
    one = ol.parse_embed({"model": "embedder:latest", "input": "a cat"}, ALIASES)
    assert one.call is not None and list(one.call.request.inputs) == ["a cat"]
    assert one.call.request.model == "embedder" and one.name == "embedder:latest"
    many = ol.parse_embed({"model": "embedder", "input": ["a", "b"], "dimensions": 2}, ALIASES)
    assert many.call is not None and list(many.call.request.inputs) == ["a", "b"]
    assert many.dimensions == 2
    assert ol.parse_embed({"model": "embedder", "input": []}, ALIASES).call is None
    assert ol.parse_embed({"model": "embedder"}, ALIASES).call is None
    error = refusal(ol.parse_embed, {"model": "embedder", "input": ["a", 3]})
    assert error.param == "input[1]"
    error = refusal(ol.parse_embed, {"model": "embedder", "input": 3})
    assert error.param == "input"
    error = refusal(ol.parse_embed, {"model": "embedder", "input": "a", "dimensions": -1})
    assert error.message == "dimensions must be 0 or more, not -1"


def test_the_older_embeddings_form_asks_for_a_vector_not_normalised():
    call = ol.parse_embeddings({"model": "embedder", "prompt": "a cat"}, ALIASES)
    assert call.call is not None and call.legacy
    assert call.call.request.HasField("normalize") and not call.call.request.normalize
    assert ol.parse_embeddings({"model": "embedder"}, ALIASES).call is None


def test_show_takes_model_or_its_older_name():
    assert ol.parse_model_name({"model": "gemma"}) == "gemma"
    assert ol.parse_model_name({"name": "gemma"}) == "gemma"
    with pytest.raises(BadRequest, match="model is required"):
        ol.parse_model_name({})


# ---- replies ----------------------------------------------------------------------------
def test_timestamps_are_rfc3339_in_utc():
    stamp = ol.timestamp(1_700_000_000.25)
    assert stamp == "2023-11-14T22:13:20.250000Z"
    assert datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() == 1_700_000_000.25


def test_the_final_object_carries_counts_and_nanosecond_durations():
    usage = gen_pb.Usage(prompt_tokens=26, completion_tokens=8)
    timings = gen_pb.Timings(prompt_ms=12.5, decode_ms=200.0)
    reply = ol.final(
        "chat", "gemma:latest", "T", "!", gen_pb.FINISH_REASON_LENGTH, usage, timings, 300_000_000
    )
    assert reply == {
        "model": "gemma:latest", "created_at": "T",
        "message": {"role": "assistant", "content": "!"}, "done": True,
        "done_reason": "length", "total_duration": 300_000_000, "load_duration": 0,
        "prompt_eval_count": 26, "prompt_eval_duration": 12_500_000, "eval_count": 8,
        "eval_duration": 200_000_000,
    }  # fmt: skip
    generated = ol.final("generate", "g", "T", "", gen_pb.FINISH_REASON_STOP, usage, timings, 1)
    assert generated["response"] == "" and generated["done_reason"] == "stop"
    assert "message" not in generated and "context" not in generated


def test_chunks_and_load_replies():
    assert ol.chunk("generate", "g", "T", "The") == {
        "model": "g", "created_at": "T", "response": "The", "done": False
    }  # fmt: skip
    assert ol.chunk("chat", "g", "T", "x")["message"] == {"role": "assistant", "content": "x"}
    assert ol.loaded("chat", "g", "T")["done_reason"] == "load"
    assert ol.ndjson({"a": 1}) == b'{"a":1}\n'


def test_embed_replies_cut_and_renormalise_when_asked():
    response = gen_pb.EmbedResponse(
        embeddings=[gen_pb.Embedding(values=[0.6, 0.8, 0.0])], prompt_tokens=3
    )
    whole = ol.embed_reply("e", response, None, 5)
    assert whole["embeddings"][0] == pytest.approx([0.6, 0.8, 0.0])
    assert whole["prompt_eval_count"] == 3 and whole["total_duration"] == 5
    cut = ol.embed_reply("e", response, 1, 5)["embeddings"][0]
    assert cut == pytest.approx([1.0])
    assert ol.embed_reply("e", None, None, 5) == {"model": "e", "embeddings": []}
    assert ol.embeddings_reply(response)["embedding"] == pytest.approx([0.6, 0.8, 0.0])
    assert ol.embeddings_reply(None) == {"embedding": []}


def test_errors_are_ollamas_shape():
    assert ol.error_body(ModelNotServed("qwen", ["gemma"])) == {"error": "model 'qwen' not found"}
    assert ol.error_body(BadRequest("format must be ...")) == {"error": "format must be ..."}


def test_management_calls_name_llamaherds_own_commands():
    assert set(ol.MANAGEMENT) == {"/api/pull", "/api/create", "/api/delete", "/api/copy",
                                  "/api/push"}  # fmt: skip
    assert "llamaherd models add" in ol.refused_management("/api/pull")
    assert "llamaherd models rm" in ol.refused_management("/api/delete")
    assert ol.refused_management("/api/create").startswith(
        "/api/create is not supported by a llamaherd cluster: "
    )


# ---- listings -----------------------------------------------------------------------------
def replica(alias: str, state: ModelState = ModelState.READY, **config: object) -> ModelStatus:
    return ModelStatus(
        alias, ModelConfig(alias=alias, path=f"/models/{alias}.gguf", **config), state,  # type: ignore[arg-type]
        architecture="gemma3", file_bytes=253_000_000, n_ctx_train=32768,
        estimate=MemoryEstimate(253_000_000, 20_000_000, 5_000_000),
    )  # fmt: skip


def snapshot() -> ClusterSnapshot:
    cpu = HardwareInfo("x86-cpu")
    a = NodeStatus(
        "a", "a:1", cpu, (replica("gemma", n_ctx=2048), replica("embedder", embedding=True))
    )
    b = NodeStatus(
        "b", "b:1", cpu, (replica("gemma", n_ctx=1024), replica("late", ModelState.LOADING))
    )
    gone = NodeStatus("c", "c:1", cpu, (replica("ghost"),))
    return ClusterSnapshot(
        1, 0.0, (Node(a), Node(b), Node(gone, up=False)),
        problems=(PlacementProblem("nowhere", "needs label gpu"),),
    )  # fmt: skip


def test_served_models_and_known_aliases():
    snap = snapshot()
    assert [m.alias for m in ol.served(snap)] == ["embedder", "gemma"]
    assert ol.known_aliases(snap) == {"gemma", "embedder", "late", "ghost", "nowhere"}
    assert ol.replica_context(snap, "gemma") == 1024  # the smallest: any replica may serve
    assert ol.replica_context(snap, "late") is None
    found = ol.find_served(snap, "gemma:latest")
    assert found is not None and found.alias == "gemma"
    assert ol.find_served(snap, "late") is None


def test_tags_ps_and_show_shapes():
    snap = snapshot()
    listing = ol.tags(ol.served(snap), "T")["models"]
    assert [m["name"] for m in listing] == ["embedder:latest", "gemma:latest"]
    gemma = listing[1]
    assert gemma["model"] == "gemma:latest" and gemma["modified_at"] == "T"
    assert gemma["size"] == 253_000_000 and len(gemma["digest"]) == 64
    assert gemma["details"]["family"] == "gemma3" and gemma["details"]["format"] == "gguf"
    running = ol.ps(ol.served(snap))["models"][1]
    assert running["size"] == 278_000_000 and running["size_vram"] == 0
    assert running["context_length"] == 2048
    assert running["llamaherd"] == {"replicas": 2, "nodes": ["a", "b"]}
    assert datetime.fromisoformat(running["expires_at"].replace("Z", "+00:00")).year == 9999
    shown = ol.show(ol.served(snap)[1], "T")
    assert shown["capabilities"] == ["completion", "tools"]
    assert shown["model_info"] == {"general.architecture": "gemma3",
                                   "gemma3.context_length": 32768}  # fmt: skip
    assert ol.show(ol.served(snap)[0], "T")["capabilities"] == ["embedding"]


def test_digest_is_stable_and_follows_the_file():
    assert ol.digest(replica("gemma")) == ol.digest(replica("gemma", n_ctx=8))
    assert ol.digest(replica("gemma")) != ol.digest(replica("other"))
    assert int(ol.digest(replica("gemma")), 16) >= 0  # hex, as Ollama's digests


def lp(piece: bytes, logprob: float) -> gen_pb.TokenLogprob:
    return gen_pb.TokenLogprob(token_id=1, piece=piece, logprob=logprob)


CALL_CHUNKS = [
    gen_pb.GenerationChunk(reasoning="Paris, so weather.", text="",
                           logprobs=[gen_pb.TokenLogprobs(chosen=lp(b"P", -0.5),
                                                          top=[lp(b"P", -0.5), lp(b"Q", -1.5)])]),
    gen_pb.GenerationChunk(tool_calls=[gen_pb.ToolCallDelta(
        index=0, id="call_" + "c" * 24, name="get_weather", arguments='{"city": ')]),
    gen_pb.GenerationChunk(tool_calls=[gen_pb.ToolCallDelta(index=0, arguments='"Paris"}')],
                           finish_reason=gen_pb.FINISH_REASON_TOOL_CALLS),
]  # fmt: skip


def test_a_reply_carries_thinking_tool_calls_and_logprobs_as_the_client_reads_them():
    from ollama import ChatResponse, GenerateResponse

    asked = chat(logprobs=True, top_logprobs=2)
    usage, timings = gen_pb.Usage(prompt_tokens=3, completion_tokens=4), gen_pb.Timings()
    reply = ol.final(
        "chat", "gemma", "T", "", gen_pb.FINISH_REASON_TOOL_CALLS, usage, timings, 1,
        ol.Extras.of(CALL_CHUNKS, asked),
    )  # fmt: skip
    parsed = ChatResponse.model_validate(reply)
    assert parsed.done_reason == "stop"  # Ollama's, for a turn that called tools
    assert parsed.message.thinking == "Paris, so weather."
    [call] = parsed.message.tool_calls or []
    assert (call.function.name, dict(call.function.arguments)) == ("get_weather", {"city": "Paris"})
    assert reply["message"]["tool_calls"][0]["id"] == "call_" + "c" * 24
    [entry] = parsed.logprobs or []
    assert (entry.token, entry.logprob) == ("P", -0.5)
    assert [(t.token, t.logprob) for t in entry.top_logprobs or []] == [("P", -0.5), ("Q", -1.5)]
    unasked = ol.final("chat", "gemma", "T", "", gen_pb.FINISH_REASON_STOP, usage, timings, 1,
                       ol.Extras.of(CALL_CHUNKS, chat(think=False)))  # fmt: skip
    assert "thinking" not in unasked["message"] and "logprobs" not in unasked
    generated = ol.chunk("generate", "g", "T", "Hi", ol.Extras.of(CALL_CHUNKS[:1], asked, False))
    parsed_piece = GenerateResponse.model_validate(generated)
    assert parsed_piece.thinking == "Paris, so weather." and parsed_piece.logprobs
