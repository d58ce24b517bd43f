"""Model names and model lists: Ollama's ``/api/tags``, ``/api/ps`` and ``/api/show`` from
llama-server's ``/v1/models`` and ``/props``.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from llm_proxy.config import aliases

from . import JSONDict, is_number, rfc3339_now

# /api/ps reports "loaded until": llama-server keeps its model loaded for as
# long as it runs, which Ollama itself reports as a date centuries away (its
# expires_at for a model kept loaded for good).
FAR_FUTURE = "2318-01-01T00:00:00Z"


def _rfc3339_from_unix(seconds: Any) -> str:
    """Format unix seconds as RFC 3339 UTC; anything unusable means now."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
        return rfc3339_now()
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
    except (OverflowError, OSError, ValueError):
        return rfc3339_now()


def normalize_model_name(name: str) -> str:
    """Give a model name Ollama's implicit tag: ``x`` and ``x:latest`` are one model."""
    if not name:
        return name
    # A colon before the last "/" is a registry port ("host:5000/x"), not a tag.
    if name.rfind(":") > name.rfind("/"):
        return name
    return f"{name}:latest"


def digest(model_id: str) -> str:
    """The digest a model is listed with: its id's SHA-256 (llama-server has no blob digests)."""
    return hashlib.sha256(model_id.encode()).hexdigest()


def _parameter_size(n_params: Any) -> str:
    """Format a parameter count the way Ollama lists it: ``135M``, ``1.7B``."""
    if not is_number(n_params) or n_params <= 0:
        return ""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n_params >= scale:
            number = n_params / scale
            text = f"{number:.1f}" if suffix in ("B", "T") and number < 100 else f"{number:.0f}"
            return text.removesuffix(".0") + suffix
    return str(int(n_params))


_QUANT = re.compile(r"^(?:I?Q\d+(?:_[A-Z0-9]+)*|BF16|F16|F32|F64)$", re.IGNORECASE)


def _quantization(ftype: Any, model_path: Any) -> str:
    """Name the quantisation from llama-server's ftype, else from the file name."""
    if isinstance(ftype, str) and ftype:
        return ftype.upper().removeprefix("MOSTLY_")
    if not isinstance(model_path, str) or not model_path:
        return ""
    stem = model_path.replace("\\", "/").rsplit("/", 1)[-1]
    if stem.lower().endswith(".gguf"):
        stem = stem[: -len(".gguf")]
    # "SmolLM2-135M-Instruct.Q4_1", "Llama-3.2-3B-Instruct-Q4_K_M": the
    # quantisation is the last dot- or dash-separated piece that looks like one.
    for piece in reversed(re.split(r"[.\-]", stem)):
        if _QUANT.match(piece):
            return piece.upper()
    return ""


def _meta(entry: Mapping[str, Any] | None) -> Mapping[str, Any]:
    meta = entry.get("meta") if isinstance(entry, Mapping) else None
    return meta if isinstance(meta, Mapping) else {}


def _props(props_json: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return props_json if isinstance(props_json, Mapping) else {}


def _family(props: Mapping[str, Any]) -> str:
    # Neither /v1/models nor /props names the GGUF architecture in the builds
    # we know; report it only if a build does, never guess it from a file name.
    for key in ("model_arch", "architecture", "general.architecture"):
        value = props.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def details(entry: Mapping[str, Any] | None, props_json: Mapping[str, Any] | None) -> JSONDict:
    """Ollama's ``details`` of a model: format, family, parameter size, quantisation."""
    meta = _meta(entry)
    props = _props(props_json)
    family = _family(props)
    ftype = meta.get("ftype") or props.get("model_ftype")
    return {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family] if family else None,
        "parameter_size": _parameter_size(meta.get("n_params")),
        "quantization_level": _quantization(ftype, props.get("model_path")),
    }


def _context_length(entry: Mapping[str, Any] | None, props_json: Mapping[str, Any] | None) -> int:
    """The context a request gets: the slot's, else the loaded, else the trained one."""
    settings = _props(props_json).get("default_generation_settings")
    candidates = [settings.get("n_ctx") if isinstance(settings, Mapping) else None]
    meta = _meta(entry)
    candidates += [meta.get("n_ctx"), meta.get("n_ctx_train")]
    for value in candidates:
        if is_number(value) and value > 0:
            return int(value)
    return 0


def client_names(model_id: str, mappings: Mapping[str, str]) -> list[str]:
    """The names clients know a backend model by, tagged: its mapped aliases, else its id."""
    names = [normalize_model_name(client) for client in aliases(model_id, mappings)]
    return list(dict.fromkeys(names)) or [normalize_model_name(model_id)]


def _entries(models_json: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    # Only OpenAI's ``data``: the Ollama-looking ``models`` array newer
    # llama-server builds add has "" for size and modified_at, which the
    # ollama client rejects.
    data = models_json.get("data") if isinstance(models_json, Mapping) else None
    if not isinstance(data, list):
        return []
    return [e for e in data if isinstance(e, Mapping) and isinstance(e.get("id"), str) and e.get("id")]


def _listed(
    models_json: Mapping[str, Any], props_json: Mapping[str, Any] | None, mappings: Mapping[str, str]
) -> list[tuple[Mapping[str, Any], JSONDict]]:
    """Each served model under each client-side name, with the fields both lists share."""
    out = []
    for entry in _entries(models_json):
        model_id = entry["id"]
        size = _meta(entry).get("size")
        shared: JSONDict = {
            "size": int(size) if is_number(size) and size > 0 else 0,
            "digest": digest(model_id),
            "details": details(entry, props_json),
        }
        for name in client_names(model_id, mappings):
            out.append((entry, {"name": name, "model": name, **shared, "details": dict(shared["details"])}))
    return out


def tags_from_models(
    models_json: Mapping[str, Any],
    props_json: Mapping[str, Any] | None,
    mappings: Mapping[str, str],
) -> JSONDict:
    """Build the Ollama ``/api/tags`` body from llama-server's ``/v1/models`` and ``/props``.

    Each entry carries the ``capabilities`` ``/api/show`` reports (newer
    Ollama lists them here too, so pickers need not ask each model).
    """
    capabilities = _capabilities(_props(props_json))
    return {
        "models": [
            {
                **fields,
                "modified_at": _rfc3339_from_unix(entry.get("created")),
                "capabilities": list(capabilities),
            }
            for entry, fields in _listed(models_json, props_json, mappings)
        ]
    }


def ps_from_models(
    models_json: Mapping[str, Any],
    props_json: Mapping[str, Any] | None,
    mappings: Mapping[str, str],
) -> JSONDict:
    """Build the Ollama ``/api/ps`` body: every served model is loaded, in RAM or VRAM."""
    return {
        "models": [
            # The proxy cannot tell where llama-server put the weights: size_vram 0.
            {
                **fields,
                "size_vram": 0,
                "expires_at": FAR_FUTURE,
                "context_length": _context_length(entry, props_json),
            }
            for entry, fields in _listed(models_json, props_json, mappings)
        ]
    }


def _capabilities(props: Mapping[str, Any]) -> list[str]:
    """What ``/props`` shows the model can do; what it cannot show is left out (docs/translation.md)."""
    capabilities = ["completion"]
    caps = props.get("chat_template_caps")
    caps = caps if isinstance(caps, Mapping) else {}
    if caps.get("supports_tools") is True or caps.get("supports_tool_calls") is True:
        capabilities.append("tools")
    modalities = props.get("modalities")
    if isinstance(modalities, Mapping) and modalities.get("vision") is True:
        capabilities.append("vision")
    thinking_keys = (
        "supports_reasoning",
        "supports_thinking",
        "supports_reasoning_effort",
    )
    if any(caps.get(key) is True for key in thinking_keys):
        capabilities.append("thinking")
    return capabilities


def show_from_props(
    name: str,
    models_entry: Mapping[str, Any] | None,
    props_json: Mapping[str, Any] | None,
) -> JSONDict:
    """Build the Ollama ``/api/show`` body from a ``/v1/models`` entry and ``/props``."""
    props = _props(props_json)
    meta = _meta(models_entry)
    shown = details(models_entry, props_json)
    arch = shown["family"] or "unknown"
    model_info: JSONDict = {"general.architecture": arch}
    n_params = meta.get("n_params")
    if is_number(n_params):
        model_info["general.parameter_count"] = int(n_params)
    context_length = _context_length(models_entry, props_json)
    if context_length:
        model_info[f"{arch}.context_length"] = context_length
    n_embd = meta.get("n_embd")
    if is_number(n_embd):
        model_info[f"{arch}.embedding_length"] = int(n_embd)
    template = props.get("chat_template")
    model_path = props.get("model_path")
    modelfile = f"# {name} is served by llama.cpp's llama-server through llm-proxy; it has no Modelfile.\n"
    if isinstance(model_path, str) and model_path:
        modelfile += f"# model file: {model_path}\n"
    created = models_entry.get("created") if isinstance(models_entry, Mapping) else None
    return {
        "modelfile": modelfile,
        "parameters": "",
        "template": template if isinstance(template, str) else "",
        "details": shown,
        "model_info": model_info,
        "capabilities": _capabilities(props),
        "modified_at": _rfc3339_from_unix(created),
    }


# The answers that list models, and the array each one lists them in.
LIST_KEYS = {"/api/tags": "models", "/api/ps": "models", "/v1/models": "data"}


def _entry_names(entry: Any, endpoint: str) -> list[str]:
    """The names a list entry is known by, normalized (``x`` and ``x:latest`` alike)."""
    if not isinstance(entry, Mapping):
        return []
    fields = ("id",) if endpoint == "/v1/models" else ("name", "model")
    return [normalize_model_name(entry[f]) for f in fields if isinstance(entry.get(f), str) and entry[f]]


def listed_names(endpoint: str, doc: Mapping[str, Any] | None) -> frozenset[str]:
    """Every model name a list answer (``/api/tags``, ``/api/ps``, ``/v1/models``) shows, normalized."""
    entries = doc.get(LIST_KEYS[endpoint]) if isinstance(doc, Mapping) else None
    if not isinstance(entries, list):
        return frozenset()
    return frozenset(name for entry in entries for name in _entry_names(entry, endpoint))


def merge_lists(endpoint: str, docs: Sequence[Mapping[str, Any]]) -> JSONDict:
    """One list answer from several backends' (in their order): a model listed twice appears once."""
    key = LIST_KEYS[endpoint]
    merged: list[Any] = []
    seen: set[str] = set()
    for doc in docs:
        entries = doc.get(key)
        for entry in entries if isinstance(entries, list) else []:
            names = _entry_names(entry, endpoint)
            if not names or any(name in seen for name in names):
                continue
            seen.update(names)
            merged.append(entry)
    return {"object": "list", "data": merged} if endpoint == "/v1/models" else {"models": merged}
