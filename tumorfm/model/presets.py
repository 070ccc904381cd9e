"""Named TSFM presets, from a CPU-sized `tsfm-tiny` to the paper's 1.6B-parameter `tsfm-1.6b`.

`tsfm-1.6b` is STU-Net-H's CNN (base width 96, widths x[1, 2, 4, 8, 16, 16], 3 blocks per stage,
1.457B) with a ViT-Base bottleneck (12 layers, width 768, 12 heads, MLP 3072; 85M) and 3x3x3
projections 1536 <-> 768 (2 x 32M): 1.60B, the paper's count. Smaller presets share the code.
"""

from __future__ import annotations

from tumorfm.model.network import TSFM, TSFMConfig

PRESETS: dict[str, dict] = {
    "tsfm-tiny": dict(
        widths=(8, 16, 32, 64, 96),
        blocks=1,
        transformer_width=96,
        transformer_depth=2,
        transformer_heads=4,
        transformer_mlp=192,
        projection_kernel=1,
    ),
    # what a CPU trains in two hours and a repository ships (11.7M: 23 MB in half precision)
    "tsfm-compact": dict(
        widths=(16, 32, 64, 128, 256),
        blocks=1,
        transformer_width=192,
        transformer_depth=8,
        transformer_heads=3,
        transformer_mlp=768,
    ),
    # a student for distillation (issue 20): compact's first widths at half resolution (a
    # strided stem, logits up-sampled), an eighth of the voxels for every conv, norm and activation
    "tsfm-fast": dict(
        widths=(16, 32, 64, 128, 128),
        blocks=1,
        transformer_width=128,
        transformer_depth=4,
        transformer_heads=4,
        transformer_mlp=512,
        stem_stride=2,
    ),
    "tsfm-small": dict(
        widths=(16, 32, 64, 128, 256, 256),
        blocks=1,
        transformer_width=192,
        transformer_depth=12,
        transformer_heads=3,
        transformer_mlp=768,
    ),
    "tsfm-base": dict(
        widths=(32, 64, 128, 256, 512, 512),
        blocks=1,
        transformer_width=384,
        transformer_depth=12,
        transformer_heads=6,
        transformer_mlp=1536,
    ),
    "tsfm-large": dict(
        widths=(64, 128, 256, 512, 1024, 1024),
        blocks=(1, 1, 1, 1, 1, 2),
        transformer_width=768,
        transformer_depth=12,
        transformer_heads=12,
        transformer_mlp=3072,
    ),
    "tsfm-1.6b": dict(
        widths=(96, 192, 384, 768, 1536, 1536),
        blocks=3,
        transformer_width=768,
        transformer_depth=12,
        transformer_heads=12,
        transformer_mlp=3072,
    ),
}


def list_models() -> list[str]:
    return list(PRESETS)


def preset_config(
    name: str, in_channels: int = 1, num_classes: int = 1, patch_size=(64, 64, 64), **overrides
) -> TSFMConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown model '{name}'; choose one of {', '.join(PRESETS)}")
    return TSFMConfig(
        in_channels=in_channels,
        num_classes=num_classes,
        patch_size=tuple(patch_size),
        **{**PRESETS[name], **overrides},
    )


def create_model(
    name: str, in_channels: int = 1, num_classes: int = 1, patch_size=(64, 64, 64), **overrides
) -> TSFM:
    """Build a preset. Build large ones under `torch.device("meta")` to count without memory."""
    return TSFM(preset_config(name, in_channels, num_classes, patch_size, **overrides))
