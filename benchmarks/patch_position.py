"""Where in its window does a bundle look for a tumour? One patch at a time, the tumour moved in it.

benchmarks.placement moves whole scans within the sliding-window grid; this asks the network
directly. For each scan of the shipped split, one patch of the bundle's size is cut from the
preprocessed scan (the cache training reads, zero padding as in training) so that the centre of
the tumour's bounding box sits at the patch centre plus an offset, and the network's probability
is scored inside that patch: Dice at 0.5 with the reference, and the mean probability on the
tumour. A network that learnt what a tumour looks like scores the same at every offset; one that
learnt where training patches put it (nnU-Net's rule centres a foreground sample's voxel) loses
Dice as the tumour moves off the centre. Both datasets, held-out scans and as many training scans
(`--train-cases`), each bundle of `--bundles` in turn, one thread.

    .venv/bin/python -m benchmarks.patch_position [--bundles models/tsfm-real-lowres RUN/last]

A few minutes on 2 CPUs (the lowres cache is made once, then a forward pass per scan and offset).
Results: benchmarks/results/patch_position.json.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .common import BIN, DATA, ROOT, add_work_and_out, parser_for, sha256
from .measure import provenance, run
from .shipped_model import POOL, fixed_split

# up to half the window step of 48x96x96 at overlap 0.5: as far as a sliding window's nearest
# centre can be from a tumour's (z: its 20-slice brain slabs and most sarcomas fit one window)
OFFSETS = ((0, 0, 0), (0, 0, 24), (0, 24, 0), (0, 24, 24), (0, -24, 0), (0, 0, -24), (0, -24, -24),
           (12, 0, 0))  # fmt: skip
CLASSES = {"sarcoma_ct": "soft_tissue_sarcoma", "brain_mr": "brain_tumour"}
SHIPPED = ROOT / "models" / "tsfm-real-lowres"


def patch_around(image: np.ndarray, label: np.ndarray, patch, offset) -> tuple:
    """(image patch (C, *patch), label patch) with the centre of the label's bounding box at the
    patch centre + offset; outside the scan zeros, as training pads."""
    where = np.nonzero(label)
    centre = [(int(w.min()) + int(w.max())) // 2 for w in where]
    start = [c - p // 2 - o for c, p, o in zip(centre, patch, offset)]
    pad = [(max(0, -s), max(0, s + p - n)) for s, p, n in zip(start, patch, label.shape)]
    image = np.pad(image, [(0, 0), *pad])
    label = np.pad(label, pad)
    box = tuple(slice(s + before, s + before + p) for s, (before, _), p in zip(start, pad, patch))
    return image[(slice(None), *box)], label[box]


def probe(bundle: Path, cache: Path, dataset: str, cases: list[str]) -> dict:
    """{offset: {case: {"dice", "p_tumour"}}} for one bundle on one dataset's cases."""
    import torch

    from tumorfm.eval.metrics import dice
    from tumorfm.infer.predictor import PredictOptions, Predictor

    torch.set_num_threads(1)  # beside a training, as the benchmark is meant to run
    predictor = Predictor.from_bundle(bundle, PredictOptions(plan=dataset, mirror=False))
    assert list(predictor.labels) == [CLASSES[dataset]], predictor.labels
    out = {str(list(o)): {} for o in OFFSETS}
    for case in cases:
        image = np.load(cache / dataset / case / "image.npy")
        label = np.load(cache / dataset / case / "label.npy") > 0
        for offset in OFFSETS:
            patch, truth = patch_around(image, label, predictor.patch_size, offset)
            probability = predictor.sliding_window(np.ascontiguousarray(patch))[0]  # one window
            out[str(list(offset))][case] = {
                "dice": float(dice(probability >= 0.5, truth)),
                "p_tumour": float(probability[truth].mean()),
            }
    return out


def summary(per_offset: dict) -> dict:
    """Mean Dice at the centre, over the offsets and at the worst one; what is kept off centre."""
    means = {k: float(np.mean([c["dice"] for c in v.values()])) for k, v in per_offset.items()}
    centre = means.pop(str([0, 0, 0]))
    moved = float(np.mean(list(means.values())))
    return {
        "dice_centre": centre,
        "dice_off_centre": moved,
        "dice_worst_offset": min(means.values()),
        "kept_off_centre": moved / centre if centre > 0 else None,
    }


def label(bundle: Path) -> str:
    """A shipped bundle by its name; a training run's (RUN/last) by its model, placement, seed."""
    settings = bundle.parent / "settings.json"
    if not settings.is_file():
        return bundle.name
    c = json.loads(settings.read_text())["config"]
    return f"{c['model']}, `--placement {c.get('placement', 'centred')}`, seed {c['seed']}"


def main() -> None:
    parser = parser_for(__spec__.name, __doc__)
    parser.add_argument("--bundles", type=Path, nargs="+", default=[SHIPPED])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--train-cases", type=int, default=6, help="training scans per dataset")
    add_work_and_out(parser, "patch_position")
    args = parser.parse_args()
    load_before = os.getloadavg()
    args.work.mkdir(parents=True, exist_ok=True)
    cache = args.work / "cache"
    if not (cache / "pool.json").is_file():  # the shipped bundle's preprocessing, as it trained
        command = [str(BIN / "tumorfm"), "preprocess", str(POOL), "-o", str(cache), "--config",
                   "lowres", "--patch", "48", "96", "96", "--workers", "2"]  # fmt: skip
        run(command, dict(os.environ), args.work / "preprocess.log", 3600, "preprocess")
    split = fixed_split(args.data)
    parts = {d: {"held_out": s["val"], "train": s["train"][: args.train_cases]}
             for d, s in split.items()}  # fmt: skip
    bundles = []
    for bundle in args.bundles:
        rows = {}
        plans = json.loads((bundle / "config.json").read_text())["plan"]["datasets"]
        for dataset, cases in parts.items():
            if dataset not in plans:  # a bundle trained on the sarcomas alone
                continue
            for part, names in cases.items():
                print(f"{bundle}: {dataset}, {len(names)} {part} scans", flush=True)
                per_offset = probe(bundle, cache, dataset, names)
                rows[f"{dataset}/{part}"] = {**summary(per_offset), "per_offset": per_offset}
        weights = sha256(bundle / "model.safetensors")
        bundles.append({"bundle": str(bundle), "label": label(bundle), "weights_sha256": weights,
                        "rows": rows})  # fmt: skip
    result = {
        **provenance("patch_position", ".venv", load_before),
        "settings": {"offsets": OFFSETS, "cases": parts, "threshold": 0.5},
        "bundles": bundles,
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'bundle':<40}{'rows':<24}{'centre':>8}{'off':>8}{'worst':>8}")
    for b in bundles:
        for name, r in b["rows"].items():
            print(f"{b['bundle'][-40:]:<40}{name:<24}{r['dice_centre']:>8.3f}"
                  f"{r['dice_off_centre']:>8.3f}{r['dice_worst_offset']:>8.3f}")  # fmt: skip
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
