"""Does a model know what a tumour looks like, or where in its window one sits? Patch placement.

The sarcoma CTs are cropped around their tumour, and at the lowres spacing half of them are
smaller than the 48x96x96 patch in-plane. nnU-Net's sampling centres such a case in the patch (and
a foreground sample centres its voxel), so the tumour sits in the same place in almost every
patch, and so it does in the held-out scans. A network can then score well by position. This
benchmark moves each held-out scan within the sliding-window grid (zero padding on one side: the
value training pads with) and scores it again: a model that learnt the tumour keeps its Dice.

Arms: the shipped bundle (models/tsfm-real-lowres, trained with nnU-Net's rule, at its calibrated
threshold), and per seed two tsfm-tiny runs trained side by side for the same iterations on the
shipped split's sarcomas, one thread each, one with `--placement centred` (nnU-Net's rule) and one
with `--placement anywhere` (a foreground voxel anywhere in the patch, which may hang out of the
case by half its size), scored at 0.5 without mirroring. Per arm and shift: the mean Dice over
the 7 held-out scans, and how far the masks agree with the unshifted one (Dice between the two).

    .venv/bin/python -m benchmarks.placement [--seeds 0 1 2] [--epochs 8] [--iterations 50]

About 15 minutes a seed on 2 CPUs (two runs of 400 iterations side by side, then 2 x 7 x 6
predictions). A seed's arms a former run of the same settings trained are kept (`--fresh` trains
them again); the shipped bundle is scored on every run. Mean and spread are over seeds (the seed
picks the initialisation and the draws of cases; the split is the shipped one).
Results: benchmarks/results/placement.json.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import yaml

from .common import BIN, DATA, ROOT, add_work_and_out, parser_for, sha256
from .measure import provenance, run
from .scoring import stats
from .seeds import beats_spread, over_seeds
from .shipped_model import DATASETS, fixed_split

SHIFTS = ((0, 0, 0), (0, 0, 24), (0, 24, 24), (0, 0, 48), (16, 0, 0), (0, -24, 0))  # z y x voxels
ARMS = ("centred", "anywhere")
PATCH = ["48", "96", "96"]
METRICS = ("dice_unshifted", "dice_shifted_mean", "dice_worst_shift", "agreement_shifted_mean")
SHIPPED = ROOT / "models" / "tsfm-real-lowres"


def prepare(args, work: Path) -> None:
    """The sarcomas alone, preprocessed at the lowres plan, with the shipped split."""
    folder = DATASETS["sarcoma_ct"][0]
    pool = {"name": "sarcoma", "datasets": [{"name": "sarcoma_ct", "path": str(args.data / folder),
                                             "labels": {1: "soft_tissue_sarcoma"}}]}  # fmt: skip
    (work / "pool.yaml").write_text(yaml.safe_dump(pool))
    split = {"sarcoma_ct": fixed_split(args.data)["sarcoma_ct"]}
    (work / "split.json").write_text(json.dumps(split, indent=1))
    preprocess = [
        str(BIN / "tumorfm"),
        "preprocess",
        str(work / "pool.yaml"),
        "-o",
        str(work / "cache"),
        "--config",
        "lowres",
        "--patch",
        *PATCH,
        "--workers",
        "2",
    ]
    run(preprocess, dict(os.environ), work / "preprocess.log", 3600, "preprocess")


def train_arms(args, work: Path, seed: int) -> dict:
    """Both arms of one seed side by side, a thread each, into work/seed<S>/<arm>."""
    one_thread = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    runs = work / f"seed{seed}"
    runs.mkdir(parents=True, exist_ok=True)

    def train(arm: str) -> dict:
        shutil.rmtree(runs / arm, ignore_errors=True)  # not kept: stale, or `--fresh` asked
        command = [str(BIN / "tumorfm"), "pretrain", str(work / "cache"), "-o", str(runs / arm),
                   "--profile", "cpu", "--model", "tsfm-tiny", "--patch", *PATCH, "--batch", "2",
                   "--epochs", str(args.epochs), "--iterations", str(args.iterations),
                   "--val-every", str(args.epochs), "--workers", "1", "--split",
                   str(work / "split.json"), "--placement", arm, "--seed", str(seed)]  # fmt: skip
        log = runs / f"{arm}.log"
        return {"command": " ".join(command), **run(command, one_thread, log, 4 * 3600, arm, 30.0)}

    with ThreadPoolExecutor(len(ARMS)) as pool_of_two:
        return dict(zip(ARMS, pool_of_two.map(train, ARMS)))


def scores_over_shifts(bundle: Path, data: Path, cases: list[str]) -> dict:
    """{shift: {"dice": {case: Dice}, "agreement": {case: Dice with the unshifted mask}}}."""
    from tumorfm.data.io import read_volume
    from tumorfm.eval.metrics import dice
    from tumorfm.infer.predictor import PredictOptions, Predictor

    predictor = Predictor.from_bundle(bundle, PredictOptions(plan="sarcoma_ct", mirror=False))
    folder, suffix, _ = DATASETS["sarcoma_ct"]
    out = {str(list(s)): {"dice": {}, "agreement": {}} for s in SHIFTS}
    for case in cases:
        scan = read_volume(data / folder / "imagesTr" / f"{case}{suffix}.nii.gz")
        truth = read_volume(data / folder / "labelsTr" / f"{case}.nii.gz").array > 0
        image, grid = predictor.prepare(scan.array[None].astype(np.float32), case,
                                        scan.geometry.spacing_zyx)  # fmt: skip
        unshifted = None
        for shift in SHIFTS:
            widths = [(0, 0)] + [(s, 0) if s >= 0 else (0, -s) for s in shift]
            back = tuple(slice(a, a + n) for (a, _), n in zip(widths[1:], image.shape[1:]))
            probabilities = predictor.sliding_window(np.pad(image, widths))[(slice(None), *back)]
            mask = predictor.restore(probabilities, grid)[0] > 0
            unshifted = mask if unshifted is None else unshifted
            row = out[str(list(shift))]
            row["dice"][case] = float(dice(mask, truth))
            row["agreement"][case] = float(dice(mask, unshifted))
    return out


def summary(per_shift: dict) -> dict:
    """Mean Dice per shift, over the shifts, the worst shift; agreement with the unshifted."""
    means = {k: stats(list(v["dice"].values()))["mean"] for k, v in per_shift.items()}
    moved = [k for k in per_shift if k != str([0, 0, 0])]
    return {
        "dice_per_shift": means,
        "dice_unshifted": means[str([0, 0, 0])],
        "dice_shifted_mean": float(np.mean([means[k] for k in moved])),
        "dice_worst_shift": min(means.values()),
        "agreement_shifted_mean": float(
            np.mean([stats(list(per_shift[k]["agreement"].values()))["mean"] for k in moved])
        ),
    }


def former_seeds(args) -> dict:
    """{seed: record} a former run of these settings measured, whose runs are still there:
    scoring again (a new shipped bundle) or adding a seed trains only what is missing."""
    if args.fresh or not args.out.is_file():
        return {}
    former = json.loads(args.out.read_text())
    keys = ("epochs", "iterations")
    if any(former["settings"].get(k) != getattr(args, k) for k in keys):
        return {}
    return {
        int(seed): record
        for seed, record in former.get("per_seed", {}).items()
        if all((args.work / f"seed{seed}" / arm / "last" / "config.json").is_file() for arm in ARMS)
    }


def scored(bundle: Path, args, cases: list[str], name: str) -> dict:
    print(f"scoring {name} over {len(SHIFTS)} placements of {len(cases)} scans", flush=True)
    per_shift = scores_over_shifts(bundle, args.data, cases)
    weights = sha256(bundle / "model.safetensors")  # a re-shipped bundle makes this row stale
    return {"bundle": str(bundle), "weights_sha256": weights, **summary(per_shift),
            "per_shift": per_shift}  # fmt: skip


def paired(arms_per_seed: dict, metric: str) -> dict:
    """anywhere - centred, seed by seed (same seed: same initialisation and draws of cases)."""
    differences = {
        s: a["anywhere"][metric] - a["centred"][metric] for s, a in arms_per_seed.items()
    }
    result = over_seeds(differences)
    return result | {"beats_spread": beats_spread(result)}


def main() -> None:
    parser = parser_for(__spec__.name, __doc__)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=50, help="per epoch")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fresh", action="store_true", help="train every arm again")
    add_work_and_out(parser, "placement")
    args = parser.parse_args()
    load_before = os.getloadavg()
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    cases = fixed_split(args.data)["sarcoma_ct"]["val"]
    per_seed = former_seeds(args)

    def write() -> None:  # after every seed: a session may end at any point
        arms = {s: r["arms"] for s, r in per_seed.items()}
        result = {
            **provenance("placement", ".venv", load_before),
            "settings": {
                "epochs": args.epochs,
                "iterations": args.iterations,
                "seeds": sorted(per_seed),
                "model": "tsfm-tiny",
                "patch": PATCH,
                "shifts": SHIFTS,
                "held_out": cases,
            },
            "shipped": shipped,
            "per_seed": per_seed,
            "over_seeds": {
                arm: {m: over_seeds({s: a[arm][m] for s, a in arms.items()}) for m in METRICS}
                for arm in ARMS
            },
            "anywhere_minus_centred": {m: paired(arms, m) for m in METRICS},
            "session_seconds": round(time.perf_counter() - started, 1),
        }
        args.out.write_text(json.dumps(result, indent=1) + "\n")

    shipped = scored(SHIPPED, args, cases, "the shipped bundle")
    for seed in args.seeds:
        if seed in per_seed:
            print(f"seed {seed}: both arms trained by a former run of these settings, kept")
            continue
        if not (args.work / "cache" / "pool.json").is_file():
            prepare(args, args.work)
        training = train_arms(args, args.work, seed)
        runs = args.work / f"seed{seed}"
        arms = {
            arm: scored(runs / arm / "last", args, cases, f"{arm}, seed {seed}") for arm in ARMS
        }
        per_seed[seed] = {"training": training, "arms": arms}
        write()
    write()
    result = json.loads(args.out.read_text())
    print(f"{'arm':<10}" + "".join(f"{m.removeprefix('dice_'):>18}" for m in METRICS))
    for arm, o in result["over_seeds"].items():
        print(f"{arm:<10}" + "".join(f"{o[m]['mean']:>10.3f} +- {o[m]['std'] or 0:.3f}"
                                     for m in METRICS))  # fmt: skip
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
