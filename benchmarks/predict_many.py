"""A long folder run holds flat memory (issue 17): `tumorfm predict` on 10 and on 100 scans.

    .venv/bin/python -m benchmarks.predict_many [--scans 10 100]

The folders hold the same 10 real sarcoma CTs (../shared/data, the first 10 by name), the larger
one repeating them under new case names, so any growth of peak memory with the number of scans
is memory a run keeps (a leak), not a larger scan. Each run is `tumorfm predict -i FOLDER -o OUT
-m tsfm-real-lowres --plan sarcoma_ct --fast`, its peak memory polled (benchmarks/measure.py).
Target: the peak at 100 scans within 10% of the peak at 10. Results:
benchmarks/results/predict_many.json.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .common import BIN, DATA, add_work_and_out, case_ids, parser_for
from .measure import provenance, run

DISTINCT = 10  # real scans, repeated
GROWTH = 1.10  # largest acceptable peak(100) / peak(10)


def scan_folder(work: Path, count: int) -> Path:
    """`count` links to the first DISTINCT sarcoma CTs, cycled, as case_000_0000.nii.gz, ..."""
    source = DATA / "Dataset101_SarcomaCT"
    cases = case_ids(source)[:DISTINCT]
    folder = work / f"scans-{count}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for i in range(count):
        image = source / "imagesTr" / f"{cases[i % len(cases)]}_0000.nii.gz"
        (folder / f"case_{i:03d}_0000.nii.gz").symlink_to(image.resolve())
    return folder


def main() -> None:
    parser = parser_for(__spec__.name, __doc__)
    add_work_and_out(parser, "predict_many")
    parser.add_argument("--scans", type=int, nargs="+", default=[10, 100])
    args = parser.parse_args()
    load = os.getloadavg()
    rows = []
    for count in args.scans:
        scans, out = scan_folder(args.work, count), args.work / f"out-{count}"
        shutil.rmtree(out, ignore_errors=True)
        command = [str(BIN / "tumorfm"), "predict", "-i", str(scans), "-o", str(out), "-m",
                   "tsfm-real-lowres", "--plan", "sarcoma_ct", "--fast"]  # fmt: skip
        measured = run(command, dict(os.environ), args.work / f"predict-{count}.log", 6 * 3600,
                       f"predict {count} scans")  # fmt: skip
        written = len(list(out.glob("case_*.nii.gz")))
        rows.append({"scans": count, "written": written, **measured})
    first, last = rows[0], rows[-1]
    growth = last["peak_main_process_rss_mb"] / first["peak_main_process_rss_mb"]
    result = {
        "what": "peak memory of one predict run over a folder of 10 and of 100 scans",
        "settings": {k: str(v) for k, v in vars(args).items()},
        "rows": rows,
        "peak_growth": round(growth, 3),
        "target": GROWTH,
        **provenance("predict_many", ".venv", load),
    }
    args.out.write_text(json.dumps(result, indent=1))
    for row in rows:
        print(f"{row['scans']:>4} scans: peak {row['peak_main_process_rss_mb']:.0f} MB, "
              f"{row['wall_seconds']:.0f} s, {row['written']} written")  # fmt: skip
    print(f"peak growth {growth:.3f} (target <= {GROWTH})")


if __name__ == "__main__":
    main()
