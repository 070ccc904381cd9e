"""Promptable refinement, measured as Dice per click on held-out real sarcoma CT and glioblastoma
MR (issue 19).

    .venv/bin/python -m benchmarks.interactive [--datasets sarcoma_ct brain_mr] [--epochs 10]
                                               [--iterations 50] [--seed 0] [--arms ...]

Per dataset (the shipped bundle's plans: sarcoma_ct, brain_mr):
1. `tumorfm finetune --promptable` from the shipped bundle (tsfm-real-lowres) on the dataset's
   scans it was trained on (its fixed split, benchmarks/shipped_model.py), so its held-out scans
   (7 sarcomas, 4 glioblastoma scans of 2 patients) stay unseen; kept when it has finished,
   resumed when it stopped part-way (delete WORK/DATASET/run to train again).
2. Each held-out scan is segmented by a simulated reader (tumorfm.interactive.simulate): a first
   prompt (one click inside the tumour, or its jittered bounding box), then corrective clicks,
   each at the centre of the largest error, up to 10. Four segmenters (`--arms`) answer the
   same reader: `promptable`, the promptable bundle through tumorfm.interactive.Session (one
   window per click); `local`, the shipped automatic bundle through AutomaticSession (its
   network once per scan, each click a local threshold on its probabilities,
   tumorfm.interactive.local); `automatic`, its prediction alone, which ignores prompts (no
   mirroring); and `classic`, an interactive method a library offers, SimpleITK's
   ConfidenceConnected region growing from the positive clicks (or the box's centre, kept
   inside the box), each negative click erasing a 10 mm ball. Only `promptable` trains.
3. Dice after 0, 1, 3, 5 and 10 corrective clicks (mean and spread over the cases); per
   interactive arm the seconds to prepare a scan, of the first and of the following clicks,
   and whether each click was honoured; the process's peak memory.
Targets (issue 19): Dice >= 0.80 after 5 clicks, ahead of the classic baseline at every count,
<= 2 s per click (the targets name the sarcomas; the glioblastomas are reported the same way).
One training seed per run: `--seed` states it. Results: benchmarks/results/interactive.json, one
entry per dataset; a run of some datasets keeps the others' entries, and a run of some arms
keeps the other arms' rows (each row names its commit).
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from tumorfm.data.io import read_volume
from tumorfm.infer.predictor import PredictOptions, Predictor
from tumorfm.interactive import Session
from tumorfm.interactive.simulate import simulate_clicks

from .common import BIN, DATA, add_work_and_out, parser_for
from .measure import provenance, run
from .scoring import stats
from .shipped_model import DATASETS, fixed_split

SHIPPED = "tsfm-real-lowres"
COUNTS = (0, 1, 3, 5, 10)  # corrective clicks reported
ERASE_MM = 10.0  # a negative click erases a ball this wide from the classic baseline's mask


MAPS = {"sarcoma_ct": "sarcoma=soft_tissue_sarcoma", "brain_mr": "tumour=brain_tumour"}
CONFIGS = {"sarcoma_ct": "lowres", "brain_mr": "fullres"}  # as configs/pools/real.yaml plans them
# the glioblastoma slabs hold 20 slices after cropping: a patch of their shape, not the bundle's 48
PATCHES = {"sarcoma_ct": [], "brain_mr": ["--patch", "16", "128", "128"]}


def train(args, name: str) -> None:
    """The promptable bundle, fine-tuned from the shipped one on its own training scans of
    dataset `name`; a run stopped part-way (a session's end) is resumed exactly, a finished one
    kept."""
    work = args.work / name
    folder, out = args.data / DATASETS[name][0], work / "run"
    log = out / "log.jsonl"
    done = sum(1 for line in log.read_text().splitlines() if line) if log.is_file() else 0
    if done >= args.epochs:
        return
    if (out / "state").is_dir():
        command = [str(BIN / "tumorfm"), "pretrain", "--resume", str(out)]
        run(command, dict(os.environ), work / "resume.log", 12 * 3600, f"resume {name}")
        return
    split = fixed_split(args.data)[name]
    work.mkdir(parents=True, exist_ok=True)
    (work / "split.json").write_text(json.dumps(split))
    command = [str(BIN / "tumorfm"), "finetune", str(folder), "--from", SHIPPED, "-o", str(out),
               "--promptable", "--map", MAPS[name], "--config", CONFIGS[name], *PATCHES[name],
               "--split", str(work / "split.json"), "--epochs", str(args.epochs),
               "--iterations", str(args.iterations), "--seed", str(args.seed),
               "--workers", "2"]  # fmt: skip
    run(
        command, dict(os.environ), work / "finetune.log", 12 * 3600, f"finetune --promptable {name}"
    )


class Classic:
    """SimpleITK's ConfidenceConnected region growing from the reader's prompts."""

    def __init__(self, image: np.ndarray, spacing_zyx):
        self.image = sitk.GetImageFromArray(image.astype(np.float32))
        self.image.SetSpacing([float(s) for s in reversed(spacing_zyx)])
        self.spacing = np.asarray(spacing_zyx, float)

    def __call__(self, points, boxes, previous) -> np.ndarray:
        shape = self.image.GetSize()[::-1]
        seeds = [p.voxel for p in points if p.positive]
        seeds += [tuple(int((lo + hi) // 2) for lo, hi in zip(b.lo_zyx, b.hi_zyx)) for b in boxes]
        if not seeds:
            return np.zeros(shape, bool)
        grown = sitk.ConfidenceConnected(self.image, seedList=[s[::-1] for s in seeds],
                                         numberOfIterations=4, multiplier=2.5,
                                         initialNeighborhoodRadius=2, replaceValue=1)  # fmt: skip
        mask = sitk.GetArrayFromImage(grown).astype(bool)
        for box in boxes:
            inside = np.zeros(shape, bool)
            inside[tuple(slice(int(lo), int(hi)) for lo, hi in zip(box.lo_zyx, box.hi_zyx))] = True
            mask &= inside
        grid = np.indices(shape, sparse=True)
        for point in points:
            if not point.positive:
                distance = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, point.zyx, self.spacing))
                mask &= distance > (ERASE_MM / 2) ** 2
        return mask


def prompted(session: Session, seconds: list[float], clicks: dict[str, list[bool]]):
    """A predict_fn for simulate_clicks: the Session, told only the prompts it has not seen.
    `clicks` records, per corrective click, whether the mask then agrees with it at its voxel
    (`honoured`) and whether the reader clicked a voxel clicked before (`repeated`: the last
    click changed nothing there)."""

    def answer(points, boxes, previous) -> np.ndarray:
        if previous is None:
            session.reset()
        for box in boxes[len(session.boxes) :]:
            session.add_box(box.lo_zyx, box.hi_zyx, box.positive)
            seconds.append(session.seconds)
        for point in points[len(session.points) :]:
            earlier = {p.voxel for p in session.points}
            session.add_point(point.zyx, point.positive)
            seconds.append(session.seconds)
            if previous is not None:
                clicks["honoured"].append(bool(session.mask[point.voxel]) == point.positive)
                clicks["repeated"].append(point.voxel in earlier)
        return session.mask

    return answer


ARMS = {  # arm -> what answers the reader
    "promptable": "the promptable bundle, one window per click (Session)",
    "local": "the automatic bundle's probabilities, clicks as local thresholds (AutomaticSession)",
    "automatic": "the automatic bundle's prediction, which ignores prompts",
    "classic": "SimpleITK's ConfidenceConnected region growing from the clicks",
}
INTERACTIVE = ("promptable", "local")  # the arms whose clicks are timed and checked


def evaluate(args, name: str) -> dict:
    split = fixed_split(args.data)[name]
    folder, suffix, _ = DATASETS[name]
    folder = args.data / folder
    sessions = {}
    if "promptable" in args.arms:
        sessions["promptable"] = Session.from_bundle(
            args.work / name / "run" / "last", device="cpu"
        )
    if "local" in args.arms:
        sessions["local"] = Session.from_bundle(SHIPPED, device="cpu", plan=name)
    automatic = Predictor.from_bundle(SHIPPED, PredictOptions(name, mirror=False))
    curves = {}
    seconds = {arm: {"prepare": [], "first": [], "following": []} for arm in sessions}
    clicks = {arm: {"honoured": [], "repeated": []} for arm in sessions}
    for case in split["val"][: args.cases]:
        scan = read_volume(folder / "imagesTr" / f"{case}{suffix}.nii.gz")
        target = read_volume(folder / "labelsTr" / f"{case}.nii.gz").array > 0
        for arm, session in sessions.items():  # the local arm's network runs here, once
            started = time.perf_counter()
            session.set_image(scan.array, scan.geometry)
            seconds[arm]["prepare"].append(time.perf_counter() - started)
        fixed = automatic(scan.array, scan.geometry).label > 0
        spacing = scan.geometry.spacing_zyx
        answers = {"automatic": lambda p, b, m, fixed=fixed: fixed,
                   "classic": Classic(scan.array, spacing)}  # fmt: skip
        for first in ("point", "box"):
            for arm in (a for a in ARMS if a in args.arms):
                timed: list[float] = []
                interactive = arm in sessions
                fn = prompted(sessions[arm], timed, clicks[arm]) if interactive else answers[arm]
                rng = np.random.default_rng([args.seed, split["val"].index(case)])
                scores = simulate_clicks(fn, target, max(COUNTS), rng, (first,), spacing)
                curves.setdefault(f"{arm}, first {first}", {})[case] = scores
                if timed:
                    seconds[arm]["first"].append(timed[0])
                    seconds[arm]["following"] += timed[1:]
        print(case, {k: round(v[case][5], 3) for k, v in curves.items()}, flush=True)
    rows = [
        {
            "arm": name,
            **{f"dice_after_{n}": stats([v[n] for v in per_case.values()]) for n in COUNTS},
        }  # fmt: skip
        for name, per_case in curves.items()
    ]
    return {
        "arms": {arm: ARMS[arm] for arm in ARMS if arm in args.arms},
        "bundle_thresholds": automatic.thresholds,  # the automatic and local arms start there
        "rows": rows,
        "per_case": curves,
        "seconds_per_click": {
            arm: {k: stats(v) for k, v in timed.items()} for arm, timed in seconds.items()
        },
        "corrective_clicks": {
            arm: {
                "count": len(c["honoured"]),
                **{k: float(np.mean(v)) if v else None for k, v in c.items()},
            }
            for arm, c in clicks.items()
        },  # fmt: skip
    }


def main() -> None:
    parser = parser_for(__spec__.name, __doc__)
    parser.add_argument("--data", type=Path, default=DATA)
    add_work_and_out(parser, "interactive")
    parser.add_argument("--datasets", nargs="+", choices=list(MAPS), default=list(MAPS))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", type=int, default=None, help="the first N held-out (smoke)")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS),
                        help="segmenters (promptable: fine-tunes a bundle first)")  # fmt: skip
    args = parser.parse_args()
    entries = previous_entries(args.out)
    for name in args.datasets:
        load = os.getloadavg()
        started = time.perf_counter()
        if "promptable" in args.arms:
            train(args, name)
        entry = {
            "settings": {k: str(v) for k, v in vars(args).items()},
            **evaluate(args, name),
            "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "minutes": round((time.perf_counter() - started) / 60, 1),
            **provenance("interactive", ".venv", load),
        }
        entries[name] = with_earlier_arms(entry, entries.get(name))
        result = {
            "what": "Dice per simulated click on held-out real scans: promptable TSFM, the "
            "automatic bundle with clicks as local thresholds, the automatic bundle alone and "
            "SimpleITK region growing",
            "datasets": {k: entries[k] for k in MAPS if k in entries},
            "targets": {"dice_after_5": 0.80, "seconds_per_click": 2.0},
        }
        args.out.write_text(json.dumps(result, indent=1))
        for row in entries[name]["rows"]:
            cells = "  ".join(f"{n}: {row[f'dice_after_{n}']['mean']:.3f}" for n in COUNTS)
            print(f"{name} {row['arm']:>26}  {cells}")
        for arm, timed in entries[name]["seconds_per_click"].items():
            print(name, arm, "seconds per following click", timed["following"]["mean"])


def _arm(row_name: str) -> str:
    """'promptable, first point' -> 'promptable'."""
    return row_name.split(",")[0]


def with_earlier_arms(entry: dict, earlier: dict | None) -> dict:
    """`entry` and the arms of an `earlier` entry of the dataset that it did not measure
    (a run of some arms keeps the others), each row naming the commit it was measured at; an
    entry from before per-arm timings holds the promptable arm's."""
    for row in entry["rows"]:
        row["git_commit"] = entry.get("git_commit")
    if not earlier:
        return entry
    measured = set(entry["arms"])
    for key in ("seconds_per_click", "corrective_clicks"):
        old = earlier.get(key) or {}
        old = {"promptable": old} if old and "promptable" not in old and "local" not in old else old
        entry[key] |= {arm: v for arm, v in old.items() if arm not in measured}
    for row in earlier["rows"]:
        if _arm(row["arm"]) not in measured:
            entry["rows"].append({"git_commit": earlier.get("git_commit"), **row})
            entry["per_case"][row["arm"]] = earlier["per_case"][row["arm"]]
    if "promptable" not in measured and "promptable" in entry["seconds_per_click"]:
        entry["promptable_settings"] = earlier.get("promptable_settings") or {
            k: earlier["settings"][k] for k in ("epochs", "iterations", "seed")
        }
    return entry


def previous_entries(out: Path) -> dict[str, dict]:
    """The datasets an earlier run measured (a results file from before the glioblastomas:
    its sarcoma entry)."""
    if not out.is_file():
        return {}
    old = json.loads(out.read_text())
    if "datasets" in old:
        return old["datasets"]
    keep = ("settings", "rows", "per_case", "seconds_per_click", "peak_memory_mb", "minutes",
            "command", "machine", "git_commit", "git_dirty_tumorfm")  # fmt: skip
    return {"sarcoma_ct": {k: old[k] for k in keep if k in old}}


if __name__ == "__main__":
    main()
