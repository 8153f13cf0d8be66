"""The written report.html in a real headless Chromium: what a reader actually sees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tdpdm_test_support import CHROMIUM, CHROMIUM_ARGS, needs_chromium

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(120),
    needs_chromium,
]


def test_report_renders_in_chromium(written_report: Path, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    report = json.loads((written_report.parent / "report.json").read_text())
    requests: list[str] = []
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.on("request", lambda r: requests.append(r.url))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(written_report.as_uri(), wait_until="load")

            assert page.locator("#epsilon").inner_text() == "9.988"
            assert page.locator("#delta").inner_text() == "1e-5"
            assert "adding or removing one record" in page.locator("#adjacency").inner_text()
            assert page.locator("#guarantee").is_visible()
            rows = page.locator("#events tbody tr")
            assert rows.count() == len(report["privacy"]["events"])
            assert "encoder" in rows.nth(0).inner_text()
            metrics = page.locator("#metrics").inner_text()
            assert "97.12%" in metrics and "9.12" in metrics and "n/a" in metrics
            assert page.locator("#metrics-note").is_visible()
            assert "custodian only" in page.locator("#metrics-note").inner_text()

            grid = page.locator("#sample-grid")
            grid.scroll_into_view_if_needed()
            assert grid.is_visible()
            size = page.evaluate(
                "() => { const i = document.getElementById('sample-grid');"
                " return [i.complete, i.naturalWidth, i.naturalHeight]; }"
            )
            assert size[0] and size[1] > 560 and size[2] == 560
            box = grid.bounding_box()
            assert box is not None and box["width"] > 100 and box["height"] > 100
            plot_width = page.evaluate(
                "() => document.getElementById('figure-privacy-utility').naturalWidth"
            )
            assert plot_width > 0

            assert not page.locator("#config pre").is_visible()  # collapsed
            page.locator("#config summary").click()
            assert page.locator("#config pre").is_visible()

            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()

    assert all(u.startswith(("file:", "data:")) for u in requests), requests
    assert not errors, errors
