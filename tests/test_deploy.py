"""deploy/llm-proxy.service: a unit systemd accepts, with the keys the proxy relies on."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "llm-proxy.service"
EXEC = "/opt/llm-proxy/bin/llm-proxy"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections → key → every value (systemd keys may repeat)."""
    found: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            found.setdefault(section, {})
            continue
        key, sep, value = line.partition("=")
        assert sep and section, f"not a unit file line: {raw!r}"
        found[section].setdefault(key.strip(), []).append(value.strip())
    return found


def test_unit_has_the_keys_the_proxy_relies_on() -> None:
    unit = parse_unit(UNIT.read_text())
    service = {key: values[-1] for key, values in unit["Service"].items()}
    assert service["Type"] == "notify"  # the proxy sends READY=1 itself
    assert service["ExecStart"] == f"{EXEC} serve --config /etc/llm-proxy/config.yaml"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["Restart"] == "on-failure"
    assert service["DynamicUser"] == "yes" and service["StateDirectory"] == "llm-proxy"
    assert service["WorkingDirectory"] == "/var/lib/llm-proxy"  # ./llm_proxy.db lands in the state dir
    # systemd must wait longer than server.shutdown_timeout's default (30 s) before SIGKILL.
    assert float(service["TimeoutStopSec"].removesuffix("s")) > 30
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert service[key] == "yes", key
    assert service["ProtectSystem"] == "strict"
    # TCP for clients and backend, AF_UNIX for systemd's notify socket.
    assert service["RestrictAddressFamilies"].split() == ["AF_INET", "AF_INET6", "AF_UNIX"]
    # Room for server.max_connections (512 by default) and the backend's connections, well past 1024.
    assert int(service["LimitNOFILE"]) >= 8 * 512
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    """``systemd-analyze verify`` where systemd is installed; else the parse above must do."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        parse_unit(UNIT.read_text())  # CI without systemd: the unit still parses line by line
        return
    # verify checks that ExecStart exists: point it at this environment's llm-proxy.
    here = shutil.which("llm-proxy") or str(Path(sys.executable).with_name("llm-proxy"))
    unit = tmp_path / "llm-proxy.service"
    unit.write_text(UNIT.read_text().replace(EXEC, here))
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr  # warnings too: unknown keys, bad values
