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
from tumorfm.interactive.prompts import PROMPT_CHANNELS
from tumorfm.model.bundle import POSITION_SUFFIX, WEIGHTS, bundle_folder, read_bundle_config
from tumorfm.model.network import TSFM, TSFMConfig
from tumorfm.model.presets import create_model


def head_convs(model: TSFM) -> list[str]:
    """Names of the 1x1x1 convs that give one output channel per class."""
    heads = [model.head] + [m for aux in model.aux_heads for m in aux.modules()]
    names = {id(m): name for name, m in model.named_modules()}
    return [
        names[id(m)]
        for m in heads
        if isinstance(m, torch.nn.Conv3d) and m.out_channels == model.config.num_classes
    ]


def build_model(config, in_channels: int, classes: list[str]) -> tuple[TSFM, dict | None]:
    """The network a run trains: a fresh preset, or the bundle's architecture with its weights
    (new input channels, classes and patch size; adapters or LoRA added if asked)."""
    settings = dict(
        in_channels=in_channels,
        num_classes=len(classes),
        patch_size=tuple(config.patch_size),
        deep_supervision=config.deep_supervision,
        checkpoint_stages=config.checkpointing,
        checkpoint_transformer=config.checkpointing,
    )
    settings.update({k: v for k, v in config.adaptation.items() if v})
    if not config.init_from:
        return create_model(config.model, **settings), None
    architecture = dict(read_bundle_config(config.init_from)["model"])
    architecture.update(settings, strides=None)
    try:
        model = TSFM(TSFMConfig.from_dict(architecture))
    except (TypeError, ValueError) as error:
        raise TumorFMError(f"{config.init_from}: cannot build its network ({error})") from None
    if not config.init_weights:
        return model, None
    prompts = len(PROMPT_CHANNELS) if config.promptable else 0
    return model, initialise_from(model, config.init_from, classes, prompts)


def _first_conv(old: torch.Tensor, channels: int) -> torch.Tensor:
    """Stem weights for another number of input channels (STU-Net's transfer): every new channel
    gets the sum over the old ones divided by the new count, so an input whose channels are all
    equal gives the pretrained response."""
    return old.sum(1, keepdim=True).repeat(1, channels, 1, 1, 1) / channels


def initialise_from(model: TSFM, bundle: str | Path, classes: list[str], prompts: int = 0) -> dict:
    """Load the bundle's weights into `model` (whose output channels are `classes`). The last
    `prompts` input channels (a promptable network's) start at zero: with no prompt the network
    answers exactly as the bundle did."""
    folder = bundle_folder(bundle)
    meta = read_bundle_config(folder)
    try:
        pretrained = load_file(str(folder / WEIGHTS))
    except (OSError, ValueError) as error:
        raise TumorFMError(f"{folder / WEIGHTS}: cannot read ({error})") from None
    # shipped bundles may store float16; the network trains in float32
    pretrained = {k: v.float() if v.is_floating_point() else v for k, v in pretrained.items()}
    source = list(meta["classes"])
    mapped = [(i, source.index(name)) for i, name in enumerate(classes) if name in source]
    state = model.state_dict()
    heads = {f"{name}.{p}" for name in head_convs(model) for p in ("weight", "bias")}
    loaded, skipped, notes = {}, [], []
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
        elif key == "stem.weight" and prompts and old.shape[1] + prompts == value.shape[1]:
            loaded[key] = torch.cat(
                [old, old.new_zeros((old.shape[0], prompts, *old.shape[2:]))], 1
            )
            notes.append(f"input channels {old.shape[1]} + {prompts} prompt channels at zero")
        elif key == "stem.weight" and old.shape[0] == value.shape[0]:
            loaded[key] = _first_conv(old, value.shape[1])
            notes.append(f"input channels {old.shape[1]} -> {value.shape[1]}")
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
        "notes": notes,
    }
