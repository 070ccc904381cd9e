"""Start a network from a pretrained bundle: every weight that fits, head channels by class name.

The CNN and transformer weights carry over unchanged (the position embedding is resized to the
new patch on load); a head channel whose class name exists in the bundle starts from the
pretrained channel, a new class starts fresh. This is TSFM's transfer step (paper, Section 2.4).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from tumorfm.errors import TumorFMError
from tumorfm.model.bundle import POSITION_SUFFIX, WEIGHTS, read_bundle_config
from tumorfm.model.network import TSFM


def head_convs(model: TSFM) -> list[str]:
    """Names of the 1x1x1 convs that give one output channel per class."""
    heads = [model.head] + [m for aux in model.aux_heads for m in aux.modules()]
    names = {id(m): name for name, m in model.named_modules()}
    return [
        names[id(m)]
        for m in heads
        if isinstance(m, torch.nn.Conv3d) and m.out_channels == model.config.num_classes
    ]


def initialise_from(model: TSFM, bundle: str | Path, classes: list[str]) -> dict:
    """Load the bundle's weights into `model` (whose output channels are `classes`)."""
    folder = Path(bundle)
    meta = read_bundle_config(folder)
    try:
        pretrained = load_file(str(folder / WEIGHTS))
    except (OSError, ValueError) as error:
        raise TumorFMError(f"{folder / WEIGHTS}: cannot read ({error})") from None
    source = list(meta["classes"])
    mapped = [(i, source.index(name)) for i, name in enumerate(classes) if name in source]
    state = model.state_dict()
    heads = {f"{name}.{p}" for name in head_convs(model) for p in ("weight", "bias")}
    loaded, skipped = {}, []
    for key, value in state.items():
        old = pretrained.get(key)
        if old is None:
            skipped.append(key)
        elif key in heads:
            if old.shape[1:] != value.shape[1:]:
                skipped.append(key)
                continue
            new = value.clone()
            for i, j in mapped:
                new[i] = old[j]
            loaded[key] = new
        elif old.shape == value.shape or key.endswith(POSITION_SUFFIX):
            loaded[key] = old
        else:
            skipped.append(key)
    if not loaded:
        raise TumorFMError(f"{folder}: no weight of this bundle fits the network")
    model.load_state_dict({**state, **loaded})
    return {
        "bundle": str(folder),
        "loaded_tensors": len(loaded),
        "skipped_tensors": skipped,
        "classes_from_pretrained": [classes[i] for i, _ in mapped],
        "new_classes": [c for c in classes if c not in source],
    }
