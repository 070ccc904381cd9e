"""The transformer bottleneck (paper, Fig. 1b D-Block): a ViT encoder over the lowest-resolution
voxels of the U-Net, one token per voxel.

Projection to the transformer width (3x3x3 conv), a learnable absolute position embedding over
the bottleneck grid, pre-LayerNorm transformer layers, a final LayerNorm, a projection back, and a
residual around it all. The position embedding is stored as a 3D grid so it can be resized
(trilinear) when the patch size changes: the CNN weights carry over to any input size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tumorfm.model.adapters import Adapter, LoRALinear
from tumorfm.model.blocks import Conv3d


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"transformer width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.heads, width // self.heads).unbind(2)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        )
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, width))


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc = nn.Linear(width, hidden)
        self.proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class TransformerLayer(nn.Module):
    """Pre-LayerNorm transformer encoder layer (ViT), optionally with a bottleneck adapter after
    the MLP (adapter_dim > 0) and LoRA on its four linears (lora_rank > 0), for fine-tuning."""

    def __init__(
        self,
        width: int,
        heads: int,
        mlp_width: int,
        adapter_dim: int = 0,
        lora_rank: int = 0,
        lora_alpha: float = 16.0,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = MLP(width, mlp_width)
        self.adapter = Adapter(width, adapter_dim) if adapter_dim > 0 else None
        if lora_rank > 0:
            linears = [
                (self.attn, "qkv"),
                (self.attn, "proj"),
                (self.mlp, "fc"),
                (self.mlp, "proj"),
            ]
            for module, name in linears:
                setattr(module, name, LoRALinear(getattr(module, name), lora_rank, lora_alpha))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x if self.adapter is None else self.adapter(x)


class TransformerBottleneck(nn.Module):
    """x + proj_out(LN(layers(proj_in(x) + position))), on the bottleneck grid."""

    def __init__(
        self,
        channels: int,
        grid: tuple[int, int, int],
        width: int = 768,
        depth: int = 12,
        heads: int = 12,
        mlp_width: int = 3072,
        projection_kernel: int = 3,
        checkpointing: bool = False,
        adapter_dim: int = 0,
        lora_rank: int = 0,
        lora_alpha: float = 16.0,
    ):
        super().__init__()
        padding = projection_kernel // 2
        self.proj_in = Conv3d(channels, width, projection_kernel, padding=padding)
        self.position = nn.Parameter(torch.zeros(1, width, *grid))
        self.layers = nn.ModuleList(
            TransformerLayer(width, heads, mlp_width, adapter_dim, lora_rank, lora_alpha)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)
        self.proj_out = Conv3d(width, channels, projection_kernel, padding=padding)
        self.checkpointing = checkpointing
        nn.init.trunc_normal_(self.position, std=0.02)
        # a fresh bottleneck starts near identity: the residual carries the CNN's features
        with torch.no_grad():
            self.proj_out.weight.mul_(1e-2)
            self.proj_out.bias.zero_()

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(self.position.shape[2:])

    def position_for(self, grid: tuple[int, ...]) -> torch.Tensor:
        """The position embedding on `grid`, interpolated (trilinear) if the grid is new."""
        if tuple(grid) == self.grid:
            return self.position
        return F.interpolate(self.position, size=tuple(grid), mode="trilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.proj_in(x)
        grid = tokens.shape[2:]
        tokens = (tokens + self.position_for(grid)).flatten(2).transpose(1, 2)
        for layer in self.layers:
            if self.checkpointing and torch.is_grad_enabled():
                tokens = checkpoint(layer, tokens, use_reentrant=False)
            else:
                tokens = layer(tokens)
        tokens = self.norm(tokens).transpose(1, 2).reshape(*tokens.shape[:1], -1, *grid)
        return x + self.proj_out(tokens)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Weights saved at another patch size: resize their position grid to ours."""
        key = prefix + "position"
        stored = state_dict.get(key)
        if stored is not None and stored.dim() == 5 and stored.shape[2:] != self.position.shape[2:]:
            if stored.shape[1] == self.position.shape[1] and not stored.is_meta:
                state_dict[key] = F.interpolate(
                    stored.to(self.position.dtype),
                    size=self.grid,
                    mode="trilinear",
                    align_corners=False,
                )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
