"""`tumorfm finetune`: a pretrained bundle adapted to a new tumour dataset in a few epochs.

The dataset is planned on its own (spacing, normalisation) and preprocessed into the run's cache;
the network keeps the bundle's architecture and every weight that fits, the position embedding
is resized to the new patch, the head gets one channel per class of the new dataset (a class
whose name the bundle knows starts from its pretrained channel), and then the chosen parameters
train: everything (`full`), all but the encoder (`decoder`), the heads alone (`head`, a linear
probe), or small modules added to the transformer (`adapter`, `lora`). The result is a bundle
that `tumorfm predict` uses as it is.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from tumorfm.data.classes import class_name, lesion_classes, rename_labels
from tumorfm.data.formats import read_dataset
from tumorfm.data.plan import CONFIGS
from tumorfm.data.pool import load_pool
from tumorfm.data.preprocess import preprocess_pool
from tumorfm.errors import TumorFMError
from tumorfm.files import ensure_writable
from tumorfm.model.adapters import MODES
from tumorfm.model.bundle import LESIONS, bundle_folder, read_bundle_config
from tumorfm.train.config import make_config
from tumorfm.train.trainer import pretrain

ADAPTATION = {"adapter": {"adapter_dim": 32}, "lora": {"lora_rank": 8}}  # module sizes per mode


def dataset_classes(
    dataset: Path, pretrained: list[str], mapping: dict[str, str], new_head: bool
) -> dict[int, str]:
    """Label value -> class name for the dataset: its own names, renamed by `mapping`; at least
    one must be a class of the bundle unless `new_head` says all heads start fresh."""
    raw = read_dataset(dataset)
    if not raw.labelled_cases:
        raise TumorFMError(f"{dataset}: no labelled case to fine-tune on")
    known = set(raw.labels.values()) | {class_name(n) for n in raw.labels.values()}
    unknown = sorted(set(mapping) - known)
    if unknown:
        raise TumorFMError(
            f"--map {unknown[0]}=...: '{unknown[0]}' is not a class of {dataset} "
            f"({', '.join(n for v, n in raw.labels.items() if v)})"
        )
    labels = rename_labels(raw.labels, mapping)
    if not new_head and not set(labels.values()) & set(pretrained):
        raise TumorFMError(
            f"{dataset}: none of its classes ({', '.join(labels.values())}) is a class of the "
            f"bundle ({', '.join(pretrained)}); map one with --map NAME=BUNDLE_CLASS, or start "
            f"new heads with --new-head"
        )
    return labels


def bundle_configuration(meta: dict) -> str:
    """lowres when the bundle was trained on 3d_lowres plans, else fullres."""
    plans = (meta.get("plan") or {}).get("datasets") or {}
    lowres = any(p.get("configuration") == "3d_lowres" for p in plans.values())
    return "lowres" if lowres else "fullres"


def new_run_plan(out: Path, meta: dict, plan_config: str | None, settings: dict) -> str:
    """The plan configuration of a new run from bundle `meta` (default: as the bundle was
    planned; lowres at the bundle's patch unless `settings` give one), or a one-line refusal."""
    if (out / "settings.json").exists():
        raise TumorFMError(f"{out}: already holds a run; choose another --out")
    plan_config = plan_config or bundle_configuration(meta)
    if plan_config not in CONFIGS:
        raise TumorFMError(f"configuration '{plan_config}': choose {' or '.join(CONFIGS)}")
    if plan_config == "lowres" and not settings.get("patch_size"):  # the patch it is sized for
        settings["patch_size"] = tuple(meta["model"]["patch_size"])
    return plan_config


def finetune_pool(
    dataset: Path,
    labels: dict[int, str],
    known_lesions: list[str],
    synthesis: dict | None = None,
    more: list[Path] = (),
) -> dict:
    """The pool file's contents fine-tuning preprocesses `dataset` as: its `labels`, the lesion
    classes of the bundle's record `known_lesions`, and `more` datasets (folders with the same
    label values, e.g. teacher-labelled scans), each sampled as a dataset of the pool. A peer
    (benchmarks/accuracy_arms.py) preprocesses the same pool to train on tumorfm's data."""
    name = class_name(read_dataset(dataset).name)
    tumour = (synthesis or {}).get("tumour")
    classes = list(dict.fromkeys([*labels.values(), *([tumour] if tumour else [])]))
    return {
        "name": f"finetune-{name}",
        # its tumour classes: those the bundle records as such, the one it synthesises, and
        # those whose name says so
        "lesions": lesion_classes(classes, {}, [*known_lesions, tumour]),
        "datasets": [
            {
                "name": name,
                "path": str(dataset.resolve()),
                "labels": labels,
                **({"synthesis": synthesis} if synthesis else {}),
            },
            *({"name": folder.name, "path": str(folder.resolve()), "labels": dict(labels)}
              for folder in more),
        ],
    }  # fmt: skip


def prepare_cache(
    dataset: Path,
    out: Path,
    labels: dict[int, str],
    meta: dict,
    plan_config: str,
    config,
    synthesis: dict | None = None,
    cache: str | Path | None = None,
    workers: int = 2,
    progress: bool = True,
    more: list[Path] = (),
) -> Path:
    """The dataset as a pool (OUT/pool.yaml, finetune_pool), preprocessed into `cache` (default
    OUT/cache) with the plan `plan_config`; lesion classes from the bundle's record `meta`."""
    ensure_writable(out)
    pool = finetune_pool(dataset, labels, meta.get(LESIONS) or [], synthesis, more)
    pool_file = out / "pool.yaml"
    pool_file.write_text(yaml.safe_dump(pool, sort_keys=False))
    cache = Path(cache) if cache else out / "cache"
    preprocess_pool(
        load_pool(pool_file),
        cache,
        workers=workers,
        progress=progress,
        config=plan_config,
        lowres_patch=tuple(config.patch_size),
    )
    return cache


def finetune(
    dataset: str | Path,
    bundle: str | Path,
    out: str | Path,
    epochs: int = 10,
    mode: str = "full",
    mapping: dict[str, str] | None = None,
    new_head: bool = False,
    from_scratch: bool = False,
    cache: str | Path | None = None,
    workers: int = 2,
    progress: bool = True,
    plan_config: str | None = None,
    synthesis: dict | None = None,
    stop_after_epoch: int | None = None,
    **settings,
) -> dict:
    """Fine-tune `bundle` on `dataset` into the run folder `out` (bundles in OUT/best and
    OUT/last, the cache in OUT/cache unless given); returns the last epoch's log row.

    `settings` are PretrainConfig fields (profile defaults to "cpu"): iterations_per_epoch,
    patch_size, lr, warmup_epochs, seed, ... `from_scratch` keeps the bundle's architecture but
    not its weights: the baseline of the transfer study. `plan_config` (fullres, lowres) plans the
    dataset; by default as the bundle was planned, lowres at the training patch. `synthesis` is a
    pool file's synthesis block: online synthetic tumours in the training patches.
    `stop_after_epoch` ends the run there as a kill would, resumable (the trainer's own).
    """
    if mode not in MODES:
        raise TumorFMError(f"mode '{mode}': choose one of {', '.join(MODES)}")
    dataset, bundle, out = Path(dataset), bundle_folder(bundle), Path(out)
    meta = read_bundle_config(bundle)
    labels = dataset_classes(dataset, meta["classes"], mapping or {}, new_head or from_scratch)
    plan_config = new_run_plan(out, meta, plan_config, settings)
    profile = settings.pop("profile", "cpu")
    config = make_config(  # before anything is written: a bad setting leaves no folder behind
        profile,
        model=meta.get("preset") or "tsfm-tiny",
        epochs=epochs,
        mode=mode,
        init_from=str(bundle),
        init_weights=not from_scratch,  # from scratch: the bundle's architecture, fresh weights
        adaptation=ADAPTATION.get(mode, {}),
        workers=min(workers, 2),
        **settings,
    )
    cache = prepare_cache(
        dataset, out, labels, meta, plan_config, config, synthesis, cache, workers, progress
    )
    return pretrain(cache, out, config, stop_after_epoch=stop_after_epoch, progress=progress)
