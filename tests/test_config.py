"""Configuration files as users write them, and the errors they get when they slip."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llm_proxy import config as config_mod
from llm_proxy.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent

# The Go LLM Proxy's documented config.json, verbatim.
GO_CONFIG = {
    "server": {"host": "0.0.0.0", "port": 11434, "enable_cors": True, "log_messages": False,
               "log_raw_requests": False, "log_raw_responses": False},
    "backend": {"type": "openai", "endpoint": "http://localhost:8080", "timeout": 300},
    "database": {"path": "./llm_proxy.db"},
    "models": {"default": "llama2", "mappings": {"llama2": "llama-2-7b-chat", "codellama": "codellama-7b"}},
}  # fmt: skip


def test_defaults() -> None:
    config = config_mod.load(None)
    assert (config.server.host, config.server.port) == ("127.0.0.1", 11434)
    assert (config.backend.timeout, config.database.path) == (300.0, "./llm_proxy.db")


def test_go_config_json_loads_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(GO_CONFIG))
    config = config_mod.load(str(path))
    assert config.server.enable_cors and config.server.host == "0.0.0.0"
    assert config.models.default == "llama2"
    assert config.models.backend_name("llama2") == "llama-2-7b-chat"
    assert config.models.backend_name("llama2:latest") == "llama-2-7b-chat"
    assert config.models.client_name("codellama-7b:latest") == "codellama:latest"


def test_example_documents_every_key_with_its_default() -> None:
    example = yaml.safe_load((ROOT / "config.example.yaml").read_text())
    config = config_mod.load(str(ROOT / "config.example.yaml"))
    assert config == dataclasses.replace(config_mod.Config(), source=str(ROOT / "config.example.yaml"))
    for section in ("server", "backend", "database", "models", "auth", "routing"):
        fields = {f.name for f in dataclasses.fields(getattr(config, section))}
        assert set(example[section]) == fields, section
    assert example["backends"] == [] and config.backends == ()


def test_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert config_mod.find_config_file(None, {}) is None
    (tmp_path / "config.yaml").write_text("server: {port: 1}\n")
    assert config_mod.find_config_file(None, {}) == "config.yaml"
    assert config_mod.find_config_file(None, {"LLM_PROXY_CONFIG": "/e.yaml"}) == "/e.yaml"
    assert config_mod.find_config_file("/c.yaml", {"LLM_PROXY_CONFIG": "/e.yaml"}) == "/c.yaml"


def test_flags_override_the_file() -> None:
    config = config_mod.replace(config_mod.from_dict({"server": {"port": 1}}), host="0.0.0.0", port=8000)
    assert (config.server.host, config.server.port) == ("0.0.0.0", 8000)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("server: {hots: x}\n", "unknown key 'server.hots'"),
        ("sever: {}\n", "unknown key 'sever'"),
        ("server: {port: eleven}\n", "'server.port' must be an integer, got the string 'eleven'"),
        ("server: {port: 70000}\n", "'server.port' must be between 0 and 65535"),
        ("server: {enable_cors: 'yes'}\n", "'server.enable_cors' must be true or false"),
        ("server: {log_format: yaml}\n", "'server.log_format' must be one of 'text', 'json', got 'yaml'"),
        (
            "backend: {type: vllm}\n",
            "'backend.type' must be one of 'ollama', 'openai', 'llamacpp', got 'vllm'",
        ),
        (
            "backend: {type: llamacpp, models: {smollm2: {path: /no/such.gguf}}}\n",
            "'backend.models.smollm2.path': file not found: /no/such.gguf",
        ),
        ("backend: {type: llamacpp}\n", "'backend.models' must name at least one GGUF file"),
        ("backend: {models: {smollm2: {ctx: 10}}}\n", "'backend.models.smollm2.path' is required"),
        (
            "backend: {models: {smollm2: {path: a, args: '--jinja'}}}\n",
            "'backend.models.smollm2.args' must be a list of llama-server arguments",
        ),
        ("backend: {models: {smollm2: {path: a, gpu: 1}}}\n", "unknown key 'backend.models.smollm2.gpu'"),
        (
            "backend: {models: {smollm2: {path: a, ctx: big}}}\n",
            "'backend.models.smollm2.ctx' must be an integer",
        ),
        ("backend: {endpoint: 'localhost:8080'}\n", "'backend.endpoint' must be an http:// or https:// URL"),
        ("backend: {timeout: -1}\n", "'backend.timeout' must be a positive number"),
        ("backend: {connect_timeout: 0}\n", "'backend.connect_timeout' must be a positive number"),
        ("backend: {max_connections: 0}\n", "'backend.max_connections' must be at least 1, got 0"),
        ("backend: {max_answer_mb: 0}\n", "'backend.max_answer_mb' must be between 0 and 4096, got 0"),
        ("database: {max_body_kb: 0}\n", "'database.max_body_kb' must be at least 1, got 0"),
        ("models: {mappings: [a, b]}\n", "'models.mappings' must be a mapping"),
        ("server: [1\n", "not valid YAML"),
        ("- a\n", "the top level must be a mapping"),
    ],
)
def test_bad_config_is_one_clear_line_and_exit_2(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="^" + str(path)):
        config_mod.load(str(path))
    done = subprocess.run(
        [sys.executable, "-m", "llm_proxy", "serve", "--config", str(path)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_unreadable_file(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "llm_proxy", "--config", str(tmp_path / "missing.yaml")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2
    assert "cannot read config file" in done.stderr and "Traceback" not in done.stderr


def test_api_key_never_in_repr() -> None:
    config = config_mod.from_dict({"backend": {"api_key": "sk-secret-123"}})
    assert "sk-secret-123" not in repr(config)


def test_every_command_has_help() -> None:
    for args in (["--help"], ["serve", "--help"], ["migrate", "--help"]):
        done = subprocess.run(
            [sys.executable, "-m", "llm_proxy", *args], capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0 and "usage: llm-proxy" in done.stdout
    done = subprocess.run(
        [sys.executable, "-m", "llm_proxy", "--version"], capture_output=True, text=True, timeout=30
    )
    assert done.stdout.startswith("llm-proxy ")


def test_llamacpp_models_and_their_limits(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    path = tmp_path / "config.yaml"
    path.write_text(
        "backend:\n  type: llamacpp\n  max_running: 2\n  idle_timeout: 0\n  models:\n"
        f"    a: {{path: {gguf}, ctx: 2048, args: [--jinja, -t, 1]}}\n    b: {gguf}\n"
    )
    backend = config_mod.load(str(path)).backend
    assert (backend.max_running, backend.idle_timeout) == (2, 0.0)
    assert backend.models["a"] == config_mod.LlamaModel(str(gguf), 2048, ("--jinja", "-t", "1"))
    assert backend.models["b"] == config_mod.LlamaModel(str(gguf))
    # The limits only matter to the backend that uses them.
    assert config_mod.from_dict({"backend": {"type": "openai", "max_running": 0}}).backend.max_running == 0
    with pytest.raises(ConfigError, match=r"'backend\.max_running' must be at least 1"):
        config_mod.from_dict({"backend": {"type": "llamacpp", "max_running": 0, "models": {"a": str(gguf)}}})
