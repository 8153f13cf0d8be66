"""HTML report: self-contained, escaped, and showing the guarantee the JSON states."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tdpdm.report.html import (
    fmt_delta,
    fmt_epsilon,
    fmt_metric,
    fmt_seconds,
    render_report_html,
    write_report_html,
)


class _Page(HTMLParser):
    """Collects tags, attributes, the text of each element id and table rows per table id."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text_by_id: dict[str, str] = {}
        self.rows_by_table: dict[str, int] = {}
        self._open: list[tuple[str, str | None]] = []
        self._table: list[str] = []
        self._in_tbody = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag in ("img", "meta", "br", "input"):
            if a.get("id"):
                self.text_by_id[a["id"]] = ""
            return
        self._open.append((tag, a.get("id")))
        if a.get("id"):
            self.text_by_id.setdefault(a["id"], "")
        if tag == "table":
            self._table.append(a.get("id") or "")
        elif tag == "tbody":
            self._in_tbody = True
        elif tag == "tr" and self._in_tbody and self._table:
            self.rows_by_table[self._table[-1]] = self.rows_by_table.get(self._table[-1], 0) + 1

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            t, _ = self._open.pop()
            if t == tag:
                break
        if tag == "table":
            self._table.pop()
        elif tag == "tbody":
            self._in_tbody = False

    def handle_data(self, data: str) -> None:
        for _, ident in self._open:
            if ident:
                self.text_by_id[ident] += data


def _parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


def _squash(text: str) -> str:
    return " ".join(text.split())


def test_formatters() -> None:
    assert fmt_epsilon(9.98712) == "9.988"
    assert fmt_epsilon(1.83) == "1.830"
    assert fmt_epsilon(1.8301) == "1.831"  # rounded up, never down
    assert fmt_epsilon(10) == "10.000"
    assert fmt_delta(1e-5) == "1e-5"
    assert fmt_delta(2.5e-6) == "2.5e-6"
    assert fmt_metric("accuracy", 0.9712) == "97.12%"
    assert fmt_metric("fid", None) == "n/a"
    assert fmt_seconds(2714.3) == "2,714.3 s (45 min 14 s)"
    assert fmt_seconds(7300) == "7,300.0 s (2 h 1 min)"


def test_page_shows_the_guarantee(good_report: dict[str, Any], grid_png: bytes) -> None:
    page = _parse(render_report_html(good_report, grid_png=grid_png))
    t = {k: _squash(v) for k, v in page.text_by_id.items()}
    assert t["epsilon"] == "9.988"
    assert t["delta"] == "1e-5"
    assert "adding or removing one record" in t["adjacency"]
    assert "prv (upper bound)" in t["accountant"]
    assert "learns almost nothing" in t["statement"]
    assert "The evaluation classifier." in t["not-covered"]
    assert "9.988" in t["guarantee"] and "20.000" in t["budget"]
    assert page.rows_by_table["events"] == 3
    assert "DP-SGD (Poisson-subsampled Gaussian)" in t["events"]
    assert "clip_norm=1" in t["events"]
    assert (
        "custodian only" in t["metrics-note"] and "not differentially private" in t["metrics-note"]
    )
    assert "97.12%" in t["metrics"] and "n/a" in t["metrics"] and "9.12" in t["metrics"]
    assert page.rows_by_table["metrics"] == 5  # four required metrics plus one extra
    assert "45 min 14 s" in t["wall-time"]
    assert "Test CPU" in t["hardware"]


def test_replace_one_is_stated_in_words(good_report: dict[str, Any], grid_png: bytes) -> None:
    good_report["mode"] = "released"
    good_report["privacy"]["adjacency"] = "replace_one"
    page = _parse(render_report_html(good_report, grid_png=grid_png))
    assert "replacing one record's value (the number of records is public)" in _squash(
        page.text_by_id["adjacency"]
    )


def test_self_contained_no_script_no_external(good_report: dict[str, Any], grid_png: bytes) -> None:
    html = render_report_html(good_report, grid_png=grid_png, extra_images={"Plot A": grid_png})
    page = _parse(html)
    names = [tag for tag, _ in page.tags]
    assert "script" not in names and "link" not in names and "iframe" not in names
    srcs = [a["src"] for tag, a in page.tags if "src" in a]
    assert len(srcs) == 2 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert base64.b64decode(srcs[0].split(",", 1)[1]) == grid_png
    assert not re.search(r"https?://", html)
    csp = [a for tag, a in page.tags if tag == "meta" and a.get("http-equiv")]
    assert "default-src 'none'" in (csp[0]["content"] or "")
    grid = next(a for tag, a in page.tags if a.get("id") == "sample-grid")
    assert grid["alt"] and "one row per class" in grid["alt"]
    assert "figure-plot-a" in page.text_by_id
    config = next(a for tag, a in page.tags if tag == "details")
    assert "open" not in config


def test_malicious_config_is_escaped(good_report: dict[str, Any], grid_png: bytes) -> None:
    evil = '</pre><script>alert("x")</script><img src=x onerror=alert(1)>'
    good_report["config"]["name"] = evil
    good_report["run_id"] = evil
    good_report["privacy"]["events"][0]["stage"] = evil
    good_report["privacy"]["statement"] = evil
    html = render_report_html(good_report, grid_png=grid_png)
    assert "<script" not in html and "&lt;script&gt;" in html
    page = _parse(html)
    assert [tag for tag, _ in page.tags].count("img") == 1
    assert not [k for _, a in page.tags for k in a if k.startswith("on")]
    assert evil in _squash(page.text_by_id["statement"])
    assert page.rows_by_table["events"] == 3
    assert (
        evil in page.text_by_id["config"] or evil.replace('"', '\\"') in page.text_by_id["config"]
    )


def test_invalid_report_or_image_refused(good_report: dict[str, Any], grid_png: bytes) -> None:
    with pytest.raises(ValueError, match="PNG"):
        render_report_html(good_report, grid_png=b"GIF89a...")
    good_report["privacy"]["delta"] = 1.5
    with pytest.raises(ValueError, match=r"privacy\.delta"):
        render_report_html(good_report, grid_png=grid_png)


def test_write_report_html(tmp_path: Path, good_report: dict[str, Any], grid_png: bytes) -> None:
    path = tmp_path / "report.html"
    write_report_html(good_report, path, grid_png)
    assert path.read_text(encoding="utf-8") == render_report_html(good_report, grid_png=grid_png)
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]
