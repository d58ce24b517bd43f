"""The web UI in a real headless Chromium (Debian's), against the real ``llm-proxy serve``.

Playwright drives /usr/bin/chromium (``executable_path``; no browser is ever
downloaded). The proxy runs as a process, as users run it, in front of the
llama-server double. Each test saves screenshots under its temporary
directory (``ui-*.png``), and fails on any error in the browser's console.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import ollama
import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright, expect

from .conftest import read_rows
from .ha_turn import TURN_ON, Capture, client, spoken_request, start_messages
from .llama_double import LlamaServerDouble
from .process import serve

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
HOSTILE = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2"> what is on?'
ADMIN, HOME = "admin-key-for-the-browser-test", "home-assistant-key-for-the-test"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's chromium (tests/install.sh installs it); launching names the path if it is missing."""
    async with async_playwright() as p:
        found = await p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield found
        await found.close()


class Console:
    """Every console error and uncaught exception of a page."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.requests: list[str] = []
        page.on("request", lambda request: self.requests.append(request.url))
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        page.on("dialog", self._dialog)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    async def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        await dialog.dismiss()


async def _chat(url: str, text: str, headers: dict[str, str] | None = None, **kw: Any) -> None:
    c = ollama.AsyncClient(host=url, headers=headers or {})
    stream = await c.chat(model="smollm2", messages=[{"role": "user", "content": text}], stream=True, **kw)
    async for _ in stream:
        pass


async def _shot(page: Page, tmp_path: Path, name: str) -> None:
    await page.screenshot(path=str(tmp_path / f"ui-{name}.png"), full_page=True)


def _served(tmp_path: Path, endpoint: str, **sections: Any) -> Any:
    return serve(tmp_path, endpoint, backend={"type": "openai", "endpoint": endpoint}, **sections)


async def test_list_live_search_exchange_turn_and_dashboard(
    tmp_path: Path, browser: Browser, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    double, endpoint = llama_double
    async with _served(tmp_path, endpoint) as served:
        context = await browser.new_context(
            viewport={"width": 1280, "height": 900}, permissions=["clipboard-read", "clipboard-write"]
        )
        page = await context.new_page()
        console = Console(page)
        await page.goto(f"{served.url}/ui/")
        await expect(page.locator("#live")).to_have_text("live")
        await expect(page.get_by_text("No exchanges match.")).to_be_visible()

        # Live: requests appear without a reload.
        await _chat(served.url, "Why is the sky blue?")
        await expect(page.locator(".row[data-id]")).to_have_count(1, timeout=5000)
        await _chat(served.url, HOSTILE)
        await _chat(served.url, "Turn on the kitchen light", tools=[TURN_ON])
        await expect(page.locator(".row[data-id]")).to_have_count(3, timeout=5000)
        await expect(page.locator(".row[data-id]").first).to_contain_text("Turn on the kitchen light")
        await _shot(page, tmp_path, "list")

        # Hostile text is text: no element made of it, no script run.
        hostile = page.locator(".row[data-id]").nth(1)
        await expect(hostile).to_contain_text("<script>window.pwned = 1</script><img src=x onerror=")
        assert await page.locator("#rows img, #rows script").count() == 0
        assert await page.evaluate("window.pwned") is None

        # Search finds a prompt.
        await page.fill("#search", "kitchen")
        await page.press("#search", "Enter")
        await expect(page.locator(".row[data-id]")).to_have_count(1)
        await expect(page.locator(".row[data-id]")).to_contain_text("Turn on the kitchen light")
        await _shot(page, tmp_path, "search")
        # A filtered list stays live: a match appears, anything else does not.
        await _chat(served.url, "is the kitchen window open?")
        await _chat(served.url, "what time is it?")
        await _chat(served.url, "kitchen lights off")
        await expect(page.locator(".row[data-id]").first).to_contain_text("kitchen lights off")
        # In the order they were written: had the second slipped in, it would be here too.
        texts = await page.locator(".row[data-id] .c-prompt").all_inner_texts()
        assert texts == ["kitchen lights off", "is the kitchen window open?", "Turn on the kitchen light"]

        # The exchange: its tool call with its arguments, and the translated backend request.
        await page.locator(".row[data-id]", has_text="Turn on the kitchen light").click()
        await expect(page.locator(".call-name")).to_have_text("HassTurnOn")
        await expect(page.locator(".call pre")).to_contain_text('"name": "HassTurnOn"')
        heading = page.get_by_role("heading", name="Backend request (translated)")
        backend = page.locator("section", has=heading)
        await expect(backend.locator("pre")).to_contain_text('"tools"')
        await expect(backend.locator("pre")).to_contain_text('"stream_options"')
        await expect(page.get_by_role("button", name="Copy as curl")).to_be_visible()
        await expect(page.locator(".facts")).to_contain_text("first byte")
        await _shot(page, tmp_path, "exchange")

        # The hostile exchange's page renders it as text too.
        hostile_id = await page.evaluate("fetch('/ui/api/exchanges?q=pwned').then(r => r.json())")
        await page.goto(f"{served.url}/ui/#/exchange/{hostile_id['exchanges'][0]['id']}")
        await expect(page.locator(".msg.user .text")).to_have_text(HOSTILE)
        assert await page.locator("main img").count() == 0
        assert await page.evaluate("window.pwned") is None
        await _shot(page, tmp_path, "hostile")

        # A Home Assistant turn of three rounds, as one conversation.
        messages = start_messages()
        await spoken_request(client(served.url, Capture()), double, messages, "Turn on the kitchen light", 3)
        rows = read_rows(served.db, 9)
        turn = rows[-1]["turn_id"]
        assert turn == rows[-3]["id"]
        await page.goto(f"{served.url}/ui/#/turn/{turn}")
        await expect(page.locator(".round")).to_have_count(3)
        await expect(page.locator(".round").first.locator(".call-name")).to_have_text("HassTurnOn")
        await expect(page.locator(".round").nth(1).locator(".msg.tool")).to_have_count(1)
        await expect(page.locator("details.msg.system")).to_have_count(1)  # folded
        await _shot(page, tmp_path, "turn")

        # The dashboard draws its charts.
        await page.goto(f"{served.url}/ui/#/dashboard/1h")
        await expect(page.locator(".chart")).to_have_count(6)
        assert await page.locator(".chart svg path[data-series='smollm2']").count() >= 5
        await expect(page.get_by_text("reachable")).to_be_visible()
        await _shot(page, tmp_path, "dashboard")

        # Dark, as the system says; the keyboard opens an exchange.
        dark = await browser.new_page(color_scheme="dark", viewport={"width": 1280, "height": 900})
        dark_console = Console(dark)
        await dark.goto(f"{served.url}/ui/")
        await expect(dark.locator(".row[data-id]")).to_have_count(9)
        background = await dark.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(20, 22, 24)", background
        newest = await dark.locator(".row[data-id]").first.get_attribute("data-id")
        await dark.locator(".row[data-id]").first.focus()
        await dark.keyboard.press("Enter")
        await expect(dark.get_by_role("heading", level=1)).to_contain_text(f"#{newest} 200 POST /api/chat")
        await _shot(dark, tmp_path, "dark-exchange")
        await dark.close()
        assert dark_console.errors == []

        # On a phone.
        phone = await browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
        phone_console = Console(phone)
        await phone.goto(f"{served.url}/ui/")
        await expect(phone.locator(".row[data-id]")).to_have_count(9)
        width = await phone.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the list is wider than the phone: {width}px"
        await _shot(phone, tmp_path, "phone-list")
        await phone.goto(f"{served.url}/ui/#/dashboard/1h")
        await expect(phone.locator(".chart")).to_have_count(6)
        await _shot(phone, tmp_path, "phone-dashboard")

        # An error is shown plainly, on the list and on its page.
        double.scenario = "error-context-exceeded"
        with pytest.raises(ollama.ResponseError):
            await _chat(served.url, "a question far too long")
        await page.goto(f"{served.url}/ui/#/")
        failed = page.locator(".row[data-id]").first
        await expect(failed.locator(".status.bad")).to_have_text("400")
        await failed.click()
        await expect(page.get_by_role("alert")).to_contain_text("context")
        await _shot(page, tmp_path, "error")

        # "Copy as curl" copies a command that sends the same request again.
        await page.goto(f"{served.url}/ui/#/exchange/1")
        await page.get_by_role("button", name="Copy as curl").click()
        command = await page.evaluate("navigator.clipboard.readText()")
        assert command.startswith(f"curl -X POST '{served.url}/api/chat'")
        assert len(read_rows(served.db, 10)) == 10  # the pages' own requests left no rows
        sent = await asyncio.create_subprocess_exec("bash", "-c", command, stdout=asyncio.subprocess.PIPE)
        out, _ = await sent.communicate()
        assert sent.returncode == 0 and b'"done":true' in out
        assert len(read_rows(served.db, 11)) == 11
        with contextlib.closing(sqlite3.connect(served.db)) as db:
            bodies = [r[0] for r in db.execute("SELECT full_request_body FROM logs_full WHERE id IN (1, 11)")]
        assert len(bodies) == 2 and bodies[0] == bodies[1] and "Why is the sky blue?" in bodies[0]

        assert console.errors == [] and phone_console.errors == []
        assert console.dialogs == []
        # Nothing but the proxy itself (and data: URLs) was ever asked for: no CDN, no fonts, no favicon.
        elsewhere = [
            u for u in console.requests + phone_console.requests if not u.startswith(f"{served.url}/ui/")
        ]
        assert [u for u in elsewhere if not u.startswith("data:")] == []
        await context.close()
        await phone.close()
        await served.stop()
    assert f"web UI at {served.url}/ui/ (listening on loopback only: no sign-in)" in "\n".join(served.stdout)


async def test_with_keys_the_page_asks_for_an_admin_key(
    tmp_path: Path, browser: Browser, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    keys = [
        {"name": "home-assistant", "key": HOME},
        {"name": "me", "key_sha256": hashlib.sha256(ADMIN.encode()).hexdigest(), "admin": True},
    ]
    async with _served(tmp_path, llama_double[1], auth={"keys": keys}) as served:
        await _chat(served.url, "a private question", headers={"Authorization": f"Bearer {HOME}"})
        page = await browser.new_page()
        console = Console(page)
        await page.goto(f"{served.url}/ui/")
        await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        assert await page.locator(".row").count() == 0
        await _shot(page, tmp_path, "sign-in")

        # A key without admin: true is refused, and said why.
        await page.fill("#key", HOME)
        await page.press("#key", "Enter")
        await expect(page.locator(".signin .error")).to_contain_text("needs admin: true")
        refused = [e for e in console.errors if "403" in e]
        assert len(refused) == 1, console.errors  # Chromium logs the refused request itself
        console.errors.clear()

        await page.fill("#key", ADMIN)
        await page.press("#key", "Enter")
        await expect(page.locator(".row[data-id]")).to_contain_text("a private question")
        assert await page.evaluate("document.cookie") == ""  # HttpOnly: no script sees the session
        assert await page.evaluate("JSON.stringify(localStorage) + JSON.stringify(sessionStorage)") == "{}{}"
        await page.reload()
        await expect(page.locator(".row[data-id]")).to_have_count(1)  # the cookie keeps the session
        await _shot(page, tmp_path, "signed-in")

        await page.get_by_role("button", name="Sign out").click()
        await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        assert console.errors == []
        await page.close()
        await asyncio.sleep(0.2)
        assert len(read_rows(served.db, 1)) == 1
        await served.stop()
    said = "\n".join(served.stdout)
    assert f"web UI at {served.url}/ui/ (sign in with an admin key: me)" in said


async def test_an_open_live_page_does_not_hold_up_shutdown(
    tmp_path: Path, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    async with _served(tmp_path, llama_double[1], server={"shutdown_timeout": 120}) as served:
        async with aiohttp.ClientSession() as http, http.get(f"{served.url}/ui/api/events") as events:
            assert events.status == 200
            await events.content.readline()
            served.proc.send_signal(signal.SIGTERM)
            # The stream ends as shutdown begins, not when shutdown_timeout runs out.
            await asyncio.wait_for(events.content.read(), 60)
            assert events.content.at_eof()
        assert await served.stop(signalled=True) == 0
