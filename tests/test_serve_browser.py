"""Playwright + Debian Chromium against `radgpt serve` (the tiny CTranslate2 export): with the keyboard
alone, paste findings, watch the impression stream in, see similar prior cases, copy the result."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from radgpt.common.net import free_port, wait_until_healthy

# tiny_export: a session fixture in tests/conftest.py

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = shutil.which("chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]
FINDINGS = ("The heart is mildly enlarged. There is a small left pleural effusion. "
            "No pneumothorax. Degenerative changes of the spine.")

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium not installed")]


def start(model: Path, port: int, audit: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "radgpt", "serve", "--model", str(model), "--name", "tiny",
                             "--port", str(port), "--audit-log", str(audit), "--threads", "1"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_until_healthy(f"http://127.0.0.1:{port}", timeout=60, proc=proc)
    return proc


@contextlib.contextmanager
def served_page(model, tmp_path: Path):
    """`radgpt serve MODEL` on a free port and a Chromium page on it, ready; yields (page, console errors)."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=20_000)
    port = free_port()
    server = start(model, port, tmp_path / "audit.jsonl")
    errors: list[str] = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1000, "height": 1100})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(f"http://127.0.0.1:{port}/")
            expect(page.locator("#status")).to_have_text("Ready.")
            yield page, errors
            browser.close()
    finally:
        server.kill()
        server.wait(10)


def test_clinician_page_keyboard_only(tiny_export, tmp_path):
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    with served_page(tiny_export, tmp_path) as (page, errors):
        expect(page.locator("#model option")).to_have_count(1)
        # count the changes to the impression while it is written: streamed deltas, not set once. Count
        # mutation records, not observer callbacks: a fast model's whole stream can arrive in one network
        # read, and then all its per-delta updates reach the observer in one callback.
        page.evaluate("""() => { window.__changes = 0;
            new MutationObserver((records) => { window.__changes += records.length; }).observe(
                document.getElementById('impression'),
                {childList: true, characterData: true, subtree: true}); }""")
        for _ in range(8):  # keyboard only: Tab to the findings box
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.id") == "findings":
                break
        assert page.evaluate("document.activeElement.id") == "findings"
        page.keyboard.insert_text(FINDINGS)  # what a paste does
        page.keyboard.press("Control+Enter")
        expect(page.locator("#status")).to_contain_text("Done.")
        impression = page.inner_text("#impression").strip()
        assert impression
        assert page.evaluate("window.__changes") > 2, "the impression was not streamed"
        expect(page.locator("#similar li")).to_have_count(3)
        assert "Case " in page.inner_text("#similar")
        expect(page.locator("#copy")).to_be_enabled()
        for _ in range(6):  # Tab on to the copy button and press it
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.id") == "copy":
                break
        assert page.evaluate("document.activeElement.id") == "copy"
        page.keyboard.press("Enter")
        expect(page.locator("#copied")).to_have_text("Copied.")
        page.screenshot(path=str(ARTIFACTS / "serve_page.png"), full_page=True)
        # an empty submission is refused on the page without a request
        page.fill("#findings", "   ")
        page.keyboard.press("Control+Enter")
        expect(page.locator("#status")).to_have_text("Paste the findings first.")
    assert errors == [], errors
    audit = (tmp_path / "audit.jsonl").read_text()
    assert "pleural" not in audit and '"/v1/impressions"' in audit


def test_a_high_flag_is_highlighted_and_copying_needs_a_second_press(tmp_path):
    """The normal-sentence baseline (no repair) for findings with a pneumothorax: the page must show the high
    omission, quote the word from the findings, and copy only after a deliberate second press."""
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    with served_page("baseline:normal", tmp_path) as (page, errors):
        page.fill("#findings", "Small right apical pneumothorax. Heart size normal.")
        page.keyboard.press("Control+Enter")
        expect(page.locator("#status")).to_contain_text("Done.")
        expect(page.locator("#flags li.flag-high")).to_contain_text("pneumothorax")
        expect(page.locator("#flags li.flag-high mark")).to_have_text("pneumothorax")
        page.click("#copy")
        expect(page.locator("#copy")).to_have_text("Copy anyway")
        expect(page.locator("#copied")).to_contain_text("High-severity check")
        page.click("#copy")
        expect(page.locator("#copied")).to_have_text("Copied.")
        expect(page.locator("#copy")).to_have_text("Copy impression")
        page.screenshot(path=str(ARTIFACTS / "serve_page_high_flag.png"), full_page=True)
    assert errors == [], errors
