"""sd_notify datagrams, received on real AF_UNIX sockets."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

from llm_proxy.server.notify import Notifier


def test_abstract_namespace_address(tmp_path: Path) -> None:
    name = f"llm-proxy-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)  # what systemd means by "@name"
        listener.settimeout(5)
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": f"@{name}"})
        assert notifier.ready("listening on 127.0.0.1:1") is True
        assert notifier.stopping() is True
        first, second = listener.recv(4096), listener.recv(4096)
    assert first == b"READY=1\nSTATUS=listening on 127.0.0.1:1"
    assert second == b"STOPPING=1\nSTATUS=shutting down"


def test_without_systemd_nothing_is_sent() -> None:
    notifier = Notifier.from_environ({})
    assert notifier.address is None and notifier.watchdog is None
    assert notifier.ready() is False and notifier.ping() is False


def test_a_vanished_socket_does_not_stop_the_proxy(tmp_path: Path) -> None:
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.ready() is False  # logged, not raised


def test_watchdog_interval_is_for_this_process_only() -> None:
    mine = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier.from_environ(mine).watchdog == 30.0
    assert Notifier.from_environ({**mine, "WATCHDOG_PID": "1"}).watchdog is None
    assert Notifier.from_environ({**mine, "WATCHDOG_USEC": "0"}).watchdog is None
    assert Notifier.from_environ({**mine, "WATCHDOG_USEC": "soon"}).watchdog is None
