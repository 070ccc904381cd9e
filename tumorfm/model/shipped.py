"""Bundles shipped with tumorfm, found by name: `tumorfm predict -m tsfm-real-lowres`.

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

from tumorfm.errors import TumorFMError

CARD = "MODEL_CARD.md"


def models_folder() -> Path:
    """TUMORFM_MODELS, else the `models/` folder beside the installed package."""
    custom = os.environ.get("TUMORFM_MODELS")
    return Path(custom) if custom else Path(__file__).resolve().parents[2] / "models"


def list_shipped() -> list[str]:
    """Names of the shipped bundles (folders of models/ holding a config.json)."""
    from tumorfm.model.bundle import CONFIG  # bundle.py imports this module

    root = models_folder()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / CONFIG).is_file())


def bundle_folder(bundle: str | os.PathLike) -> Path:
    """A bundle folder from a path, or from the name of a shipped bundle.

    A path that exists wins; a bare name (no folder separator) is looked up in models/; anything
    else gets one line listing the shipped names.
    """
    path = Path(bundle)
    if path.exists():
        return path
    name = str(bundle)
    if os.sep not in name and "/" not in name:
        if name in list_shipped():
            return models_folder() / name
        shipped = ", ".join(list_shipped()) or "none"
        raise TumorFMError(
            f"model '{name}': no such bundle folder and no shipped model of that name "
            f"(shipped: {shipped}; see `tumorfm model list`)"
        )
    raise TumorFMError(f"{path}: bundle not found")


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
    from tumorfm.model.bundle import CONFIG, FORMAT, WEIGHTS, read_bundle_config

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
    from tumorfm.model.bundle import WEIGHTS, read_bundle_config

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
            }
            for dataset, plan in plans.items()
        },
        "megabytes": round((folder / WEIGHTS).stat().st_size / 1e6, 1)
        if (folder / WEIGHTS).is_file()
        else None,
    }
