"""The end-to-end run's report.html in a real headless Chromium."""

from __future__ import annotations

from pathlib import Path

import pytest

from tdpdm.report.html import fmt_epsilon

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.timeout(900),
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium"),
]


def test_end_to_end_report_in_chromium(private_run) -> None:
    from playwright.sync_api import sync_playwright

    report = private_run.report()
    epsilon = report["privacy"]["epsilon"]
    page_file = private_run.out / "report.html"
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_file.as_uri(), wait_until="load")

            shown = page.locator("#epsilon").inner_text().strip()
            assert shown == fmt_epsilon(epsilon)
            # Never understated, and within the display's rounding.
            assert epsilon <= float(shown) < epsilon + 0.001 + 1e-12

            adjacency = page.locator("#adjacency")
            assert adjacency.get_attribute("data-adjacency") == "add_remove"
            assert "adding or removing one record" in adjacency.inner_text()

            metrics = page.locator("#metrics")
            assert metrics.is_visible()
            text = metrics.inner_text()
            assert f"{report['metrics']['accuracy'] * 100:.2f}%" in text
            assert "n/a" in text  # FID without Inception weights

            grid = page.locator("#sample-grid")
            grid.scroll_into_view_if_needed()
            loaded = page.evaluate(
                "() => { const i = document.getElementById('sample-grid');"
                " return [i.complete, i.naturalWidth, i.naturalHeight]; }"
            )
            assert loaded[0] and loaded[1] > 0 and loaded[2] > 0
        finally:
            browser.close()
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
