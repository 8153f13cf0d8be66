"""The end-to-end run's report.html (release and custodian parts) in a real headless Chromium."""

from __future__ import annotations

import pytest
from tdpdm_test_support import CHROMIUM, CHROMIUM_ARGS, needs_chromium

from tdpdm.report.html import fmt_epsilon

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.timeout(900),
    needs_chromium,
]


def test_end_to_end_report_in_chromium(private_run) -> None:
    from playwright.sync_api import sync_playwright

    report = private_run.report()
    custodian = private_run.custodian_report()
    epsilon = report["privacy"]["epsilon"]
    accuracy = f"{custodian['metrics']['accuracy'] * 100:.2f}%"
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.on("request", lambda r: requests.append(r.url))
            page.goto((private_run.release / "report.html").as_uri(), wait_until="load")

            shown = page.locator("#epsilon").inner_text().strip()
            assert shown == fmt_epsilon(epsilon)
            # Never understated, and within the display's rounding.
            assert epsilon <= float(shown) < epsilon + 0.001 + 1e-12

            adjacency = page.locator("#adjacency")
            assert adjacency.get_attribute("data-adjacency") == "add_remove"
            assert "adding or removing one record" in adjacency.inner_text()

            # The published page shows no figure read from real data.
            metrics = page.locator("#metrics")
            assert metrics.is_visible()
            text = metrics.inner_text()
            assert accuracy not in text
            assert text.count("n/a") == len(report["metrics"]) == 4

            grid = page.locator("#sample-grid")
            grid.scroll_into_view_if_needed()
            loaded = page.evaluate(
                "() => { const i = document.getElementById('sample-grid');"
                " return [i.complete, i.naturalWidth, i.naturalHeight]; }"
            )
            assert loaded[0] and loaded[1] > 0 and loaded[2] > 0

            # The custodian's page (never published) shows the opted-in metrics.
            page.goto((private_run.custodian / "report.html").as_uri(), wait_until="load")
            assert page.locator("#epsilon").inner_text().strip() == shown
            text = page.locator("#metrics").inner_text()
            assert accuracy in text
            assert "n/a" in text  # FID without Inception weights
        finally:
            browser.close()
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
