"""Bundles shipped with tumorfm: exported for the repository and described by `tumorfm model list`;
tumorfm.model.bundle.bundle_folder finds them by name (`tumorfm predict -m tsfm-real-lowres`).

They live in the repository's `models/<name>/` (a bundle plus its MODEL_CARD.md), or wherever
TUMORFM_MODELS points. Their weights may be stored in half precision to keep the repository
small; loading copies them into the float32 network, so a shipped bundle predicts in float32 like
any other. Nothing is ever downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from tumorfm.model.bundle import (
    CONFIG,
    FORMAT,
    WEIGHTS,
    bundle_folder,
    models_folder,
    read_bundle_config,
)

CARD = "MODEL_CARD.md"


def export_bundle(
    source: str | os.PathLike,
    target: str | os.PathLike,
    half: bool = True,
    card: str | None = None,
    extra: dict | None = None,
) -> Path:
    """Copy a bundle for shipping: weights in float16 when `half`, a model card, extra facts in
    its config (training data, split, measured scores). Written atomically."""
    import torch
    from safetensors.torch import load_file, save_file

    from tumorfm.files import atomic_folder

    source, target = bundle_folder(source), Path(target)
    meta = read_bundle_config(source)
    tensors = load_file(str(source / WEIGHTS))
    if half:
        tensors = {
            k: v.to(torch.float16) if v.is_floating_point() else v for k, v in tensors.items()
        }
    meta["extra"] = {**meta.get("extra", {}), **(extra or {})}
    meta["extra"]["weights_dtype"] = "float16" if half else "float32"
    with atomic_folder(target) as tmp:
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        (tmp / CONFIG).write_text(json.dumps(meta, indent=2))
        if card is not None:
            (tmp / CARD).write_text(card)
        elif (source / CARD).is_file():
            shutil.copyfile(source / CARD, tmp / CARD)
    return target


def describe(name: str) -> dict:
    """What `tumorfm model list` shows of a shipped bundle."""
    folder = models_folder() / name
    meta = read_bundle_config(folder)
    plans = (meta.get("plan") or {}).get("datasets") or {}
    return {
        "name": name,
        "preset": meta.get("preset"),
        "classes": meta.get("classes", []),
        "plans": {
            dataset: {
                "configuration": plan.get("configuration", "3d_fullres"),
                "spacing_zyx": plan.get("target_spacing_zyx"),
                "thresholds": ((meta.get("extra") or {}).get("thresholds") or {}).get(dataset, {}),
            }
            for dataset, plan in plans.items()
        },
        "megabytes": round((folder / WEIGHTS).stat().st_size / 1e6, 1)
        if (folder / WEIGHTS).is_file()
        else None,
    }
