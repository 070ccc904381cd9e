"""DiffTumor's engine, trained for benchmarks.synth: two synthesis bundles, one per half of the
sarcoma scans (the halves benchmarks.synth cross-fits its measured looks on: even and odd places
in the sorted case list), so that every scan's synthetic tumour comes from a model that never saw
that scan's real one.

    .venv/bin/python -m benchmarks.synth_diffusion [--preset tiny] [--steps 1000] [--crops 8]
    .venv-bench/bin/python -m benchmarks.synth --diffusion-model \\
        benchmarks/work/synth_diffusion/half0/diffusion/bundle \\
        benchmarks/work/synth_diffusion/half1/diffusion/bundle

Per half: `tumorfm synth train` on a raw dataset of that half's scans (links to the originals),
--stage autoencoder then --stage diffusion, both for --steps. A half already trained with the
same settings is kept. Results (commands, times, peak memory, settings):
benchmarks/results/synth_diffusion.json.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .common import BIN, DATA, RESULTS, WORK, case_ids, parser_for
from .measure import machine, run

DATASET = "Dataset101_SarcomaCT"
TUMOUR = "sarcoma"  # its label name in the dataset.json


def half_dataset(source: Path, half: int, out: Path) -> list[str]:
    """A raw dataset at `out` of the scans at even (0) or odd (1) places of `source`."""
    cases = case_ids(source)[half::2]
    for sub in ("imagesTr", "labelsTr"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for case in cases:
        for link, target in (
            (out / "imagesTr" / f"{case}_0000.nii.gz", source / "imagesTr" / f"{case}_0000.nii.gz"),
            (out / "labelsTr" / f"{case}.nii.gz", source / "labelsTr" / f"{case}.nii.gz"),
        ):
            link.unlink(missing_ok=True)
            link.symlink_to(target.resolve())
    meta = json.loads((source / "dataset.json").read_text())
    (out / "dataset.json").write_text(json.dumps({**meta, "numTraining": len(cases)}, indent=1))
    return cases


def train_half(args, half: int) -> dict:
    """Both stages on one half; a stage whose bundle exists with these settings is kept."""
    work = args.work / f"half{half}"
    cases = half_dataset(args.data / DATASET, half, work / "data")
    settings = {"preset": args.preset, "steps": args.steps, "crops": args.crops, "seed": args.seed}
    done = work / "train.json"
    if done.is_file() and json.loads(done.read_text())["settings"] == settings:
        return json.loads(done.read_text())
    shutil.rmtree(work / "autoencoder", ignore_errors=True)
    shutil.rmtree(work / "diffusion", ignore_errors=True)
    tumorfm = str(BIN / "tumorfm")
    common = ["--tumour", TUMOUR, "--steps", str(args.steps), "--crops", str(args.crops),
              "--seed", str(args.seed)]  # fmt: skip
    stages = {
        "autoencoder": [tumorfm, "synth", "train", str(work / "data"), "-o",
                        str(work / "autoencoder"), "--stage", "autoencoder",
                        "--preset", args.preset, *common],
        "diffusion": [tumorfm, "synth", "train", str(work / "data"), "-o",
                      str(work / "diffusion"), "--stage", "diffusion",
                      "--autoencoder", str(work / "autoencoder" / "bundle"), *common],
    }  # fmt: skip
    record = {"settings": settings, "cases": cases}
    for stage, command in stages.items():
        measured = run(command, dict(os.environ), work / f"{stage}.log", 6 * 3600, stage, 30.0)
        record[stage] = {"command": " ".join(command), **measured}
    record["bundle"] = str(work / "diffusion" / "bundle")
    done.write_text(json.dumps(record, indent=1))
    return record


def main() -> None:
    parser = parser_for(__spec__.name, __doc__)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--work", type=Path, default=WORK / "synth_diffusion")
    parser.add_argument("--out", type=Path, default=RESULTS / "synth_diffusion.json")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=1000, help="per stage")
    parser.add_argument("--crops", type=int, default=8, help="crops around tumours per case")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    load = os.getloadavg()
    halves = {f"half{h}": train_half(args, h) for h in (0, 1)}
    result = {
        "what": "DiffTumor's engine trained per half of the sarcoma scans, for benchmarks.synth",
        "halves": halves,
        "machine": machine(load),
    }
    args.out.write_text(json.dumps(result, indent=1))
    for name, h in halves.items():
        minutes = sum(h[s]["wall_seconds"] for s in ("autoencoder", "diffusion")) / 60
        print(f"{name}: {len(h['cases'])} scans, {minutes:.0f} min, {h['bundle']}")


if __name__ == "__main__":
    main()
