"""Report layer: run report schema, sample grids, plots and the self-contained HTML page.

Bottom floor: imports only the data layer's `storage` (the one atomic write) and the shared
names of `tdpdm.choices`, so any stage can report. Plots live
in :mod:`tdpdm.report.plots` (not re-exported, to keep matplotlib out of plain imports).
"""

from tdpdm.report.grid import grid_png_bytes, render_sample_grid, save_sample_grid
from tdpdm.report.html import render_report_html, write_report_html
from tdpdm.report.schema import (
    REQUIRED_FIELDS,
    read_report_json,
    report_json_schema,
    validate_report,
    write_report_json,
)

__all__ = [
    "REQUIRED_FIELDS",
    "grid_png_bytes",
    "read_report_json",
    "render_report_html",
    "render_sample_grid",
    "report_json_schema",
    "save_sample_grid",
    "validate_report",
    "write_report_html",
    "write_report_json",
]
