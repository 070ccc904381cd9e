"""Model bundles: a folder that describes itself, and that `predict` needs nothing beside.

    BUNDLE/model.safetensors   the weights (safetensors: loading never unpickles anything)
    BUNDLE/config.json         preset and overrides, the full network config, input channels and
                               their modalities, global classes and their paint order, the
                               lesion classes, the preprocessing plan

A pickle checkpoint (.pt/.pth/.ckpt) is refused, and so is a bundle whose tensors do not match its
config (missing, unexpected or of another shape); only the position embedding may differ in grid,
and it is resized to the requested patch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tumorfm.errors import TumorFMError
from tumorfm.files import atomic_folder, read_json_object
from tumorfm.model.network import TSFM, TSFMConfig
from tumorfm.model.presets import PRESETS

FORMAT = "tumorfm-bundle"
VERSION = 1
WEIGHTS, CONFIG = "model.safetensors", "config.json"
POSITION_SUFFIX = "bottleneck.position"
LESIONS = "lesion_classes"  # config.json key; absent in bundles made before it was recorded
LFS_POINTER = b"version https://git-lfs.github.com/spec/"


def models_folder() -> Path:
    """TUMORFM_MODELS, else the `models/` folder beside the installed package."""
    custom = os.environ.get("TUMORFM_MODELS")
    return Path(custom) if custom else Path(__file__).resolve().parents[2] / "models"


def list_shipped() -> list[str]:
    """Names of the shipped bundles (folders of models/ holding a config.json)."""
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


@dataclass
class Bundle:
    model: TSFM
    classes: list[str]  # global classes, one output channel each, in channel order
    modalities: list[str]  # one per input channel
    paint_order: list[str]  # classes in the order they are painted into a label map
    preset: str | None = None
    plan: dict | None = None
    extra: dict = field(default_factory=dict)
    # classes whose components are separate lesions (counted, measured); None: a bundle made
    # before they were recorded, whose users fall back to the names (tumorfm.data.pool)
    lesions: list[str] | None = None


def _overrides(preset: str | None, config: TSFMConfig) -> dict:
    """The settings in which `config` differs from its preset."""
    if preset not in PRESETS:
        return {}
    reference = TSFMConfig(
        in_channels=config.in_channels,
        num_classes=config.num_classes,
        patch_size=config.patch_size,
        **PRESETS[preset],
    ).to_dict()
    return {key: value for key, value in config.to_dict().items() if reference[key] != value}


def save_bundle(
    folder: str | os.PathLike,
    model: TSFM,
    classes: list[str],
    modalities: list[str],
    preset: str | None = None,
    plan: dict | None = None,
    paint_order: list[str] | None = None,
    extra: dict | None = None,
    lesions: list[str] | None = None,
) -> Path:
    """Write a bundle atomically: a temporary folder beside `folder`, then a rename. `lesions`:
    the tumour classes of the pool or dataset it learnt from (None: not recorded)."""
    folder = Path(folder)
    config = model.config
    if len(classes) != config.num_classes:
        raise ValueError(f"{len(classes)} class names for {config.num_classes} output channels")
    if len(modalities) != config.in_channels:
        raise ValueError(f"{len(modalities)} modalities for {config.in_channels} input channels")
    paint_order = list(paint_order or classes)
    if sorted(paint_order) != sorted(classes):
        raise ValueError("paint_order must list every class exactly once")
    if lesions is not None and not set(lesions) <= set(classes):
        raise ValueError(f"lesion classes {sorted(set(lesions) - set(classes))} are not classes")
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "preset": preset,
        "overrides": _overrides(preset, config),
        "model": config.to_dict(),
        "in_channels": config.in_channels,
        "modalities": list(modalities),
        "classes": list(classes),
        "paint_order": paint_order,
        **({LESIONS: list(lesions)} if lesions is not None else {}),
        "plan": plan,
        "extra": extra or {},
    }
    with atomic_folder(folder) as tmp:
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        (tmp / CONFIG).write_text(json.dumps(meta, indent=2))
    return folder


def _refuse_pickle(path: Path) -> None:
    head = path.read_bytes()[:4] if path.is_file() else b""
    if head[:2] == b"PK" or head[:1] == b"\x80" or path.suffix in (".pt", ".pth", ".ckpt"):
        raise TumorFMError(
            f"{path}: a pickle checkpoint; tumorfm loads only bundles (a folder "
            f"with {WEIGHTS} and {CONFIG}) and never unpickles files"
        )
    raise TumorFMError(f"{path}: not a bundle folder (expected {WEIGHTS} and {CONFIG})")


def read_bundle_config(folder: str | os.PathLike) -> dict:
    """The bundle's config.json, checked; `folder` may be the name of a shipped bundle."""
    folder = bundle_folder(folder)
    if not folder.is_dir():
        _refuse_pickle(folder)
    path = folder / CONFIG
    meta = read_json_object(path, f"a bundle needs {CONFIG} and {WEIGHTS}")
    if meta.get("format") != FORMAT:
        raise TumorFMError(f"{path}: not a tumorfm bundle config (format '{FORMAT}' expected)")
    if meta.get("version", 0) > VERSION:
        raise TumorFMError(
            f"{path}: bundle version {meta['version']} is newer than this "
            f"tumorfm reads ({VERSION}); upgrade tumorfm"
        )
    for key, kind in (("model", dict), ("classes", list), ("modalities", list)):
        if not isinstance(meta.get(key), kind) or not meta[key]:
            raise TumorFMError(
                f"{path}: '{key}' is missing or empty; the bundle is damaged, copy it again"
            )
    lesions, classes = meta.get(LESIONS), meta["classes"]
    if lesions is not None and not (
        isinstance(lesions, list) and all(isinstance(n, str) and n in classes for n in lesions)
    ):
        raise TumorFMError(f"{path}: {LESIONS} must list classes of the bundle, got {lesions!r}")
    return meta


def _finite(value: torch.Tensor) -> bool:
    """numpy's check, not torch's: torch hands each small tensor to its thread pool, which cost
    a 217-tensor bundle 1.5 s on a busy 2-core CPU (numpy: 0.02 s)."""
    array = value.float().numpy() if value.dtype == torch.bfloat16 else value.numpy()
    return bool(np.isfinite(array).all())


def _check_tensors(path: Path, model: TSFM, tensors: dict[str, torch.Tensor]) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise TumorFMError(
            f"{path}: tensor '{missing[0]}' missing"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise TumorFMError(f"{path}: unexpected tensor '{unexpected[0]}' not in the model config")
    for key, value in tensors.items():
        want = expected[key].shape
        if value.shape != want and not (
            key.endswith(POSITION_SUFFIX) and value.dim() == 5 and value.shape[:2] == want[:2]
        ):
            raise TumorFMError(
                f"{path}: tensor '{key}' has shape {tuple(value.shape)}, the "
                f"config expects {tuple(want)}"
            )
        if value.is_floating_point() and not _finite(value):
            raise TumorFMError(
                f"{path}: tensor '{key}' holds NaN or infinite values (a training that diverged?)"
            )


def load_bundle(
    folder: str | os.PathLike, patch_size=None, device: str = "cpu", **overrides
) -> Bundle:
    """Build the bundle's network (at `patch_size` if given) and load its weights.

    Weights stored in half precision (shipped bundles) are copied into the float32 network."""
    folder = bundle_folder(folder)
    meta = read_bundle_config(folder)
    settings = dict(meta["model"])
    if patch_size is not None:
        settings.update(patch_size=tuple(patch_size), strides=None)
    settings.update(overrides)
    try:
        config = TSFMConfig.from_dict(settings)
        model = TSFM(config)
    except (TypeError, ValueError) as error:
        raise TumorFMError(f"{folder / CONFIG}: invalid model config ({error})") from None
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise TumorFMError(f"{weights}: missing; a bundle needs {CONFIG} and {WEIGHTS}")
    with open(weights, "rb") as file:
        head = file.read(len(LFS_POINTER))
    if head == LFS_POINTER:
        raise TumorFMError(
            f"{weights}: a Git LFS pointer, not the weights; fetch them with `git lfs pull`"
        )
    try:
        tensors = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise TumorFMError(
            f"{weights}: truncated or not a safetensors file ({error}); copy the bundle again"
        ) from None
    _check_tensors(weights, model, tensors)
    model.load_state_dict(tensors)
    classes = list(meta["classes"])
    if len(classes) != config.num_classes:
        raise TumorFMError(
            f"{folder / CONFIG}: {len(classes)} classes for {config.num_classes} output channels"
        )
    return Bundle(
        model.to(device).eval(),
        classes,
        list(meta["modalities"]),
        list(meta.get("paint_order") or classes),
        meta.get("preset"),
        meta.get("plan"),
        meta.get("extra", {}),
        meta.get(LESIONS),
    )
