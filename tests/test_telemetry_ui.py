"""The web UI's exchange page links to the exchange's trace (telemetry.trace_url), in a real browser.

Playwright drives Debian's /usr/bin/chromium, as tests/test_ui_browser.py does. The
collector here is a port nobody listens on: the spans are dropped (and counted),
and the trace id is stored all the same.
"""

from __future__ import annotations

from pathlib import Path

import ollama
from playwright.async_api import async_playwright, expect

from .conftest import read_rows
from .llama_double import LlamaServerDouble
from .process import free_port, serve
from .test_ui_browser import ARGS, CHROMIUM

TRACE_URL = "https://tempo.example/trace/{trace_id}"


async def test_the_exchange_page_links_to_its_trace(
    llama_double: tuple[LlamaServerDouble, str], tmp_path: Path
) -> None:
    collector = f"http://127.0.0.1:{free_port()}"  # nobody listens: the spans are dropped
    telemetry = {"enabled": True, "endpoint": collector, "trace_url": TRACE_URL, "timeout": 1.0}
    async with serve(tmp_path, llama_double[1], backend={"type": "openai"}, telemetry=telemetry) as served:
        client = ollama.AsyncClient(host=served.url)
        await client.chat(model="smollm2", messages=[{"role": "user", "content": "Hi"}])
        [row] = read_rows(served.db, 1)
        trace_id = row["trace_id"]
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            page = await browser.new_page()
            await page.goto(f"{served.url}/ui/#/exchange/{row['id']}")
            link = page.locator(".facts a", has_text=trace_id)
            await expect(link).to_have_attribute("href", TRACE_URL.replace("{trace_id}", trace_id))
            await expect(page.locator(".facts")).to_contain_text(f"trace{trace_id}")
            await browser.close()
        assert await served.stop() == 0
