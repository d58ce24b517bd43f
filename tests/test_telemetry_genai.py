"""The GenAI conventions' names and attributes of each API's requests and answers (pure, no SDK)."""

from __future__ import annotations

import orjson

from llm_proxy.audit.exchange import Exchange
from llm_proxy.telemetry import genai

ARGS = '{"a": 1}'  # OpenAI's arguments: JSON text


def exchange(endpoint: str, **values: object) -> Exchange:
    ex = Exchange(endpoint=endpoint, method="POST", backend_type="openai")
    for key, value in values.items():
        setattr(ex, key, value)
    return ex


def test_span_names_follow_operation_and_model() -> None:
    assert genai.span_name(exchange("/api/chat", model="smollm2")) == "chat smollm2"
    assert genai.span_name(exchange("/v1/completions", model="q")) == "text_completion q"
    assert genai.span_name(exchange("/api/embed", model="e")) == "embeddings e"
    assert genai.span_name(exchange("/v1/messages", model="m")) == "chat m"
    assert genai.span_name(exchange("/api/chat")) == "chat"  # refused before a model was read
    tags = Exchange(endpoint="/api/tags", method="GET", backend_type="ollama")
    assert genai.span_name(tags) == "GET /api/tags"


def test_request_settings_of_both_apis_and_only_numbers() -> None:
    ollama = {"options": {"temperature": 0.7, "num_predict": 64, "top_k": 40, "seed": 7, "stop": "\n"}}
    assert genai.request_attributes("ollama", ollama) == {
        "gen_ai.request.temperature": 0.7, "gen_ai.request.max_tokens": 64, "gen_ai.request.top_k": 40.0,
        "gen_ai.request.seed": 7, "gen_ai.request.stop_sequences": ["\n"],
    }  # fmt: skip
    openai = {
        "temperature": 1,
        "max_completion_tokens": 10,
        "n": 2,
        "response_format": {"type": "json_object"},
    }
    assert genai.request_attributes("openai", openai) == {
        "gen_ai.request.temperature": 1.0, "gen_ai.request.max_tokens": 10,
        "gen_ai.request.choice.count": 2, "gen_ai.output.type": "json",
    }  # fmt: skip
    assert genai.request_attributes("openai", {"max_output_tokens": 5}) == {"gen_ai.request.max_tokens": 5}
    # What a client sends is not trusted to be the right type: wrong ones are left out.
    junk = {"options": {"temperature": "hot", "num_predict": 1.5, "seed": True, "stop": [1]}}
    assert genai.request_attributes("ollama", junk) == {}
    assert genai.request_attributes("ollama", None) == {}


def test_input_messages_in_the_conventions_shape() -> None:
    chat = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Turn on the light", "images": ["aGk="]},
            {
                "role": "assistant",
                "tool_calls": [{"function": {"name": "HassTurnOn", "arguments": {"name": "x"}}}],
            },
            {"role": "tool", "content": "done", "tool_call_id": "c1"},
        ]
    }
    [system, user, assistant, tool] = orjson.loads(
        genai.input_messages("ollama", "/api/chat", chat)["gen_ai.input.messages"]
    )
    assert system == {"role": "system", "parts": [{"type": "text", "content": "Be brief."}]}
    assert user["parts"] == [{"type": "text", "content": "Turn on the light"}, {"type": "image"}]
    assert assistant["parts"] == [{"type": "tool_call", "name": "HassTurnOn", "arguments": {"name": "x"}}]
    assert tool["parts"] == [{"type": "tool_call_response", "result": "done", "id": "c1"}]
    generate = genai.input_messages("ollama", "/api/generate", {"prompt": "Hi", "system": "Be kind."})
    assert orjson.loads(generate["gen_ai.input.messages"]) == [
        {"role": "user", "parts": [{"type": "text", "content": "Hi"}]}
    ]
    assert orjson.loads(generate["gen_ai.system_instructions"]) == [{"type": "text", "content": "Be kind."}]
    responses = genai.input_messages("openai", "/v1/responses", {"input": "Hello", "instructions": "Short."})
    assert orjson.loads(responses["gen_ai.input.messages"])[0]["parts"][0]["content"] == "Hello"
    assert genai.input_messages("ollama", "/api/embed", {"input": "text to embed"}) == {}


def test_output_messages_and_response_attributes() -> None:
    ex = exchange(
        "/v1/chat/completions", response="", thinking="Lamp first.", done_reason="tool_calls",
        tool_calls=[{"id": "c1", "type": "function", "function": {"name": "HassTurnOn", "arguments": ARGS}}],
        prompt_tokens=12, completion_tokens=3, status_code=200, backend_model="smollm2",
        response_body={"id": "chatcmpl-1", "model": "smollm2-135m"},
    )  # fmt: skip
    [message] = orjson.loads(genai.output_messages(ex)["gen_ai.output.messages"])
    assert message == {
        "role": "assistant", "finish_reason": "tool_calls",
        "parts": [
            {"type": "reasoning", "content": "Lamp first."},
            {"type": "tool_call", "id": "c1", "name": "HassTurnOn", "arguments": {"a": 1}},
        ],
    }  # fmt: skip
    assert genai.response_attributes(ex) == {
        "gen_ai.usage.input_tokens": 12, "gen_ai.usage.output_tokens": 3,
        "gen_ai.response.finish_reasons": ["tool_calls"], "gen_ai.response.model": "smollm2-135m",
        "gen_ai.response.id": "chatcmpl-1",
    }  # fmt: skip
    assert genai.output_messages(exchange("/api/chat")) == {}
    assert genai.provider("llamacpp") == "llama.cpp" and genai.provider("ollama") == "ollama"
