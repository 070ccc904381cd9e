"""Tables people read: the HTML tables of the reports and the viewer, and the rows of a case's
statistics (tumorfm.infer.postprocess.statistics) that both show."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import numpy as np


def cell(value: object) -> tuple[str, bool]:
    """(escaped text, is numeric): floats to 3 decimals, NaN and None as a dash."""
    if value is None or (isinstance(value, float | np.floating) and math.isnan(value)):
        return "\u2013", True
    if isinstance(value, float | np.floating):
        return f"{float(value):.3f}", True
    return html.escape(str(value)), isinstance(value, int | np.integer)


def table_html(header: Sequence[object], rows: Sequence[Sequence[object]]) -> str:
    """A table: a header row, then cells as `cell` formats them (numbers right-aligned)."""
    parts = ["<table>"]
    parts.append(
        "<tr>" + "".join(f"<th>{html.escape(str(name))}</th>" for name in header) + "</tr>"
    )
    for row in rows:
        cells = (cell(value) for value in row)
        tds = (f'<td class="num">{t}</td>' if numeric else f"<td>{t}</td>" for t, numeric in cells)
        parts.append("<tr>" + "".join(tds) + "</tr>")
    parts.append("</table>")
    return "\n".join(parts)


STATISTICS_HEADER = (
    "class", "volume ml", "lesions", "largest lesion ml", "largest diameter mm",
    "RECIST longest axial mm", "perpendicular mm", "RECIST slice z", "mean intensity", "std",
)  # fmt: skip


def statistics_rows(stats: dict) -> list[list[object]]:
    """The per-class rows of a case's statistics (tumorfm.infer.postprocess.statistics)."""
    rows = []
    for name, row in stats.items():
        if not isinstance(row, dict):  # case, spacing
            continue
        means, stds = row.get("intensity_mean"), row.get("intensity_std")
        if isinstance(means, list):  # one per channel
            means, stds = (", ".join(f"{v:.1f}" for v in values) for values in (means, stds))
        rows.append([
            name, row.get("volume_ml"), row.get("lesions"), row.get("largest_lesion_ml"),
            row.get("largest_diameter_mm"), row.get("longest_axial_diameter_mm"),
            row.get("perpendicular_diameter_mm"), row.get("axial_slice"), means, stds,
        ])  # fmt: skip
    return rows
