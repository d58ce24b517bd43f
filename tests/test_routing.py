"""The pure parts of routing: the routing table, the breaker's states, merged lists, and config errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_proxy import config as config_mod
from llm_proxy.backends import routing
from llm_proxy.backends.breaker import Breaker
from llm_proxy.errors import ConfigError
from llm_proxy.translate.catalog import listed_names, merge_lists
from llm_proxy.translate.errors import context_exceeded

from .llama_double import fixture

TABLE = [
    routing.Entry("gpu", ("qwen*", "llama3.2")),
    routing.Entry("laptop"),
    routing.Entry("spare"),
]


def test_patterns_name_client_models_and_lists_name_either() -> None:
    discovered = {"laptop": frozenset({"llama3.2:latest", "phi3:latest"}), "spare": frozenset()}

    def serving(client: str, backend: str | None = None) -> list[str]:
        return routing.serving(TABLE, client, routing.model_names(client, backend), discovered)

    assert serving("qwen2.5:7b") == ["gpu"]
    # llama3.2 is served by the GPU (pattern) and the laptop (its list): table order.
    assert serving("llama3.2") == ["gpu", "laptop"]
    assert serving("llama3.2:latest") == ["gpu", "laptop"]
    # A client-side name mapped to a backend name the laptop lists.
    assert serving("assistant", "phi3") == ["laptop"]
    # Patterns name client-side models: "house" mapped to llama3.2 is not the GPU's.
    assert serving("house", "llama3.2") == ["laptop"]
    assert serving("nobody-has-it") == []
    # Nobody known to serve it: the backends without patterns may still have it.
    assert routing.unpatterned(TABLE) == ["laptop", "spare"]


def test_order_puts_open_breakers_last_and_least_busy_first_when_asked() -> None:
    load = {"a": 3, "b": 0, "c": 1, "d": 0}
    opened = {"b"}
    assert routing.order(["a", "b", "c", "d"], opened.__contains__, None) == ["a", "c", "d", "b"]
    assert routing.order(["a", "b", "c", "d"], opened.__contains__, load.__getitem__) == ["d", "c", "a", "b"]
    assert routing.order(["a", "c"], lambda _: False, lambda _: 0) == ["a", "c"]  # ties keep table order


def test_breaker_opens_after_failures_in_a_row_and_a_success_closes_it() -> None:
    breaker = Breaker(threshold=2)
    assert breaker.state == "closed" and not breaker.is_open
    assert breaker.failure("unreachable") is False
    assert breaker.success() is False  # the count starts again
    assert breaker.failure("unreachable") is False
    assert breaker.failure("503 Loading model") is True  # two in a row: open
    assert breaker.state == "open" and breaker.last_error == "503 Loading model"
    assert breaker.failure("again") is False  # already open: opened once
    assert breaker.success() is True and breaker.state == "closed" and breaker.failures == 0


def test_merged_lists_show_a_model_served_twice_once_in_backend_order() -> None:
    gpu = {"models": [{"name": "smollm2:latest", "model": "smollm2:latest", "size": 1}]}
    laptop = {"models": [{"name": "smollm2", "model": "smollm2", "size": 2}, {"name": "llama3.2:latest"}]}
    merged = merge_lists("/api/tags", [gpu, laptop])
    assert merged == {"models": [gpu["models"][0], {"name": "llama3.2:latest"}]}
    v1 = merge_lists(
        "/v1/models", [{"data": [{"id": "a"}, "junk"]}, {"data": [{"id": "a:latest"}, {"id": "b"}]}]
    )
    assert v1 == {"object": "list", "data": [{"id": "a"}, {"id": "b"}]}
    assert listed_names("/api/tags", laptop) == {"smollm2:latest", "llama3.2:latest"}
    assert listed_names("/api/tags", {"models": "not a list"}) == frozenset()


def test_context_errors_are_told_from_other_refusals() -> None:
    llama = fixture("error-context-exceeded")  # what llama-server answered
    assert context_exceeded(400, llama)
    assert context_exceeded(400, "request (631 tokens) exceeds the available context size (256 tokens)")
    assert context_exceeded(400, '{"error":"the input length exceeds the context length"}')
    assert not context_exceeded(400, '{"error":"invalid messages"}')
    assert not context_exceeded(500, llama)  # only a refusal of the request, not a crash


def test_backends_as_a_list_or_a_mapping_start_from_backend() -> None:
    listed = config_mod.from_dict(
        {
            "backend": {"timeout": 30, "max_concurrency": 2},
            "backends": [
                {"name": "gpu", "type": "openai", "endpoint": "http://gpu:8080", "serves": ["qwen*"]},
                {"name": "laptop", "type": "ollama", "endpoint": "http://laptop:11434", "timeout": 5},
            ],
        }
    )
    mapped = config_mod.from_dict(
        {
            "backend": {"timeout": 30, "max_concurrency": 2},
            "backends": {
                "gpu": {"type": "openai", "endpoint": "http://gpu:8080", "serves": ["qwen*"]},
                "laptop": {"type": "ollama", "endpoint": "http://laptop:11434", "timeout": 5},
            },
        }
    )
    assert listed.backends == mapped.backends
    gpu, laptop = listed.named_backends()
    assert (gpu.name, gpu.type, gpu.serves, gpu.timeout, gpu.max_concurrency) == (
        "gpu",
        "openai",
        ("qwen*",),
        30,
        2,
    )
    assert (laptop.name, laptop.type, laptop.serves, laptop.timeout) == ("laptop", "ollama", (), 5)


def test_backend_alone_is_one_backend_named_default() -> None:
    config = config_mod.from_dict({"backend": {"type": "ollama", "endpoint": "http://h:1", "max_queue": 3}})
    (only,) = config.named_backends()
    assert (only.name, only.type, only.endpoint, only.max_queue, only.serves) == (
        "default",
        "ollama",
        "http://h:1",
        3,
        (),
    )
    assert config_mod.from_dict({"backends": []}).named_backends()[0].name == "default"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"backends": "gpu"},
            "'backends' must be a list or a mapping of named backends, got the string 'gpu'",
        ),
        ({"backends": [{"type": "ollama"}]}, "'backends[0].name' is required"),
        ({"backends": ["gpu"]}, "'backends[0]' must be a mapping, got the string 'gpu'"),
        (
            {"backends": [{"name": "a"}, {"name": "a"}]},
            "'backends[1].name' repeats the name of backends[0]: 'a'",
        ),
        ({"backends": {"my gpu": {}}}, "'backends.my gpu.name' must be letters, digits"),
        (
            {"backends": {"gpu": {"endpoint": "gpu:8080"}}},
            "'backends.gpu.endpoint' must be an http:// or https:// URL",
        ),
        (
            {"backends": {"gpu": {"type": "vllm"}}},
            "'backends.gpu.type' must be one of 'ollama', 'openai', 'llamacpp'",
        ),
        ({"backends": {"gpu": {"gpus": 2}}}, "unknown key 'backends.gpu.gpus'"),
        ({"backends": {"gpu": {"serves": "qwen*"}}}, "'backends.gpu.serves' must be a list of strings"),
        ({"backends": {"gpu": {"timeout": 0}}}, "'backends.gpu.timeout' must be a positive number"),
        (
            {"backends": {"gpu": {"max_concurrency": -1}}},
            "'backends.gpu.max_concurrency' must be 0 (no limit) or more",
        ),
        (
            {"backends": {"gpu": {"type": "llamacpp"}}},
            "'backends.gpu.models' must name at least one GGUF file",
        ),
        ({"backends": {"gpu": {"name": "other"}}}, "'backends.gpu.name' differs from its key"),
        (
            {"routing": {"strategy": "random"}},
            "'routing.strategy' must be one of 'order', 'least_busy', got 'random'",
        ),
        ({"routing": {"breaker_failures": 0}}, "'routing.breaker_failures' must be at least 1, got 0"),
        ({"routing": {"probe_interval": 0}}, "'routing.probe_interval' must be a positive number of seconds"),
        (
            {"models": {"fallback": {"small": ["big"]}}},
            "'models.fallback.small' must map a model name to a model name",
        ),
    ],
)
def test_bad_backends_get_one_line_naming_the_key(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_mod.from_dict(raw)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_backend_api_key_is_never_echoed() -> None:
    with pytest.raises(ConfigError) as caught:
        config_mod.from_dict({"backends": {"gpu": {"api_key": ["sk-secret-123"]}}})
    assert "'backends.gpu.api_key' must be a string" in str(caught.value)
    assert "sk-secret" not in str(caught.value)


def test_a_reload_that_changes_backends_says_a_restart_is_needed() -> None:
    from llm_proxy.server.reload import merge

    running = config_mod.from_dict({"backends": {"gpu": {"endpoint": "http://gpu:8080"}}})
    loaded = config_mod.from_dict(
        {
            "backends": {"gpu": {"endpoint": "http://gpu:9090"}},
            "routing": {"strategy": "least_busy"},
            "models": {"fallback": {"small": "big"}},
        }
    )
    merged, ignored = merge(running, loaded)
    assert ignored == ["backends", "routing"]
    assert merged.backends == running.backends and merged.models.fallback == {"small": "big"}


def test_backends_load_from_yaml_and_json_files_in_their_written_order(tmp_path: Path) -> None:
    yaml_file = tmp_path / "config.yaml"
    yaml_file.write_text(
        "backends:\n"
        "  zeta: {type: ollama, endpoint: 'http://z:11434'}\n"
        "  alpha: {type: openai, endpoint: 'http://a:8080', serves: [qwen*]}\n"
    )
    assert [b.name for b in config_mod.load(str(yaml_file)).named_backends()] == ["zeta", "alpha"]
    json_file = tmp_path / "config.json"
    json_file.write_text(
        json.dumps(
            {
                "backend": {"type": "openai", "endpoint": "http://localhost:8080", "timeout": 300},
                "backends": [
                    {"name": "gpu", "endpoint": "http://gpu:8080"},
                    {"name": "cpu", "type": "ollama"},
                ],
            }
        )
    )
    gpu, cpu = config_mod.load(str(json_file)).named_backends()
    assert (gpu.type, gpu.endpoint, cpu.type, cpu.endpoint) == (
        "openai", "http://gpu:8080", "ollama", "http://localhost:8080",
    )  # fmt: skip
    json_file.write_text(json.dumps({"backends": {"gpu": {"timeout": "soon"}}}))
    with pytest.raises(ConfigError, match=r"config\.json: 'backends\.gpu\.timeout' must be a number"):
        config_mod.load(str(json_file))
