"""The README's screenshot of the chat page: asa-small served in-process, Debian's chromium driven by
playwright, two chat turns (greedy), the bonds view opened on a word of the second reply.

    python bench/serve/screenshot.py [--out docs/chat_app.png]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from playwright.sync_api import sync_playwright  # noqa: E402

from apps.server.app import ServerConfig, create_app  # noqa: E402
from apps.server.live import LiveServer  # noqa: E402
from asa_runtime.generate import load  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="docs/chat_app.png")
    a = ap.parse_args()
    lm = load("asa-small")
    with LiveServer(create_app(lm, ServerConfig(model_id="asa-small", ctx_size=1024))) as srv, \
            sync_playwright() as pw:
        b = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
        page = b.new_page(viewport={"width": 1180, "height": 760})
        page.set_default_timeout(60000)
        page.goto(srv.url + "/")
        page.wait_for_function("document.getElementById('ctx').textContent.includes('/1024')")
        page.fill("#temperature", "0")
        page.fill("#max-tokens", "40")
        page.fill("#system", "A quiet garden behind an old house. Two friends talk.")
        page.dispatch_event("#system", "change")
        for msg in ("Good morning. Have you seen my brother today?", "Will you walk with me to the village?"):
            page.fill("#input", msg)
            page.click("#send")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('finished')")
        n = page.locator("#bond-strip span.gen").count()
        page.click(f"#bond-strip span.gen[data-j='{max(0, n - 2)}']")
        tmp = Path(a.out).with_suffix(".tmp.png")
        page.screenshot(path=str(tmp))
        os.replace(tmp, a.out)
        b.close()
    print(a.out)


if __name__ == "__main__":
    main()
