"""A line chart as a standalone SVG: Dice against epochs for the transfer study.

SVG is text, so the chart needs no plotting library and diffs cleanly in a repository.
"""

from __future__ import annotations

import html
import math

from tumorfm.data.classes import class_colours

WIDTH, HEIGHT, MARGIN = 560, 360, 56


def line_chart(
    series: dict[str, list[tuple[float, float]]],
    title: str,
    x_label: str,
    y_label: str,
    references: dict[str, float] | None = None,
) -> str:
    """Lines through (x, y) points per series (NaN points skipped); `references` are dashed
    horizontal lines (e.g. nnU-Net at its full budget). y runs from 0 to 1."""
    references = references or {}
    xs = [x for points in series.values() for x, _ in points] or [0.0, 1.0]
    low, high = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1

    def px(x: float) -> float:
        return MARGIN + (x - low) / (high - low) * (WIDTH - 2 * MARGIN)

    def py(y: float) -> float:
        return HEIGHT - MARGIN - y * (HEIGHT - 2 * MARGIN)

    colours = class_colours(len(series) + len(references))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{WIDTH / 2}" y="20" text-anchor="middle" font-size="14">'
        f"{html.escape(title)}</text>",
        f'<text x="{WIDTH / 2}" y="{HEIGHT - 12}" text-anchor="middle">'
        f"{html.escape(x_label)}</text>",
        f'<text x="14" y="{HEIGHT / 2}" text-anchor="middle" '
        f'transform="rotate(-90 14 {HEIGHT / 2})">{html.escape(y_label)}</text>',
    ]
    for tick in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
        y = py(tick)
        parts.append(
            f'<line x1="{MARGIN}" y1="{y}" x2="{WIDTH - MARGIN}" y2="{y}" stroke="#ddd"/>'
            f'<text x="{MARGIN - 6}" y="{y + 4}" text-anchor="end">{tick:.1f}</text>'
        )
    for x in sorted(set(xs)):
        parts.append(
            f'<text x="{px(x)}" y="{HEIGHT - MARGIN + 16}" text-anchor="middle">{x:g}</text>'
        )
    entries = list(series.items()) + [(name, None) for name in references]
    for index, (name, points) in enumerate(entries):
        r, g, b = colours[index]
        colour = f"rgb({r},{g},{b})"
        if points is None:
            y = py(references[name])
            parts.append(
                f'<line x1="{MARGIN}" y1="{y}" x2="{WIDTH - MARGIN}" y2="{y}" '
                f'stroke="{colour}" stroke-width="2" stroke-dasharray="6 4"/>'
            )
        else:
            kept = [(px(x), py(y)) for x, y in sorted(points) if not math.isnan(y)]
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in kept)
            parts.append(
                f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>'
            )
            parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>' for x, y in kept]
        legend_y = MARGIN + 16 * index
        parts.append(
            f'<rect x="{WIDTH - MARGIN - 150}" y="{legend_y - 9}" width="12" height="12" '
            f'fill="{colour}"/><text x="{WIDTH - MARGIN - 132}" y="{legend_y + 1}">'
            f"{html.escape(name)}</text>"
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
