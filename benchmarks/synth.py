"""Tumour synthesis measured (issue 15): how real synthetic tumours look, and what one costs.

    .venv-bench/bin/python -m benchmarks.synth [--cases N] [--seeds 0 1 2] [--diffusion-model B]

Realism. Each sarcoma CT of Dataset101_SarcomaCT holds its real sarcoma (label 1); into the same
scan's soft tissue (unlabelled voxels whose smoothed HU lies in -20..100, opened: online synthesis's
HU-window organ, tumorfm.synth.online.hu_window_organ, so outside the real tumour) each arm puts one
tumour: procedural (Hu et al.'s liver-tumour intensities), measured (procedural with the HU shift
and texture measured on the real sarcomas of the other half of the scans, tumorfm.synth.appearance:
cross-fitted, so no scan's own tumour sets its synthetic one), looks (procedural with one real
sarcoma's whole measured look per tumour, shift, texture and HU quantiles, from the other half
too), diffusion (given a bundle) and a
naive baseline (procedural's mask filled with one value, the tissue's median - 50 HU: no texture, no
noise, no soft edge). Each tumour is described by first-order and GLCM features of the HU in its
mask; a logistic regression tells real from synthetic with a cross-validated AUC (0.5: it cannot;
issue 15's target: < 0.75), per-feature standardised mean differences and Wasserstein distances show
where they differ. Volume is reported, never fed to the classifier: size is a choice of the
synthesis, not a mark of its realism. The whole synthesis is repeated per seed.

Size: the largest class the soft tissue holds (large, else medium, else small). The real sarcomas
are several cm across (tens to hundreds of ml); "mixed" would draw tiny and small tumours as
often as big ones, whose statistics differ from a big tumour's by size alone (a few hundred voxels,
most at the edge), and tiny ones span two or three 3.3 mm slices: no GLCM slice. The closest size
keeps the comparison on intensity and texture.

Speed: seconds per tumour (the engine's whole call, placement included) on the scan nearest the
median size that holds a large tumour, median of --repeats; procedural on one thread (the issue:
"under a second per tumour on one CPU core"), diffusion on torch's threads. Memory: tracemalloc's
peak in one extra untimed call (numpy arrays, not torch tensors) and the process's peak RSS (a
high-water mark) before and after. Writes benchmarks/results/synth.json.
"""

from __future__ import annotations

import json
import math
import os
import resource
import statistics
import sys
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from tumorfm.data.io import read_volume
from tumorfm.errors import TumorFMError
from tumorfm.synth.appearance import measure, ranges
from tumorfm.synth.dataset import source_of
from tumorfm.synth.online import HU_SMOOTHING_MM, hu_window_organ
from tumorfm.synth.procedural import synthesise

from .common import DATA, RESULTS, case_ids, parser_for
from .measure import provenance
from .realism import FEATURES, LEVELS, MIN_SLICE, WINDOW, features, summarise
from .report_synth import synth_lines

DATASET = "Dataset101_SarcomaCT"
SOFT_HU = (-20.0, 100.0)  # the organ: unlabelled soft tissue
SIZES = ("large", "medium", "small")  # tried in turn: the largest the tissue holds
NAIVE_SHIFT = -50.0  # the baseline's HU below the tissue's median
TARGET_AUC = 0.75


def load(folder: Path, case: str):
    """(HU as int16, label, spacing zyx mm, soft-tissue organ mask: online synthesis's own)."""
    image = read_volume(folder / "imagesTr" / f"{case}_0000.nii.gz")
    label = read_volume(folder / "labelsTr" / f"{case}.nii.gz").array
    hu, spacing = image.array, image.geometry.spacing_zyx
    return hu, label, spacing, hu_window_organ(hu, label == 0, SOFT_HU, spacing)


def case_seed(seed: int, index: int) -> int:
    """Each case its own stream, the same whichever cases run."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def naive(image: np.ndarray, organ: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The baseline: the mask filled with one value below the tissue's median, nothing else."""
    out = image.copy()
    out[mask] = round(float(np.median(image[organ])) + NAIVE_SHIFT)
    return out


def _largest(image, organ, spacing, seed: int, sizes: tuple):
    """(size, procedural tumour) of the first of `sizes` the tissue holds, else the error."""
    for size in sizes:
        try:
            return size, synthesise(image, organ, spacing, seed=seed, modality="CT", size=size)
        except TumorFMError:
            if size == sizes[-1]:
                raise


def appearances(folder: Path, cases: list[str]) -> dict[str, dict]:
    """Each real sarcoma's look against its soft tissue (`synth appearance`): HU shift,
    texture and standardised quantiles."""
    source = source_of(folder, None, "CT")
    source = replace(source, cases=[c for c in source.cases if c.case_id in cases])
    return measure(source, "1", organ_hu=SOFT_HU)["cases"]


def realism_case(folder, case, index, seeds, diffusion, look, looks) -> dict:
    """The real tumour's features, and every arm's synthetic tumour's for every seed; `look`:
    the measured arm's ranges; `looks`: the looks arm's real tumours' looks."""
    image, label, spacing, organ = load(folder, case)
    row = {"real": features(image, label == 1, spacing)}
    row["soft_tissue_ml"] = float(organ.sum() * np.prod(spacing) / 1000)
    sizes = SIZES
    for seed in seeds:
        s = case_seed(seed, index)
        try:
            size, made = _largest(image, organ, spacing, s, sizes)
        except TumorFMError as error:
            return row | {"skipped": str(error)}
        row["size"], sizes = size, (size,)  # the same for every seed: it depends on the tissue
        arms = {"procedural": made.image, "naive": naive(image, organ, made.tumour)}
        out = {arm: features(im, made.tumour, spacing) for arm, im in arms.items()}
        other = synthesise(image, organ, spacing, seed=s, size=size, **look)
        out["measured"] = features(other.image, other.tumour, spacing)
        other = synthesise(image, organ, spacing, seed=s, size=size, looks=looks)
        out["looks"] = features(other.image, other.tumour, spacing)
        if diffusion is not None:
            other = diffusion(image, organ, spacing, seed=s, modality="CT", size=size)
            out["diffusion"] = features(other.image, other.tumour, spacing)
        for arm, feats in out.items():
            row.setdefault(arm, {})[str(seed)] = feats
    return row


def representative(folder: Path, cases: list[str]) -> tuple[str, tuple]:
    """The scan nearest the median size whose soft tissue holds a large tumour (or the nearest)."""
    voxels = {}
    for case in cases:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(folder / "labelsTr" / f"{case}.nii.gz"))
        reader.ReadImageInformation()
        voxels[case] = math.prod(reader.GetSize())
    middle = statistics.median(voxels.values())
    order = sorted(cases, key=lambda c: (abs(voxels[c] - middle), c))
    for case in order:
        loaded = load(folder, case)
        image, _, spacing, organ = loaded
        try:
            synthesise(image, organ, spacing, seed=0, size="large")  # also a warm-up
            return case, loaded
        except TumorFMError:
            continue
    return order[0], load(folder, order[0])


def rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def timings(engine, loaded, sizes, repeats: int, what: str) -> dict:
    """Per size: seconds of `repeats` calls (seeds 0..), and numpy's peak in one untimed call."""
    image, _, spacing, organ = loaded
    out = {}
    for size in tqdm(sizes, desc=f"speed {what}", unit="size"):
        call = dict(modality="CT", size=size)
        try:
            tracemalloc.start()
            engine(image, organ, spacing, seed=repeats, **call)  # untimed: traced, warm
            peak = tracemalloc.get_traced_memory()[1]
        except TumorFMError as error:
            out[size] = {"fits": False, "why": str(error)}
            continue
        finally:
            tracemalloc.stop()
        seconds, cpu = [], []  # CPU time too: on a busy machine wall time also holds waiting
        for seed in range(repeats):
            started, cpu_started = time.perf_counter(), time.process_time()
            engine(image, organ, spacing, seed=seed, **call)
            seconds.append(time.perf_counter() - started)
            cpu.append(time.process_time() - cpu_started)
        out[size] = {
            "fits": True,
            "seconds": [round(s, 4) for s in seconds],
            "median_seconds": statistics.median(seconds),
            "cpu_seconds": [round(s, 4) for s in cpu],
            "median_cpu_seconds": statistics.median(cpu),
            "numpy_peak_mb": round(peak / 2**20, 1),
        }
    return out


def measure_speed(folder: Path, cases: list[str], repeats: int, engine) -> dict:
    """Procedural at every size; diffusion (if any) few-step (small) and full schedule (medium)."""
    case, loaded = representative(folder, cases)
    speed = {"case": case, "repeats": repeats, "rss_mb_before": rss_mb()}
    sizes = ["tiny", *SIZES[::-1]]
    with threadpool_limits(1):  # numpy's BLAS (einsum) on one core
        speed["procedural"] = timings(synthesise, loaded, sizes, repeats, "procedural")
    speed["rss_mb_after_procedural"] = rss_mb()
    if engine is not None:
        speed["diffusion"] = timings(
            engine.synthesise, loaded, ["small", "medium"], repeats, "diffusion"
        )
        for size, steps in (("small", engine.early_steps), ("medium", engine.steps)):
            speed["diffusion"][size]["steps"] = steps
        speed["rss_mb_after_diffusion"] = rss_mb()
    return speed


def main() -> None:
    parser = parser_for(__spec__.name, __doc__)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--cases", type=int, help="the first N sarcoma scans (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--diffusion-model", type=Path, nargs="+", metavar="BUNDLE",
        help="a synthesis bundle (CT), or two: each trained on one half of the scans (even, odd: "
        "benchmarks.synth_diffusion) and used on the other",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per size")
    parser.add_argument("--out", type=Path, default=RESULTS / "synth.json")
    args = parser.parse_args()
    load_before = os.getloadavg()
    folder = args.data / DATASET
    all_cases = case_ids(folder)
    if not all_cases:
        sys.exit(f"{folder}: no labelled sarcoma scans")
    cases = all_cases[: args.cases]

    engines, threads = [], None
    if args.diffusion_model:  # MONAI and torch only then
        import torch

        from tumorfm.synth.diffusion import DiffusionEngine, load_synth_bundle

        if len(args.diffusion_model) > 2:
            sys.exit("--diffusion-model: one bundle, or two (one per half of the scans)")
        engines = [DiffusionEngine(load_synth_bundle(b, "CT")) for b in args.diffusion_model]
        threads = torch.get_num_threads()
    engine = engines[0] if engines else None

    looks = appearances(folder, cases)
    half = {case: i % 2 for i, case in enumerate(cases)}  # two folds: each measured on the other
    fold_looks = [ranges(v for c, v in looks.items() if half[c] != fold) for fold in (0, 1)]
    rows = {}
    for case in tqdm(cases, desc="realism", unit="scan"):
        index, look = all_cases.index(case), fold_looks[half[case]]
        others = [v for c, v in looks.items() if half[c] != half[case]]
        # two models: the one trained on the other half, which never saw this scan's tumour
        model = engines[(1 - half[case]) % len(engines)] if engines else None
        diffusion = model.synthesise if model else None
        rows[case] = realism_case(folder, case, index, args.seeds, diffusion, look, others)
        rows[case]["appearance"] = looks.get(case)
    arms = ["procedural", "measured", "looks", "naive"] + (["diffusion"] if engines else [])
    realism = {arm: summarise(rows, arm, args.seeds) for arm in arms}

    speed = measure_speed(folder, cases, args.repeats, engine)
    real_ml = [r["real"]["volume_ml"] for r in rows.values()]
    skipped = {c: r["skipped"] for c, r in rows.items() if "skipped" in r}
    settings = dict(
        dataset=DATASET, cases=len(cases), seeds=args.seeds, soft_tissue_hu=SOFT_HU,
        organ_hu_smoothing_mm=HU_SMOOTHING_MM,
        sizes_tried=SIZES, naive_shift_hu=NAIVE_SHIFT, measured_looks=fold_looks,
        window_hu=WINDOW, levels=LEVELS,
        glcm=f"distance 1, 4 in-plane angles, axial slices with >= {MIN_SLICE} tumour voxels",
        features=FEATURES, target_auc_below=TARGET_AUC, repeats=args.repeats,
        classifier="StandardScaler + LogisticRegression, StratifiedGroupKFold(<= 5) by scan",
        diffusion_model=[str(b) for b in args.diffusion_model] if engines else None,
        diffusion_cross_fitted=len(engines) == 2, torch_threads=threads,
        diffusion_config=engine.model.config.to_dict() if engine else None,
        memory="numpy_peak_mb: tracemalloc peak of one call (numpy arrays, not torch tensors); "
        "rss_mb: the process's peak RSS (ru_maxrss), a high-water mark")  # fmt: skip
    result = {
        "settings": settings,
        **provenance("synth", ".venv-bench", load_before),
        "skipped": skipped,
        "sizes": {s: sum(r.get("size") == s for r in rows.values()) for s in SIZES},
        "real_volume_ml": dict(
            median=statistics.median(real_ml), low=min(real_ml), high=max(real_ml)
        ),
        "realism": realism,
        "speed": speed,
        "per_case": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(_clean(result), indent=1))
    summary = synth_lines(json.loads(args.out.read_text()))  # the README's formatting
    print("\n" + "\n".join(summary))
    print(f"wrote {args.out}")


def _clean(value):
    """NaN -> null, so the file is strict JSON."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return value.item() if isinstance(value, np.generic) else value


if __name__ == "__main__":
    main()
