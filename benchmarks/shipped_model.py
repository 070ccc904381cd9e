"""The shipped bundle, models/tsfm-real-lowres: how it is trained, scored and written.

    .venv/bin/python -m benchmarks.shipped_model train  # split, preprocess, pretrain (~100 min)
    .venv/bin/python -m benchmarks.shipped_model score  # the run's held-out scores, not shipped
    .venv/bin/python -m benchmarks.shipped_model ship   # held-out scores, models/<name>/, its card
    .venv/bin/python -m benchmarks.shipped_model calibrate  # thresholds on the training scans
    .venv/bin/python -m benchmarks.shipped_model rescore  # the shipped bundle scored again
    .venv/bin/python -m benchmarks.shipped_model card     # the model card written again

Pool: the real scans of ../shared/data alone (configs/pools/real.yaml: sarcoma CT, glioblastoma
MR). The phantom sites stay out: they would take a third of the samples, and a shipped "liver"
learnt from phantoms would be a class that fails on real CT. A fixed split keeps a fifth of each
dataset out of training: the scans copied into tests/data (so `make demo` segments scans the model
never saw) and, for the sarcomas, four more drawn with seed 0; brain scans are held out by patient
(pre and post together). Held-out scans are segmented by `tumorfm predict` with its defaults
(mirroring, overlap 0.5) and scored by `tumorfm evaluate` in their own geometry. Run from the
repository root with the product environment (.venv/bin/python); results go to
benchmarks/results/shipped_model.json and the model card.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from tumorfm.defaults import PLACEMENTS

from .common import BIN, DATA, RESULTS, ROOT, WORK, case_ids, logged_epochs, parser_for
from .measure import git_state, machine, run
from .scoring import case_scores, evaluated, predicted, stats
from .shipped_card import NAME, _fmt, card

POOL = ROOT / "configs" / "pools" / "real.yaml"
DATASETS = {  # pool name -> folder under --data, layout suffix of its images, tests/data cases
    "sarcoma_ct": ("Dataset101_SarcomaCT", "_0000", ["STS_008", "STS_019", "STS_025"]),
    "brain_mr": ("Task102_BrainTumour", "", ["btp_04", "btp_07"]),
}
SARCOMA_EXTRA = 4  # held-out sarcomas beyond tests/data's three: 7 of 36
# chosen on two short runs at equal wall time (see the model card); a CPU-sized patch
TRAIN = dict(
    model="tsfm-compact",
    patch=(48, 96, 96),
    batch=2,
    epochs=36,
    iterations=50,
    val=4,
    placement="centred",
)


def fixed_split(data: Path) -> dict:
    """{dataset: {"train": [...], "val": [...]}}: tests/data's scans held out, seeded extras."""
    split = {}
    for name, (folder, _, tests_cases) in DATASETS.items():
        ids = case_ids(data / folder)
        if name == "brain_mr":  # whole patients
            val = [c for c in ids if any(c.startswith(p + "_") for p in tests_cases)]
        else:
            rest = [c for c in ids if c not in tests_cases]
            extra = np.random.default_rng(0).permutation(rest)[:SARCOMA_EXTRA].tolist()
            val = sorted(tests_cases + extra)
        split[name] = {"train": sorted(set(ids) - set(val)), "val": sorted(val)}
    return split


def train(args) -> None:
    """Stage 1 from random weights; with --more N, N more epochs from the shipped bundle's."""
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    split = fixed_split(args.data)
    (work / "split.json").write_text(json.dumps(split, indent=1))
    tumorfm = str(BIN / "tumorfm")
    t, earlier = dict(TRAIN, placement=args.placement), []
    if args.more:  # the stages before this one, as the shipped bundle's results recorded them
        shipped = json.loads((RESULTS / "shipped_model.json").read_text())
        stage = {k: shipped[k] for k in ("train", "pretrain", "machine", "note") if k in shipped}
        earlier = shipped.get("earlier", []) + [stage]
        t["epochs"] = args.more
    commands = {
        "preprocess": [tumorfm, "preprocess", str(POOL), "-o", str(work / "cache"),
                       "--config", "lowres", "--patch", *map(str, t["patch"]), "--workers", "2"],
        "pretrain": [tumorfm, "pretrain", str(work / "cache"), "-o", str(work / "run"),
                     "--profile", "cpu", "--model", t["model"], "--patch", *map(str, t["patch"]),
                     "--batch", str(t["batch"]), "--epochs", str(t["epochs"]),
                     "--iterations", str(t["iterations"]), "--val-every", str(t["val"]),
                     "--placement", t["placement"],
                     "--split", str(work / "split.json")]
                    + (["--init-from", str(ROOT / "models" / NAME)] if args.more else []),
    }  # fmt: skip
    measured = {what: {"command": " ".join(command)} for what, command in commands.items()}
    if args.resume:  # a run a session's end stopped: on from its last epoch, as it started
        resume = [tumorfm, "pretrain", str(work / "cache"), "--resume", str(work / "run")]
        commands = {"pretrain": resume}
        measured["pretrain"] |= {"resumed_with": " ".join(resume),
                                 "resumed_after_seconds": _epoch_seconds(work)}  # fmt: skip
    for what, command in commands.items():
        measured[what] |= run(command, dict(os.environ), work / f"{what}.log", 4 * 3600, what, 30.0)
    pretrain = measured["pretrain"]
    pretrain["epoch_seconds"] = _epoch_seconds(work)
    if args.resume:  # the card adds up wall_seconds: count the stopped part by its epochs
        pretrain["wall_seconds"] = round(
            pretrain["wall_seconds"] + pretrain["resumed_after_seconds"], 1
        )
    info = {"split": split, "train": t, **measured, "earlier": earlier}
    (work / "train.json").write_text(json.dumps(info))


def _epoch_seconds(work: Path) -> float:
    """The training seconds of the epochs run/log.jsonl records (validation not counted)."""
    epochs = logged_epochs(work / "run") if (work / "run" / "log.jsonl").is_file() else []
    return round(sum(e.get("seconds", 0) for e in epochs), 1)


def held_out(data: Path, split: dict, name: str, out: Path, part: str = "val") -> tuple[Path, Path]:
    """images/<case>_0000.nii.gz and labels/<case>.nii.gz of a dataset's held-out scans (or, with
    `part="train"`, its training scans)."""
    folder, suffix, _ = DATASETS[name]
    images, labels = out / "images", out / "labels"
    for sub in (images, labels):
        sub.mkdir(parents=True, exist_ok=True)
    for case in split[name][part]:
        for link, source in (
            (images / f"{case}_0000.nii.gz", data / folder / "imagesTr" / f"{case}{suffix}.nii.gz"),
            (labels / f"{case}.nii.gz", data / folder / "labelsTr" / f"{case}.nii.gz"),
        ):
            link.unlink(missing_ok=True)
            link.symlink_to(source.resolve())
    return images, labels


def score(args, bundle: Path, split: dict) -> dict:
    """Predict every dataset's held-out scans with `bundle` and score them."""
    work = args.work
    scores = {}
    for name in DATASETS:
        images, labels = held_out(args.data, split, name, work / "held-out" / name)
        predictions, flags = work / "predictions" / name, ["--plan", name]
        flags += [] if args.mirror else ["--no-mirror"]
        log = work / f"predict-{name}.log"
        timing = predicted(bundle, images, predictions, log, flags, pss_interval=1.0)
        # the truth's label 1 is the class the prediction names (whose value is its class id in
        # the bundle): say so, so that evaluate matches by name, as a user's dataset.json would
        cls = name_the_truth(predictions, labels)
        cases = case_scores(evaluated(predictions, labels, work / f"evaluate-{name}.log"), cls)
        scores[name] = {
            "class": cls,
            "cases": len(cases),
            "held_out": split[name]["val"],
            **{m: stats([c[m] for c in cases.values()]) for m in ("dice", "hd95", "nsd")},
            "per_case_dice": {case: c["dice"] for case, c in cases.items()},
            **volumes(cases),
            "mirror": args.mirror,
            "predict_seconds": timing["wall_seconds"],
            "predict_peak_mb": timing.get("peak_tree_pss_mb"),
        }
    return scores


def name_the_truth(predictions: Path, labels: Path) -> str:
    """The predicted class. The truth's label 1 is that class (whose value in the prediction is
    its class id in the bundle): say so in labels/dataset.json, as a user's dataset.json would,
    so that evaluate and calibrate pair the two by name."""
    names = json.loads((predictions / "dataset.json").read_text())["labels"]
    (cls,) = [n for n in names if n != "background"]
    (labels / "dataset.json").write_text(json.dumps({"labels": {"background": 0, cls: 1}}))
    return cls


def volumes(cases: dict) -> dict:
    """Predicted and reference volume (ml) of each scan and their ratio over scans: a clinician
    reads the volume `predict --statistics` gives, so a model that over-segments must say so."""
    ratios = [c["pred_ml"] / c["gt_ml"] for c in cases.values() if c["gt_ml"] > 0]
    return {
        "volume_ratio": stats(ratios),
        "per_case_ml": {case: [c["pred_ml"], c["gt_ml"]] for case, c in cases.items()},
    }


def ship(args) -> None:
    from tumorfm.model.bundle import models_folder
    from tumorfm.model.shipped import export_bundle

    info = json.loads((args.work / "train.json").read_text())
    bundle = args.work / "run" / "last"
    scores = score(args, bundle, info["split"])
    config = json.loads((bundle / "config.json").read_text())
    import torch

    from tumorfm.model.network import TSFM, TSFMConfig

    with torch.device("meta"):
        info["parameters"] = sum(
            p.numel() for p in TSFM(TSFMConfig.from_dict(config["model"])).parameters()
        )
    info["machine"] = machine(os.getloadavg())
    target = models_folder() / NAME
    extra = {"training": {"split": info["split"], "settings": info["train"]}, "held_out": scores}
    export_bundle(bundle, target, half=True, extra=extra)
    write_scores(info, scores, target)


def score_run(args) -> None:
    """The run in --work scored on the held-out scans as `ship` scores, beside the shipped
    bundle's scores at 0.5 (a new run has no thresholds yet); nothing is shipped."""
    info = json.loads((args.work / "train.json").read_text())
    scores = score(args, args.work / "run" / "last", info["split"])
    (args.work / "scores.json").write_text(json.dumps(scores, indent=1))
    shipped = json.loads((RESULTS / "shipped_model.json").read_text())
    before = shipped.get("scores_at_0.5", shipped["scores"])
    for name, s in scores.items():
        now, was = (f"Dice {_fmt(r['dice'], 3)}, volume ratio {r['volume_ratio']['median']:.2f}x"
                    for r in (s, before[name]))  # fmt: skip
        print(f"{name}: {now} (shipped at 0.5: {was})")
    print(f"wrote {args.work / 'scores.json'}")


def rescore(args) -> None:
    """Score the bundle in models/ as shipped with today's `predict` (no training run needed),
    so that its card and results follow a change in prediction; the weights stay as they are."""
    from tumorfm.model.bundle import models_folder

    info = json.loads((RESULTS / "shipped_model.json").read_text())
    for key in ("name", "scores", "megabytes", "git"):
        info.pop(key, None)
    target = models_folder() / NAME
    scores = score(args, target, info["split"])
    info["scored_on"] = machine(os.getloadavg())  # info["machine"]: where it was trained
    config = json.loads((target / "config.json").read_text())
    config["extra"]["held_out"] = scores
    (target / "config.json").write_text(json.dumps(config, indent=2))
    write_scores(info, scores, target)


def calibrate(args) -> None:
    """Each class's decision threshold, chosen by `tumorfm model calibrate` on the bundle's own
    training scans (predicted as the held-out scans are) and stored in models/<name>; then the
    held-out scans are scored again with it (`rescore`). The scores at 0.5 are kept beside."""
    from tumorfm.model.bundle import models_folder

    info = json.loads((RESULTS / "shipped_model.json").read_text())
    target = models_folder() / NAME
    if "calibration" not in info:  # scored at 0.5 so far: what the thresholds are measured against
        info["scores_at_0.5"] = info["scores"]
    info["calibration"] = {}
    for name in DATASETS:
        images, labels = held_out(args.data, info["split"], name,
                                  args.work / "training-scans" / name, part="train")  # fmt: skip
        predictions = args.work / "calibration" / name
        flags = ["--plan", name, "--save-probabilities"] + ([] if args.mirror else ["--no-mirror"])
        log = args.work / f"calibrate-{name}.log"
        timing = predicted(target, images, predictions, log, flags)
        cls = name_the_truth(predictions, labels)
        command = [str(BIN / "tumorfm"), "model", "calibrate", str(predictions), str(labels)]
        run(command, dict(os.environ), log, 3600, f"calibrate ({name})")
        record = json.loads((predictions / "calibration.json").read_text())["classes"][cls]
        info["calibration"][name] = {
            "class": cls, **record, "command": " ".join(command),
            "predict_seconds": timing["wall_seconds"], "mirror": args.mirror,
        }  # fmt: skip
        print(f"{name}: {cls} threshold {record['threshold']} (training mean Dice "
              f"{record['mean_dice_at_0.5']:.3f} at 0.5, {record['mean_dice']:.3f})")  # fmt: skip
    (RESULTS / "shipped_model.json").write_text(json.dumps(info, indent=1))
    rescore(args)


def write_card(args) -> None:
    """The model card written again from benchmarks/results (a change of the card's text or of
    a result it cites, such as benchmarks.placement's); nothing is predicted."""
    from tumorfm.model.bundle import models_folder

    info = json.loads((RESULTS / "shipped_model.json").read_text())
    target = models_folder() / NAME
    write_model_card(info, info["scores"], target)
    print(f"wrote {target / 'MODEL_CARD.md'}")


def write_model_card(info: dict, scores: dict, target: Path) -> float:
    """MODEL_CARD.md in `target`; returns the weights' size in MB, which the card states."""
    size = (target / "model.safetensors").stat().st_size / 1e6
    (target / "MODEL_CARD.md").write_text(card(info, scores, size))
    return size


def write_scores(info: dict, scores: dict, target: Path) -> None:
    """The model card and benchmarks/results/shipped_model.json."""
    size = write_model_card(info, scores, target)
    results = RESULTS / "shipped_model.json"
    results.write_text(
        json.dumps(
            {"name": NAME, **info, "scores": scores, "megabytes": size, "git": git_state()},
            indent=1,
        )  # fmt: skip
    )
    for name, s in scores.items():
        print(f"{name}: Dice {_fmt(s['dice'], 3)} over {s['cases']} held-out scans")
    print(f"wrote {target} ({size:.1f} MB) and {results}")


def main() -> None:
    parser = parser_for(__spec__.name, __doc__)
    parser.add_argument("step", choices=("train", "score", "ship", "calibrate", "rescore", "card"))
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--work", type=Path, default=WORK / "shipped")
    parser.add_argument(
        "--more",
        type=int,
        default=0,
        metavar="EPOCHS",
        help="train: continue the shipped bundle for this many epochs",
    )
    parser.add_argument("--resume", action="store_true",
                        help="train: continue the run a session's end stopped")  # fmt: skip
    parser.add_argument("--placement", choices=PLACEMENTS, default=TRAIN["placement"],
                        help="train: where small cases and foreground sit in a patch")  # fmt: skip
    parser.add_argument("--no-mirror", dest="mirror", action="store_false",
                        help="ship: predict without mirroring (a quick check)")  # fmt: skip
    args = parser.parse_args()
    steps = {"train": train, "score": score_run, "ship": ship, "calibrate": calibrate,
             "rescore": rescore, "card": write_card}  # fmt: skip
    steps[args.step](args)


if __name__ == "__main__":
    main()
