"""MultiTalent's partial-label loss: BCE + batch soft Dice over the classes each sample annotates.

Every global class has its own sigmoid channel (classes may overlap: an organ channel includes its
tumour). A sample only says something about the classes its source dataset annotates, so its
other channels must not be trained at all: they are masked out with `torch.where` *before* any
sigmoid or product, and get a gradient of exactly zero, even if their logits are inf or NaN.

    loss = BCE (mean over the annotated (sample, class) pairs and their voxels)
         + 1 - mean over classes annotated in the batch of the soft Dice, with tp, fp, fn summed
           over the samples that annotate the class and all voxels (nnU-Net's batch Dice)

Under DDP each rank holds a slice of the global batch and the loss is that of the global batch:
the Dice sums go through a differentiable all-reduce (whose backward all-reduces the gradients:
every rank gets W x dL/dsums, DDP divides by W, so each parameter gets exactly the single-process
gradient), and the BCE is divided by the global count of annotated voxels and multiplied by W
(DDP's averaging divides by W again). This holds for any gradient reduction that averages over
the same process group: DDP, and FSDP by default. Averaged over the ranks, `loss` is the
global-batch loss; the logged `bce`, `dice`, `tp`, `fp`, `fn` are global-batch values already.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class LossOutput:
    """`loss` is the tensor to backpropagate (under DDP, this rank's share: its mean over ranks is
    the global-batch loss). The rest is detached, global-batch, for logging."""

    loss: Tensor
    bce: Tensor
    dice: Tensor  # detached mean soft Dice over the classes annotated in the batch (0 if none)
    tp: Tensor  # (K,) detached sums over the global batch, for a pseudo-Dice per class
    fp: Tensor
    fn: Tensor


SMOOTH = 1e-5  # keeps the Dice of an empty class and an empty prediction at 1


def batch_dice(tp: Tensor, sum_p: Tensor, sum_y: Tensor, smooth: float = SMOOTH) -> Tensor:
    """Soft Dice from its sums over the batch and the voxels (sum p + sum y = 2tp + fp + fn)."""
    return (2 * tp + smooth) / (sum_p + sum_y + smooth).clamp(min=1e-8)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the backward sums the gradients over ranks. This is what
    `torch.distributed.nn.functional.all_reduce` does, but torch 2.13 deprecates that function
    (a FutureWarning per process) in favour of a private API."""

    @staticmethod
    def forward(ctx, tensor: Tensor, group) -> Tensor:
        ctx.group = group
        tensor = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(tensor, group=group)
        return tensor

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _AllReduceSum.apply(grad, ctx.group), None


def partial_label_loss(
    logits: Tensor,
    target: Tensor,
    annotated: Tensor,
    smooth: float = SMOOTH,
    distributed: bool | None = None,
    group: dist.ProcessGroup | None = None,
) -> LossOutput:
    """Logits and target (B, K, *grid), target in {0, 1}; `annotated` (B, K) bool says which
    classes each sample's dataset annotates. `distributed=None` means "if torch.distributed is
    initialised"; `group` is the process group (default: the world)."""
    if target.shape != logits.shape or annotated.shape != logits.shape[:2]:
        raise ValueError(
            f"logits {tuple(logits.shape)}, target {tuple(target.shape)} and annotated "
            f"{tuple(annotated.shape)} must be (B, K, *grid), (B, K, *grid) and (B, K)"
        )
    if distributed is None:
        distributed = dist.is_available() and dist.is_initialized()
    dtype = torch.promote_types(logits.dtype, torch.float32)  # half-precision sums overflow
    annotated = annotated.to(device=logits.device, dtype=torch.bool)
    mask = annotated.view(*annotated.shape, *[1] * (logits.ndim - 2))
    x = torch.where(mask, logits.to(dtype), 0.0)  # unannotated entries: constant, zero gradient
    y = target.to(dtype)

    bce_sum = F.binary_cross_entropy_with_logits(x, y, weight=mask.to(dtype), reduction="sum")
    # no-grad statistics of the global batch, one all-reduce: bce sum, pairs, pairs per class
    pairs = annotated.sum(0).to(torch.float64)
    stats = torch.cat([bce_sum.detach().to(torch.float64)[None], pairs.sum()[None], pairs])
    if distributed:
        dist.all_reduce(stats, group=group)
    world = dist.get_world_size(group) if distributed else 1
    entries = stats[1].clamp(min=1) * logits.shape[2:].numel()  # annotated voxel entries
    bce = bce_sum * (world / entries).to(dtype)
    bce_global = (stats[0] / entries).to(dtype)

    p = torch.sigmoid(x)
    grid = tuple(range(2, x.ndim))
    sums = torch.stack([v.sum(grid) for v in (p * y, p, y)])  # (3, B, K): tp, sum p, sum y
    sums = torch.where(annotated, sums, 0.0).sum(1)  # (3, K), over the annotating samples only
    if distributed:
        sums = _AllReduceSum.apply(sums, group)
    tp, sum_p, sum_y = sums
    dice = batch_dice(tp, sum_p, sum_y, smooth)
    present = stats[2:] > 0  # classes annotated by at least one sample of the global batch
    n_present = present.sum().clamp(min=1)
    dice_loss = torch.where(present, 1 - dice, 0.0).sum() / n_present
    mean_dice = torch.where(present, dice, 0.0).sum().detach() / n_present
    return LossOutput(
        loss=bce + dice_loss,
        bce=bce_global,
        dice=mean_dice.to(dtype),
        tp=tp.detach(),
        fp=(sum_p - tp).detach(),
        fn=(sum_y - tp).detach(),
    )


def deep_supervision_weights(outputs: int, zero_coarsest: bool = False) -> list[float]:
    """1/2^i for output i (full resolution first), normalised to sum 1; nnU-Net also zeroes the
    coarsest output's weight (only when there are at least two outputs)."""
    weights = [1 / 2**i for i in range(outputs)]
    if zero_coarsest and outputs > 1:
        weights[-1] = 0.0
    return [w / sum(weights) for w in weights]


def downsample_target(target: Tensor, size: torch.Size | tuple[int, ...]) -> Tensor:
    """Nearest-neighbour: with TSFM's integer strides it keeps voxel s*i, the centre of the
    stride-s convs that made coarse voxel i; max-pooling would dilate every mask instead."""
    if tuple(target.shape[2:]) == tuple(size):
        return target
    dtype = torch.promote_types(target.dtype, torch.float32)
    return F.interpolate(target.to(dtype), size=tuple(size), mode="nearest")


class PartialLabelLoss(nn.Module):
    """`partial_label_loss` on one output or on a deep-supervision list (full resolution first),
    the target downsampled to each output. The logged `bce`, `dice`, `tp`, `fp`, `fn` are those of
    the full-resolution output. A single tensor (as TSFM returns in eval mode) is scored alone."""

    def __init__(
        self,
        deep_supervision_outputs: int = 1,
        zero_coarsest: bool = False,
        smooth: float = SMOOTH,
        distributed: bool | None = None,
        group: dist.ProcessGroup | None = None,
    ):
        super().__init__()
        self.weights = deep_supervision_weights(deep_supervision_outputs, zero_coarsest)
        self.smooth, self.distributed, self.group = smooth, distributed, group

    def forward(
        self, logits: Tensor | list[Tensor], target: Tensor, annotated: Tensor
    ) -> LossOutput:
        outputs = [logits] if isinstance(logits, Tensor) else list(logits)
        weights = [1.0] if isinstance(logits, Tensor) else self.weights
        if len(outputs) != len(weights):
            raise ValueError(f"got {len(outputs)} outputs, expected {len(weights)}")
        # a zero weight is still computed: DDP wants a (zero) gradient for every head
        results = [
            partial_label_loss(
                out,
                downsample_target(target, out.shape[2:]),
                annotated,
                self.smooth,
                self.distributed,
                self.group,
            )
            for out in outputs
        ]
        total = sum(w * r.loss for w, r in zip(weights, results))
        return dataclasses.replace(results[0], loss=total)
