"""The chat page in a real browser: Debian's chromium (/usr/bin/chromium) driven by playwright (the system
browser; playwright never downloads one here). Loads the page, sends a message, sees tokens stream in,
presses stop, then opens the bonds view on a generated token and checks the highlighted tokens are that
token's plan row, as the API's extension field and the planner itself give it. Saves a screenshot."""
from __future__ import annotations

import os
import shutil
import time

import httpx
import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("sse_starlette")
sync_api = pytest.importorskip("playwright.sync_api")

from apps.server.app import ServerConfig, create_app  # noqa: E402
from apps.server.live import LiveServer  # noqa: E402
from asa_runtime.generate import load  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason="needs Debian's chromium (apt-get install chromium; .ci/run does)")


def _poll(fn, timeout=20.0, every=0.05):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = fn()
        if v:
            return v
        time.sleep(every)
    raise AssertionError("condition not reached in time")


def test_page_streams_stops_and_shows_bonds(tiny_checkpoint, tmp_path):
    lm = load(tiny_checkpoint)
    app = create_app(lm, ServerConfig(model_id="tiny", parallel=2, step_delay=0.03))
    with LiveServer(app) as srv, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.set_default_timeout(20000)
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(srv.url + "/")
            page.wait_for_function("document.getElementById('ctx').textContent.includes('/128')")
            assert "not an\n    assistant" in page.content() or "not an assistant" in page.inner_text("#side")
            page.fill("#temperature", "0")
            page.fill("#max-tokens", "100")
            page.check("#bonds")

            # 1. a long reply: tokens stream in, then stop
            page.fill("#input", "Where are you going?")
            page.click("#send")
            last = "#messages .msg.assistant:last-child .text"
            n1 = _poll(lambda: len(page.inner_text(last)))
            n2 = _poll(lambda: (lambda n: n if n > n1 else 0)(len(page.inner_text(last))))
            assert n2 > n1 and page.is_enabled("#stop")                 # still streaming, growing
            page.click("#stop")
            page.wait_for_selector("#messages .msg.assistant.stopped")
            assert page.inner_text("#status") == "stopped"
            h = _poll(lambda: (lambda h: h if h["cancelled"] == 1 and h["active"] == 0 else None)(
                httpx.get(srv.url + "/health").json()))
            assert h["tokens_generated"] < 100                           # the server stopped generating

            # 2. a short reply to completion, then the bonds view
            page.fill("#max-tokens", "12")
            page.fill("#input", "Up there?")
            page.click("#send")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('finished')")
            page.wait_for_selector("#bonds-panel:not([hidden])")
            bonds = page.evaluate("window.asaDebug.lastBonds")
            context = page.evaluate("window.asaDebug.lastContext")
            assert len(bonds) >= 3
            j = 2
            page.hover(f"#bond-strip span.gen[data-j='{j}']")
            page.click(f"#bond-strip span.gen[data-j='{j}']")
            lit = page.eval_on_selector_all("#bond-strip span.allowed",
                                            "els => els.map(e => [+e.dataset.pos, +e.dataset.w])")
            # the highlighted tokens are exactly the token's plan row from the API ...
            assert [p for p, _ in lit] == bonds[j]["keys"]
            # ... which is the planner's row for that position of the whole sequence
            pieces = context + [b["text"] for b in bonds]
            row = lm.planner.plan(pieces)[bonds[j]["pos"]]
            assert bonds[j]["keys"] == [int(k) for k in row[row >= 0]]
            # shaded by the head- and layer-averaged attention the API reported
            avg = [sum(w[i] for w in bonds[j]["weights"]) / len(bonds[j]["weights"])
                   for i in range(len(bonds[j]["keys"]))]
            assert all(abs(w - a) < 1e-4 for (_, w), a in zip(lit, avg))
            # a single layer
            page.select_option("#layer", "1")
            lit1 = page.eval_on_selector_all("#bond-strip span.allowed", "els => els.map(e => +e.dataset.w)")
            assert all(abs(w - a) < 1e-4 for w, a in zip(lit1, bonds[j]["weights"][1]))
            assert page.inner_text("#bond-info").startswith("token ")
            shot = tmp_path / "chat_page.png"
            page.screenshot(path=str(shot))
            assert shot.stat().st_size > 5000

            # 3. the conversation survives a reload (localStorage)
            page.reload()
            page.wait_for_selector("#messages .msg.assistant")
            assert page.locator("#messages .msg").count() == 4
            assert page.locator("#messages .msg.assistant.stopped").count() == 1

            # 4. co-writing: a new conversation in completion mode continues the text in place
            page.click("#new-conv")
            page.select_option("#mode", "write")
            page.click("#doc")
            page.keyboard.type("The old lighthouse keeper")
            page.fill("#max-tokens", "8")
            page.click("#send")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('finished')")
            assert page.evaluate("window.asaDebug.lastRequest.path") == "/v1/completions"
            doc = page.inner_text("#doc")
            assert doc.startswith("The old lighthouse keeper") and len(doc) > len("The old lighthouse keeper")
            assert page.locator("#conv-list li").count() == 2
            assert not errors, errors
        finally:
            browser.close()
