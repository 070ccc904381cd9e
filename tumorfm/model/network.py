"""TSFM: a U-shaped network with a residual-block CNN and a transformer bottleneck.

Encoder stages of residual blocks halve the grid and double the channels (up to a cap), a ViT
encoder works on the voxels of the lowest resolution, and decoder stages up-sample, merge the
skip connection and refine; a 1x1x1 head gives one sigmoid channel per global class (classes may
overlap: an organ and the tumour inside it are both on), with optional deep-supervision heads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tumorfm.model.blocks import Conv3d, EncoderStage, ResidualBlock, UpStage, _act, _norm
from tumorfm.model.transformer import TransformerBottleneck

MIN_BOTTLENECK_EDGE = 3  # an axis is halved only while it stays at least this long


@dataclass
class TSFMConfig:
    in_channels: int = 1
    num_classes: int = 1
    patch_size: tuple[int, int, int] = (64, 64, 64)
    widths: tuple[int, ...] = (32, 64, 128, 256, 320, 320)  # per stage; len = stages
    blocks: int | tuple[int, ...] = 1  # residual blocks per encoder stage (and decoder stage)
    transformer_width: int = 768
    transformer_depth: int = 12
    transformer_heads: int = 12
    transformer_mlp: int = 3072
    projection_kernel: int = 3  # the convs into and out of the transformer width
    pre_activation: bool = True
    deep_supervision: bool = False
    checkpoint_stages: bool = False
    checkpoint_transformer: bool = False
    strides: tuple[tuple[int, int, int], ...] | None = field(default=None)  # default: from patch
    # 2: the stem halves the grid, so every stage runs at half resolution (an eighth of the
    # voxels) and the logits are up-sampled trilinearly at the end: a fast student (issue 20)
    stem_stride: int = 1
    # parameter-efficient fine-tuning (tumorfm.model.adapters); 0 = none, the plain network
    adapter_dim: int = 0  # bottleneck adapter after each transformer layer's MLP
    lora_rank: int = 0  # LoRA on each transformer layer's qkv, attention proj, MLP fc and proj
    lora_alpha: float = 16.0  # LoRA scale = alpha / rank

    def __post_init__(self):
        self.patch_size = tuple(int(p) for p in self.patch_size)
        self.widths = tuple(int(w) for w in self.widths)
        if isinstance(self.blocks, list | tuple):
            self.blocks = tuple(int(b) for b in self.blocks)
        if self.stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, not {self.stem_stride}")
        if any(p % self.stem_stride for p in self.patch_size):
            raise ValueError(
                f"patch {self.patch_size} must divide by the stem stride {self.stem_stride}"
            )
        if self.strides is None:
            self.strides = strides_for_patch(self.stem_grid, len(self.widths) - 1)
        self.strides = tuple(tuple(int(s) for s in stride) for stride in self.strides)
        if self.adapter_dim < 0 or self.lora_rank < 0:
            raise ValueError("adapter_dim and lora_rank must be >= 0 (0 = none)")
        if (self.adapter_dim or self.lora_rank) and self.transformer_depth == 0:
            raise ValueError("adapter_dim and lora_rank need a transformer (transformer_depth > 0)")

    @property
    def blocks_per_stage(self) -> tuple[int, ...]:
        if isinstance(self.blocks, int):
            return (self.blocks,) * len(self.widths)
        return self.blocks

    @property
    def stem_grid(self) -> tuple[int, int, int]:
        """The patch's grid after the stem, where the first stage runs."""
        return tuple(p // self.stem_stride for p in self.patch_size)

    @property
    def bottleneck_grid(self) -> tuple[int, int, int]:
        grid = list(self.stem_grid)
        for stride in self.strides:
            grid = [g // s for g, s in zip(grid, stride)]
        return tuple(grid)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TSFMConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model setting(s) {unknown}; known: {sorted(known)}")
        return cls(**data)


def strides_for_patch(patch_size, downsamplings: int) -> tuple[tuple[int, int, int], ...]:
    """Stride 2 on an axis while its size is even and the half is at least
    MIN_BOTTLENECK_EDGE; 1 after that (112 -> 56 -> 28 -> 14 -> 7 -> 7)."""
    size, strides = list(patch_size), []
    for _ in range(downsamplings):
        stride = tuple(2 if s % 2 == 0 and s // 2 >= MIN_BOTTLENECK_EDGE else 1 for s in size)
        size = [s // st for s, st in zip(size, stride)]
        strides.append(stride)
    return tuple(strides)


class TSFM(nn.Module):
    def __init__(self, config: TSFMConfig):
        super().__init__()
        self.config = config
        c, widths, blocks = config, config.widths, config.blocks_per_stage
        if len(blocks) != len(widths):
            raise ValueError(f"blocks {blocks} needs one entry per stage ({len(widths)})")
        self.stem = Conv3d(c.in_channels, widths[0], 3, stride=c.stem_stride, padding=1)
        self.encoder = nn.ModuleList(
            [EncoderStage(widths[0], widths[0], blocks[0], 1, c.pre_activation)]
        )
        for i in range(1, len(widths)):
            self.encoder.append(
                EncoderStage(
                    widths[i - 1], widths[i], blocks[i], c.strides[i - 1], c.pre_activation
                )
            )
        self.bottleneck = (
            TransformerBottleneck(
                widths[-1],
                c.bottleneck_grid,
                c.transformer_width,
                c.transformer_depth,
                c.transformer_heads,
                c.transformer_mlp,
                c.projection_kernel,
                c.checkpoint_transformer,
                c.adapter_dim,
                c.lora_rank,
                c.lora_alpha,
            )
            if c.transformer_depth > 0
            else nn.Identity()
        )
        self.decoder = nn.ModuleList(
            UpStage(widths[i + 1], widths[i], blocks[i], c.pre_activation)
            for i in reversed(range(len(widths) - 1))
        )
        self.final = nn.Sequential(_norm(widths[0]), _act()) if c.pre_activation else nn.Identity()
        self.head = Conv3d(widths[0], c.num_classes, 1)
        # deep supervision: one head per lower decoder stage, coarsest last
        self.aux_heads = (
            nn.ModuleList(
                nn.Sequential(_norm(widths[i]), _act(), Conv3d(widths[i], c.num_classes, 1))
                if c.pre_activation
                else Conv3d(widths[i], c.num_classes, 1)
                for i in range(1, len(widths) - 1)
            )
            if c.deep_supervision
            else nn.ModuleList()
        )

    def _run(self, stage: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
        if self.config.checkpoint_stages and torch.is_grad_enabled():
            return checkpoint(stage, *inputs, use_reentrant=False)
        return stage(*inputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Logits (B, classes, *grid); in training with deep supervision, a list of logits from
        full resolution down (each coarser by the encoder's strides)."""
        skips, grid = [], x.shape[2:]
        x = self.stem(x)
        for stage in self.encoder:
            x = self._run(stage, x)
            skips.append(x)
        x = self.bottleneck(skips.pop())
        supervised = bool(self.aux_heads) and self.training
        decoded = []  # kept only for the deep-supervision heads: in inference each goes at once
        for stage in self.decoder:
            x = self._run(stage, x, skips.pop())
            if supervised:
                decoded.append(x)
        logits = self.head(self.final(x))
        if self.config.stem_stride > 1:
            logits = F.interpolate(logits, size=grid, mode="trilinear", align_corners=False)
        if not supervised:
            return logits
        lower = list(reversed(decoded[:-1]))  # finest first, skipping full resolution
        return [logits] + [head(features) for head, features in zip(self.aux_heads, lower)]

    def parts(self) -> dict[str, list[nn.Module]]:
        """The network's parts, for parameter counts per part."""
        return {
            "encoder": [self.stem, self.encoder],
            "bottleneck": [self.bottleneck],
            "decoder": [self.decoder, self.final],
            "heads": [self.head, self.aux_heads],
        }


__all__ = ["TSFM", "TSFMConfig", "strides_for_patch", "ResidualBlock"]
