"""The viewer's time to first picture and the size of an exported page (issue 21).

    .venv/bin/python -m benchmarks.viewer [--repeats 3]

The scan: the real lung CT of ../shared/data/cases (512x512x48) with its label map, made
512x512x100 by following it with its mirror image along z and its first 4 slices again.
1. Served: from `tumorfm view CT LABEL --no-browser` starting to headless Chromium
   (tumorfm.viewer.browser) reporting the page drawn (its console line, written once NiiVue
   has loaded both volumes and drawn them); also the seconds until the command printed its
   address.
2. Exported: `tumorfm view CT LABEL --export page.html` (seconds, megabytes; a scan this large
   is shrunk for the page, which says so), then the page opened from disk until drawn.
Median and range over --repeats. No peer: no tool of the field ships a viewer of its outputs.
Results: benchmarks/results/viewer.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np

from tumorfm.data.io import read_volume, write_volume
from tumorfm.viewer.browser import seconds_to_drawn

from .common import BIN, DATA, add_work_and_out, parser_for
from .measure import provenance

SLICES = 100


def make_ct(work: Path) -> tuple[Path, Path]:
    """The 512x512x100 CT and label map, built from the real 512x512x48 lung case."""
    out = []
    for kind in ("image", "label"):
        volume = read_volume(DATA / "cases" / f"lung1_{kind}.nrrd")
        array = volume.array
        stacked = np.concatenate([array, array[::-1], array[:4]])[:SLICES]
        size = (*volume.geometry.size[:2], SLICES)
        geometry = type(volume.geometry)(size, *[getattr(volume.geometry, f) for f in
                                                 ("spacing", "origin", "direction")])  # fmt: skip
        out.append(write_volume(stacked, geometry, work / f"ct_{kind}.nii.gz"))
    return out[0], out[1]


def served(scan: Path, label: Path) -> dict:
    start = time.perf_counter()
    process = subprocess.Popen(
        [str(BIN / "tumorfm"), "view", str(scan), str(label), "--no-browser"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = process.stdout.readline()
        address = time.perf_counter() - start
        first = seconds_to_drawn(line.split(" at ", 1)[1].split()[0], start)
        return {"address_s": address, "first_picture_s": first}
    finally:  # SIGTERM: a process started in the background ignores SIGINT (Ctrl-C)
        process.terminate()
        process.wait(timeout=60)


def exported(scan: Path, label: Path, page: Path) -> dict:
    start = time.perf_counter()
    command = [str(BIN / "tumorfm"), "view", str(scan), str(label), "--export", str(page)]
    subprocess.run(command, check=True, capture_output=True)
    export = time.perf_counter() - start
    return {"export_s": export, "open_s": seconds_to_drawn(page.as_uri())}


def _summary(rows: list[dict], key: str) -> dict:
    values = [row[key] for row in rows]
    return {"median": round(float(np.median(values)), 2), "min": round(min(values), 2),
            "max": round(max(values), 2)}  # fmt: skip


def main() -> None:
    parser = parser_for(__spec__.name, __doc__)
    add_work_and_out(parser, "viewer")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    load = os.getloadavg()
    args.work.mkdir(parents=True, exist_ok=True)
    scan, label = make_ct(args.work)
    page = args.work / "page.html"
    rows = [{**served(scan, label), **exported(scan, label, page)} for _ in range(args.repeats)]
    text = page.read_text(encoding="utf-8")
    note = text.split("shrunk from", 1)[1].split('"', 1)[0] if "shrunk from" in text else ""
    result = {
        "what": "seconds from `tumorfm view` to a drawn page in headless Chromium, 512x512x100 CT",
        "settings": {k: str(v) for k, v in vars(args).items()},
        "shape": [512, 512, SLICES],
        "rows": rows,
        **{key: _summary(rows, key) for key in rows[0]},
        "page_mb": round(page.stat().st_size / 1e6, 1),
        "page_note": f"shrunk from{note}" if note else "",
        **provenance("viewer", ".venv", load),
    }
    args.out.write_text(json.dumps(result, indent=1))
    for key in rows[0]:
        print(f"{key}: {result[key]}")
    print(f"exported page: {result['page_mb']} MB ({result['page_note'] or 'not shrunk'})")


if __name__ == "__main__":
    main()
