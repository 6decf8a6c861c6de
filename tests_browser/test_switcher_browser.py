"""The adapter switcher in a real browser over a live kernel (Voila + headless Chromium).

The page (switcher_page.ipynb) shows ``lh.adapter_switcher`` and a probe widget whose value the kernel
computes after every action (``lh.active_adapter(model)``, the kernel-side prompt, the last reply), so
the test checks the kernel's state, not only what the browser drew.
"""
from __future__ import annotations

import json
import re

from playwright.sync_api import TimeoutError as PlaywrightTimeout

PAGE_LOAD_MS = 180_000   # Voila runs the notebook (torch, transformers, peft imports) before the page shows
KERNEL_MS = 60_000       # one widget round trip (a switch, or 8 new tokens of the tiny model)

DROPDOWN = ".lh-switcher .widget-dropdown select"
TEXTAREA = ".lh-switcher .widget-textarea textarea"
GENERATE = ".lh-switcher button:has-text('Сгенерировать')"
STATUS = ".lh-switcher .widget-html"
OUTPUT = ".lh-switcher .widget-output"
PROBE = ".lh-kernel-probe pre"


def kernel_state(page) -> dict:
    return json.loads(page.inner_text(PROBE))


def wait_kernel(page, **expected) -> dict:
    """Wait until the kernel-side probe shows every key=value in ``expected``; return the whole state."""
    page.wait_for_function(
        """([sel, exp]) => {
            const el = document.querySelector(sel);
            if (!el) return false;
            let s; try { s = JSON.parse(el.innerText); } catch (e) { return false; }
            return Object.entries(exp).every(([k, v]) => s[k] === v);
        }""",
        arg=[PROBE, expected], timeout=KERNEL_MS)
    return kernel_state(page)


def squash(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("\xa0", " ")).strip()


def assert_output(page, expected: str, settle_ms: int = 1500) -> None:
    """The Output shows exactly ``expected`` (whitespace aside), and still does after the frontend's
    own sync messages have come back from the kernel."""
    want = squash(expected)
    try:
        page.wait_for_function(
            """([sel, want]) => {
                const el = document.querySelector(sel);
                return !!el && el.innerText.replace(/\\s+/g, " ").trim() === want;
            }""", arg=[OUTPUT, want], timeout=15_000)
    except PlaywrightTimeout:
        pass  # reported below with what the page shows
    page.wait_for_timeout(settle_ms)
    shown = squash(page.inner_text(OUTPUT))
    assert shown == want, f"the Output shows {shown!r}, the kernel replied {want!r}"


def generate(page, prompt: str, runs: int) -> dict:
    page.fill(TEXTAREA, prompt)
    wait_kernel(page, prompt=prompt)        # the kernel has the text before the click is sent
    page.click(GENERATE)
    state = wait_kernel(page, runs=runs)
    # disabled while the reply is generated, enabled again (with its label back) once it is shown
    page.wait_for_selector(f"{GENERATE}:not([disabled])", timeout=KERNEL_MS)
    return state


def test_switcher_in_browser(voila_url, browser, artifacts):
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(voila_url, timeout=PAGE_LOAD_MS, wait_until="domcontentloaded")
        page.wait_for_selector(DROPDOWN, timeout=PAGE_LOAD_MS)
        page.wait_for_selector(PROBE, timeout=KERNEL_MS)

        # The widget as the learner sees it: adapters, base, auto; "json" active in the kernel.
        options = page.eval_on_selector_all(f"{DROPDOWN} option", "els => els.map(e => e.textContent)")
        options = [o.replace("\xa0", " ") for o in options]   # ipywidgets shows spaces as &nbsp;
        assert options == ["json", "coding", "base (без адаптера)", "авто (роутер)"]
        assert page.inner_text(".lh-switcher .widget-dropdown label") == "Адаптер:"
        assert kernel_state(page)["active"] == "json"
        assert "json" in page.inner_text(STATUS)

        # Pick "coding": the kernel switches the live model at once.
        page.select_option(DROPDOWN, "coding")
        state = wait_kernel(page, dropdown="coding")
        assert state["active"] == "coding"
        page.wait_for_function("s => document.querySelector(s).innerText.includes('coding')", arg=STATUS,
                               timeout=KERNEL_MS)
        assert squash(page.inner_text(STATUS)) == "Активный адаптер: coding"

        # Type a prompt, click «Сгенерировать»: the kernel's reply appears in the Output under [coding].
        state = generate(page, "Write a Python function that reverses a string", runs=1)
        assert state["active"] == "coding" and state["last_adapter"] == "coding"
        assert isinstance(state["last_reply"], str)
        assert_output(page, f"[coding]\n{state['last_reply']}")
        page.screenshot(path=str(artifacts / "switcher-coding.png"), full_page=True)

        # «авто (роутер)»: picking it changes nothing yet; a JSON prompt is routed to "json" on the click.
        page.select_option(DROPDOWN, label="авто (роутер)")
        assert wait_kernel(page, dropdown="auto (router)")["active"] == "coding"
        state = generate(page, "Верни JSON со схемой: имя, возраст, город", runs=2)
        assert state["active"] == "json" and state["last_adapter"] == "json"
        assert_output(page, f"[json]\n{state['last_reply']}")   # the [coding] reply is cleared
        status = squash(page.inner_text(STATUS))
        assert status.startswith("Активный адаптер: json") and "роутер" in status and "«json»" in status
        assert not errors, errors
    finally:
        page.screenshot(path=str(artifacts / "switcher.png"), full_page=True)
        page.close()
