"""Augmentation libraries, side by side: MONAI vs batchgeneratorsv2 (nnU-Net's own).

Both run nnU-Net v2's default 3D training set (nnUNetTrainer.get_training_transforms): rotation
+-30 deg and scaling 0.7-1.4 from an enlarged crop, Gaussian noise, blur, brightness, contrast,
low resolution, gamma and inverted gamma, mirroring. Same patches, same machine, one torch thread,
each sample seeded on its own the way the loader does it (that cost is part of the time). Two
probability settings: nnU-Net's defaults (what training pays) and every transform on (worst case).
Labels: nearest neighbour in both; batchgeneratorsv2 also with nnU-Net's per-label linear mode.

MONAI has no exact twin of some nnU-Net choices, so its set is as close as the library allows:
one RandAffine with p = 1 - 0.8^2 (nnU-Net draws rotation and scaling apart), per-axis scaling
(nnU-Net scales isotropically), channel-wise probabilities folded into the transform probability.

It also asks pip, in the product environment, what installing each library would pull in
(`pip install --dry-run --report`), and whether that touches torch, torchvision or CUDA wheels.

Run from the repository root with the product environment; the libraries go into an overlay
environment (benchmarks/work/augment-env, which sees .venv's packages), never into .venv itself:
    .venv/bin/python -m benchmarks.augment
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import sysconfig
import time
import venv
from pathlib import Path

import numpy as np

from .common import RESULTS, ROOT, WORK, parser_for
from .measure import machine

OVERLAY = WORK / "augment-env"
REAL_CACHE = WORK / "preprocess" / "tumorfm_cache"
LIBRARIES = {"monai": "monai", "batchgeneratorsv2": "batchgeneratorsv2"}  # pip name: import name
PATCHES = [(64, 64, 64), (96, 160, 160)]


def in_overlay(product_python: str) -> None:
    """Re-run this module inside the overlay environment (made on first use) when needed.

    The overlay sees the product environment's site-packages through a .pth line, which does not
    run the .pth files there (tumorfm's editable install among them): it imports tumorfm, like this
    package, from the repository root, the working directory `python -m` puts on sys.path."""
    try:
        import batchgeneratorsv2  # noqa: F401
        import monai  # noqa: F401

        return
    except ImportError:
        pass
    python = OVERLAY / "bin" / "python"
    if not python.exists():
        venv.create(OVERLAY, with_pip=True)
        site = next(OVERLAY.glob("lib/python*/site-packages"))
        (site / "product-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        subprocess.run([python, "-m", "pip", "install", "-q", *LIBRARIES], check=True)
    argv = [str(python), "-m", "benchmarks.augment", *sys.argv[1:]]
    os.execv(python, [*argv, "--product-python", product_python])


CLOSURE = r"""
import importlib.metadata as md, json, re, sys
from packaging.requirements import Requirement

def closure(name, extras=("",), skip=None):
    seen, todo = {skip: None} if skip else {}, [name]
    while todo:
        key = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if key not in seen:
            try:
                dist = md.distribution(key)
            except md.PackageNotFoundError:
                seen[key] = None
                continue
            seen[key] = dist.version
            for line in dist.requires or []:
                req = Requirement(line)
                if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras):
                    todo.append(req.name)
    return seen

# tumorfm's own needs, without the library (pyproject may list it already)
own, lib = closure("tumorfm", ("", "dev"), sys.argv[1]), closure(sys.argv[1])
own.pop(sys.argv[1])
print(json.dumps({"installed": lib[sys.argv[1]] is not None,
                  "brings": sorted(f"{k}=={v}" for k, v in lib.items() if k not in own)}))
"""


def install_check(product_python: str, package: str) -> dict:
    """What installing PACKAGE does to the product env: `pip install --dry-run` when it is not
    there yet; once installed, the packages it required beyond tumorfm's own dependencies."""
    probe = subprocess.run(
        [product_python, "-c", CLOSURE, package], capture_output=True, text=True, check=True
    )
    closure = json.loads(probe.stdout)
    if closure["installed"]:
        packages, method = closure["brings"], "installed: its dependencies beyond tumorfm's"
    else:
        method = "pip install --dry-run --report"
        result = subprocess.run(
            [product_python, "-m", "pip", "install", "--dry-run", "-q", "--report", "-", package],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            return {"ok": False, "method": method, "error": result.stderr.strip()[-500:]}
        packages = sorted(
            f"{i['metadata']['name']}=={i['metadata']['version']}"
            for i in json.loads(result.stdout)["install"]
        )
    names = [p.split("==")[0].lower() for p in packages]
    return {
        "ok": True,
        "method": method,
        "packages": packages,
        "count": len(packages),
        "replaces_torch": "torch" in names,
        "pulls_torchvision": "torchvision" in names,
        "pulls_cuda": any(n.startswith("nvidia") for n in names),
    }


def enlarged(patch, degrees=30.0, min_scale=0.85):
    from tumorfm.data.augment import enlarged_patch_size

    return enlarged_patch_size(patch, degrees, min_scale)


def sample_inputs(patch, count: int, seed: int = 0):
    """`count` enlarged crops (image, label) around tumour voxels of a real case, or a phantom."""
    from tumorfm.data.cache import cached_cases

    crop = enlarged(patch)
    cases = cached_cases(REAL_CACHE, "sarcoma_ct") if REAL_CACHE.is_dir() else []
    if cases:
        case = max(cases, key=lambda c: math.prod(c.properties["label_shape"]))
        image, label = np.asarray(case.image()), np.asarray(case.label())
        source = f"sarcoma_ct/{case.case_id} {'x'.join(map(str, label.shape))}"
    else:
        from tumorfm.data.phantom import DEFAULT_SITES, make_case

        hu, label, _ = make_case(DEFAULT_SITES[0], (96, 192, 192), seed)
        image = ((hu.astype(np.float32) - 50) / 100)[None]
        source = "phantom liver 96x192x192"
    rng = np.random.default_rng(seed)
    voxels = np.argwhere(label > 0)
    out = []
    for _ in range(count):
        centre = voxels[rng.integers(len(voxels))]
        lo = [int(c) - s // 2 for c, s in zip(centre, crop)]
        pad = [(max(0, -a), max(0, a + s - n)) for a, s, n in zip(lo, crop, label.shape)]
        box = tuple(slice(max(0, a), min(n, a + s)) for a, s, n in zip(lo, crop, label.shape))
        img = np.pad(image[(slice(None), *box)], [(0, 0), *pad])
        lab = np.pad(label[box], pad)[None]
        out.append((img.astype(np.float32), lab.astype(np.int16)))
    return out, source


def bgv2_pipeline(patch, all_on: bool, labels: str):
    """The product's own pipeline (tumorfm.data.augment), seeding per sample included."""
    from dataclasses import replace

    from tumorfm.data.augment import AugmentConfig, Augmenter

    config = AugmentConfig(label_interpolation=labels)
    if all_on:
        config = replace(config, **{f: 1.0 for f in config.__dataclass_fields__ if f[:2] == "p_"})
        config = replace(config, p_elastic=0.0)
    augment = Augmenter(patch, config)

    def run(image, label, seed):
        image, label = augment(image, label[0], seed)
        return image, label[None]

    return run


def monai_pipeline(patch, all_on: bool):
    import monai.transforms as mt

    def p(value):
        return 1.0 if all_on else value

    keys = ["image", "label"]
    pipeline = mt.Compose(
        [
            mt.RandAffined(
                keys,
                spatial_size=patch,
                prob=p(1 - 0.8**2),
                rotate_range=[math.radians(30)] * 3,
                scale_range=[(-0.3, 0.4)] * 3,
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
            mt.RandGaussianNoised("image", prob=p(0.1), std=0.1, sample_std=True),
            mt.RandGaussianSmoothd("image", (0.5, 1.0), (0.5, 1.0), (0.5, 1.0), prob=p(0.2 * 0.5)),
            mt.RandScaleIntensityd("image", factors=0.25, prob=p(0.15), channel_wise=True),
            mt.RandScaleIntensityFixedMeand(
                "image", factors=0.25, preserve_range=True, prob=p(0.15), channel_wise=True
            ),
            mt.RandSimulateLowResolutiond("image", prob=p(0.25 * 0.5), zoom_range=(0.5, 1.0)),
            mt.RandAdjustContrastd(
                "image", prob=p(0.1), gamma=(0.7, 1.5), invert_image=True, retain_stats=True
            ),
            mt.RandAdjustContrastd("image", prob=p(0.3), gamma=(0.7, 1.5), retain_stats=True),
            *[mt.RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in range(3)],
        ],
        log_stats=False,
    )

    def run(image, label, seed):
        pipeline.set_random_state(seed=seed % 2**32)
        out = pipeline({"image": image, "label": label})
        return out["image"], out["label"]

    return run


def time_it(run, inputs, warmup: int = 2) -> dict:
    for index, (image, label) in enumerate(inputs[:warmup]):
        run(image.copy(), label.copy(), 10_000 + index)
    times = []
    for index, (image, label) in enumerate(inputs):
        image, label = image.copy(), label.copy()  # transforms may work in place
        started = time.perf_counter()
        out_image, out_label = run(image, label, index)
        times.append(1000 * (time.perf_counter() - started))
    assert tuple(out_image.shape[1:]) == tuple(out_label.shape[1:])
    return {
        "median_ms": round(statistics.median(times), 1),
        "mean_ms": round(statistics.fmean(times), 1),
        "min_ms": round(min(times), 1),
        "max_ms": round(max(times), 1),
        "output_shape": list(out_image.shape),
    }


def main() -> None:
    parser = parser_for(__spec__.name, __doc__)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--product-python", default=str(ROOT / ".venv" / "bin" / "python"))
    parser.add_argument("--out", type=Path, default=RESULTS / "augment.json")
    args = parser.parse_args()
    load_before = os.getloadavg()
    in_overlay(args.product_python)
    import batchgeneratorsv2  # noqa: F401
    import monai
    import torch

    torch.set_num_threads(1)
    installs = {name: install_check(args.product_python, name) for name in LIBRARIES}
    results = {
        "tumorfm_bench": "augment",
        "machine": {**machine(load_before), "threads": 1},
        "versions": {
            "torch": torch.__version__,
            "monai": monai.__version__,
            "batchgeneratorsv2": _version("batchgeneratorsv2"),
        },
        "samples": args.samples,
        "install_in_product_env": installs,
        "product_env": product_env(args.product_python),
        "patches": {},
    }
    for patch in PATCHES:
        inputs, source = sample_inputs(patch, args.samples)
        name = "x".join(map(str, patch))
        row = {"input": source, "enlarged_crop": list(enlarged(patch)), "timings": {}}
        for setting in ("nnunet_probabilities", "all_transforms_on"):
            all_on = setting == "all_transforms_on"
            runs = {
                "monai": monai_pipeline(patch, all_on),
                "batchgeneratorsv2": bgv2_pipeline(patch, all_on, "nearest"),
                "batchgeneratorsv2_linear_labels": bgv2_pipeline(patch, all_on, "linear"),
            }
            row["timings"][setting] = {lib: time_it(run, inputs) for lib, run in runs.items()}
            for lib, timing in row["timings"][setting].items():
                print(f"{name:<12} {setting:<22} {lib:<32} {timing['median_ms']:>8.1f} ms/sample")
        results["patches"][name] = row
    for name, row in results["patches"].items():
        for setting, timings in row["timings"].items():
            ratio = timings["monai"]["median_ms"] / timings["batchgeneratorsv2"]["median_ms"]
            row.setdefault("monai_over_batchgeneratorsv2_median", {})[setting] = round(ratio, 1)
        print(f"{name}: MONAI / batchgeneratorsv2 {row['monai_over_batchgeneratorsv2_median']}")
    for name, info in installs.items():
        print(f"pip install {name} in the product env: {info}")
    print(f"product env: {results['product_env']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results in {args.out}")


def product_env(product_python: str) -> dict:
    """torch as the product env has it, and whether torchvision crept in."""
    code = (
        "import importlib.util, json, torch; print(json.dumps({'torch': torch.__version__, "
        "'torchvision_installed': importlib.util.find_spec('torchvision') is not None}))"
    )
    result = subprocess.run([product_python, "-c", code], capture_output=True, text=True)
    return json.loads(result.stdout)


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    main()
