"""Does distillation give a small, fast student that keeps what the shipped model knows? (issue 20)

    .venv/bin/python -m benchmarks.distill [--seeds 0 1 2] [--student tsfm-fast] [--iterations 400]

Teacher: the shipped bundle (tsfm-real-lowres, tsfm-compact). Student: tsfm-fast, whose strided
stem runs every stage at half resolution (the teacher's per-voxel work at full resolution is what
a thinner network, tsfm-tiny, did not save). Per seed, three students of the
same preset train from scratch on the sarcoma CTs the teacher trained on (its fixed split, so its
seven held-out sarcomas stay unseen by all), with the same plan, patch, iterations and seed,
all through `tumorfm distill`: `labels` with --alpha 0 (the labels alone; the teacher is not
run), `distilled` with --alpha and --temperature, and `features`, the same with --features (the
stages' features too). Each model then segments the held-out scans
with `tumorfm predict --fast` (no mirroring; wall time and peak memory of the process tree,
benchmarks/measure.py) and `tumorfm evaluate` scores them in their own geometry (Dice, HD95);
each also segments one whole CT (lung1, 512x512x48), where the network's time outweighs the
per-scan costs (reading, resampling, writing) that the small sarcoma crops are made of.
Targets (issue 20): the distilled student keeps >= 95% of the teacher's Dice at <= 1/4 of its
prediction time, and beats the same student trained on the labels alone (paired over seeds,
benchmarks/seeds.py). The results file is written after every arm, and a run with the same
settings keeps the arms it records (a session may end part-way, and the work folder with it); a
finished arm in the work folder (one per student, budget, alpha and temperature, where the teacher
is scored once, beside its students) is kept too; an interrupted one restarts.
Results: benchmarks/results/distill.json.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

from tumorfm.model.bundle import WEIGHTS, bundle_folder, read_bundle_config

from . import seeds
from .common import BIN, DATA, add_work_and_out, parser_for, sha256
from .measure import provenance, run
from .scoring import case_scores, evaluated, predicted, stats
from .shipped_model import DATASETS, fixed_split, held_out

TEACHER = "tsfm-real-lowres"
CLASS = "soft_tissue_sarcoma"
LUNG = DATA / "cases" / "lung1_image.nrrd"  # 512x512x48 CT, ../shared/data/README.md
ARMS = ("labels", "distilled", "features")  # alpha 0; alpha > 0; alpha > 0 with --features


def score(args, bundle: Path, folder: Path, name: str, plan: list[str] = ()) -> dict:
    """Predict the held-out sarcomas with `bundle` into `folder` and score them (`plan`: the
    options that pick the bundle's sarcoma plan when it has several)."""
    split = fixed_split(args.data)
    images, labels = held_out(args.data, split, "sarcoma_ct", args.work / "held-out")
    (labels / "dataset.json").write_text(json.dumps({"labels": {"background": 0, CLASS: 1}}))
    logs, flags = folder.parent, [*plan, "--fast"]
    timing = predicted(bundle, images, folder, logs / f"{name}-predict.log", flags, what=name,
                       pss_interval=1.0)  # fmt: skip
    cases = case_scores(evaluated(folder, labels, logs / f"{name}-evaluate.log"), CLASS).values()
    whole = logs / f"{name}-lung1"  # a whole CT: where the network's time dominates
    large = predicted(bundle, LUNG, whole, logs / f"{name}-lung1.log", flags, what=name,
                      pss_interval=1.0)  # fmt: skip
    record = {
        "large_scan_seconds": large["wall_seconds"],
        "large_scan_network_seconds": large["stage_seconds"]["network"],
        "dice": stats([c["dice"] for c in cases])["mean"],
        "dice_over_cases": stats([c["dice"] for c in cases]),
        "hd95_median": stats([c["hd95"] for c in cases])["median"],
        "predict_seconds_per_scan": timing["wall_seconds"] / len(cases),
        "network_seconds_per_scan": timing["stage_seconds"]["network"] / len(cases),
        "predict_peak_mb": timing.get("peak_tree_pss_mb"),
        "parameters": _count_bundle(bundle),
    }
    (folder.parent / f"{name}-score.json").write_text(json.dumps(record, indent=1))
    return record


def _count_bundle(bundle: Path) -> int:
    """Parameters of a bundle's network, from its weights' header (no network is built)."""
    from safetensors import safe_open

    with safe_open(str(bundle / WEIGHTS), "pt") as weights:
        return sum(math.prod(weights.get_slice(k).get_shape()) for k in weights.keys())


def students_folder(args) -> Path:
    """The work folder of one setting of SAME_RUN: a finished arm there is one of these settings
    (another student or budget trains in its own folder, never reusing this one's)."""
    return args.work / "_".join(f"{k}{getattr(args, k)}" for k in SAME_RUN)


def student(args, arm: str, seed: int) -> dict:
    """Train (unless finished) and score one student."""
    out = students_folder(args) / f"seed{seed}" / arm
    scored = out.parent / f"{arm}-score.json"
    epochs = args.iterations // args.per_epoch
    log = out / "log.jsonl"
    done = log.is_file() and sum(1 for x in log.read_text().splitlines() if x.strip()) >= epochs
    if not (done and scored.is_file()):
        if not done:
            shutil.rmtree(out, ignore_errors=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            split = fixed_split(args.data)["sarcoma_ct"]  # one dataset: train and val alone
            (out.parent / "split.json").write_text(json.dumps(split, indent=1))
            alpha = 0.0 if arm == "labels" else args.alpha
            more = ["--features"] if arm == "features" else []
            command = [str(BIN / "tumorfm"), "distill", str(args.data / DATASETS["sarcoma_ct"][0]),
                       "--teacher", TEACHER, "--student", args.student, "-o", str(out),
                       "--map", f"sarcoma={CLASS}", "--alpha", str(alpha),
                       "--temperature", str(args.temperature), "--epochs", str(epochs),
                       "--iterations", str(args.per_epoch), "--seed", str(seed),
                       "--split", str(out.parent / "split.json"), *more]  # fmt: skip
            run(command, dict(os.environ), out.parent / f"{arm}.log", 6 * 3600, f"{arm} {seed}")
        score(args, out / "last", out.parent / f"{arm}-held-out", arm)
    row = json.loads(scored.read_text())
    epochs_run = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
    return {"arm": arm, **row, "train_seconds": round(sum(e["seconds"] for e in epochs_run), 1)}


TEACHER_LOSS = "T^2 BCE(softened sigmoids) + 1 - Dice(student, teacher's mask)"
SAME_RUN = ("student", "iterations", "per_epoch", "alpha", "temperature")  # settings rows need


def results(args, teacher: dict, rows: dict[int, list[dict]], load) -> dict:
    """The results file's content for the rows measured so far."""
    fields = ["dice", "hd95_median", "predict_seconds_per_scan", "predict_peak_mb", "train_seconds",
              "large_scan_seconds", "network_seconds_per_scan",
              "large_scan_network_seconds"]  # fmt: skip
    merged = seeds.merge(rows, ("arm",), fields)
    distilled = next((r for r in merged if r["arm"] == "distilled"), None)
    kept = ratio = large = network = None
    if distilled is not None and distilled["dice"]["mean"] is not None:
        kept = distilled["dice"]["mean"] / teacher["dice"]
        ratio = distilled["predict_seconds_per_scan"]["mean"] / teacher["predict_seconds_per_scan"]
        if distilled["large_scan_seconds"]["mean"] and teacher.get("large_scan_seconds"):
            large = distilled["large_scan_seconds"]["mean"] / teacher["large_scan_seconds"]
        student_network = distilled["large_scan_network_seconds"]["mean"]
        if student_network and teacher.get("large_scan_network_seconds"):
            network = student_network / teacher["large_scan_network_seconds"]
    return {
        "what": "Dice on 7 held-out real sarcomas: the shipped teacher, a student trained on "
        "labels alone and the same student distilled from the teacher",
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "complete": all(len(rows.get(seed, [])) == len(args.arms) for seed in args.seeds),
        "teacher": {
            "bundle": TEACHER,
            "preset": read_bundle_config(bundle_folder(TEACHER))["preset"],
            **teacher,
        },  # fmt: skip
        "teacher_loss": TEACHER_LOSS,
        "rows": merged,
        "per_seed": rows,
        "gain_over_labels": seeds.paired_difference(
            rows, {"arm": "distilled"}, {"arm": "labels"}, "dice"
        ),
        "features_gain": seeds.paired_difference(
            rows, {"arm": "features"}, {"arm": "distilled"}, "dice"
        )
        if "features" in args.arms
        else None,
        "dice_kept": kept,
        "time_ratio": ratio,
        "time_ratio_large_scan": large,
        "network_time_ratio_large_scan": network,
        "targets": {"dice_kept": 0.95, "time_ratio": 0.25},
        **provenance("distill", ".venv", load),
    }


def main() -> None:
    parser = parser_for(__spec__.name, __doc__)
    parser.add_argument("--data", type=Path, default=DATA)
    add_work_and_out(parser, "distill")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--student", default="tsfm-fast")
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--per-epoch", type=int, default=50)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    args = parser.parse_args()
    if not {"labels", "distilled"} <= set(args.arms):
        parser.error("--arms: the targets compare `distilled` with `labels`: keep both")
    args.work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    weights = sha256(bundle_folder(TEACHER) / WEIGHTS)  # a re-shipped teacher starts anew
    before = seeds.recorded(
        args.out, args, SAME_RUN, teacher_loss=TEACHER_LOSS, teacher_weights_sha256=weights
    )
    teacher_file = students_folder(args) / "teacher-score.json"  # timed beside these students
    teacher_file.parent.mkdir(parents=True, exist_ok=True)
    cached = json.loads(teacher_file.read_text()) if teacher_file.is_file() else None
    old = json.loads(args.out.read_text())["teacher"] if before else {}
    if cached is not None and cached.pop("sha", None) == weights:
        teacher = cached
    elif cached is None and "large_scan_network_seconds" in old:  # the recorded teacher
        teacher = {k: v for k, v in old.items() if k not in ("bundle", "preset")}
    else:  # not scored yet, or scored for other weights
        teacher = score(
            args,
            bundle_folder(TEACHER),
            args.work / "teacher-held-out",
            "teacher",
            ["--plan", "sarcoma_ct"],
        )  # fmt: skip
    teacher_file.write_text(json.dumps(teacher | {"sha": weights}, indent=1))
    # every seed and arm a former run recorded stays in the file from its first write: a run of
    # other seeds or arms, or one killed midway, loses none of them
    rows = {seed: list(by_arm.values()) for seed, by_arm in sorted(before.items())}
    for seed in args.seeds:
        kept = before.get(seed, {})
        for arm in (a for a in ARMS if a in args.arms):
            kept[arm] = kept.get(arm) or student(args, arm, seed)
            rows = dict(sorted({**rows, seed: [kept[a] for a in ARMS if a in kept]}.items()))
            result = results(args, teacher, rows, load) | {"teacher_weights_sha256": weights}
            args.out.write_text(json.dumps(result, indent=1))  # after every arm: nothing is lost
    print(f"teacher: Dice {teacher['dice']:.3f}, {teacher['predict_seconds_per_scan']:.1f} s/scan")
    for row in result["rows"]:
        d, t = row["dice"], row["predict_seconds_per_scan"]
        print(
            f"{row['arm']:>10}: Dice {d['mean']:.3f} +- {d['std'] or 0:.3f}, {t['mean']:.1f} s/scan"
        )
    print(f"kept {result['dice_kept']:.2f} of the teacher's Dice (target 0.95) at "
          f"{result['time_ratio']:.2f} of its time (target 0.25); gain over labels "
          f"{result['gain_over_labels']['mean']:+.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
