"""Sliding-window inference with Gaussian blending: the window grid and weights of MONAI's
`sliding_window_inference(mode="gaussian", sigma_scale=0.125)` (nnU-Net's sigma = patch / 8).

Why not MONAI's function itself: importing MONAI imports all of it, which costs a prediction
2.5-5 s and 150-300 MB before the first window (measured on this project's 2-core CPU), more than
the windows of a small scan. The test suite checks the two agree (tests/test_window.py).
Memory: the output (K classes) and one weight volume, float32, on the scan's grid, in the CPU's
memory; the weights are summed once per voxel, not per class.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

SIGMA_SCALE = 0.125  # nnU-Net's Gaussian: sigma = patch / 8
MIN_WEIGHT = 1e-3  # MONAI's floor: a window's corner still counts


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start indices along one axis of `size` (at least `patch`): steps of
    patch * (1 - overlap), the last window moved back to end at the edge."""
    if size <= patch:
        return [0]
    step = max(int(patch * (1 - overlap)), 1)
    count = math.ceil((size - patch) / step) + 1
    return [min(i * step, size - patch) for i in range(count)]


def window_count(shape, patch, overlap: float) -> int:
    """How many windows cover `shape` (padded to at least the patch)."""
    return math.prod(len(window_starts(int(s), int(p), overlap)) for s, p in zip(shape, patch))


def gaussian_weights(patch, sigma_scale: float = SIGMA_SCALE) -> torch.Tensor:
    """Per-voxel weight of a window: a separable Gaussian, 1 at the centre, floored at
    MIN_WEIGHT (or the smallest value, when that is larger)."""
    weights = None
    for size in patch:
        x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2.0
        axis = torch.exp(x**2 / (-2 * (size * sigma_scale) ** 2))
        weights = axis if weights is None else weights[..., None] * axis
    return weights.clamp_(min=max(weights.min().item(), MIN_WEIGHT))


def sliding_window(
    image: torch.Tensor,
    patch,
    overlap: float,
    network: Callable[[torch.Tensor], torch.Tensor],
    windows_per_call: int = 1,
    on_windows: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """(C, Z, Y, X) image -> (K, Z, Y, X) float32 network outputs blended over windows, on the
    CPU (as MONAI's with device="cpu": a GPU holds the windows, not the whole scan's outputs).

    `network` maps a (B, C, *patch) batch to (B, K, *patch) on the image's device; the image is
    zero-padded (evenly on both sides) to at least the patch and the padding cut off again.
    `on_windows(n)` is told after each call (a progress bar)."""
    patch = tuple(int(p) for p in patch)
    shape = image.shape[1:]
    pad = [max(p - s, 0) for s, p in zip(shape, patch)]
    if any(pad):
        widths = [w for d in reversed(pad) for w in (d // 2, d - d // 2)]
        image = F.pad(image, widths)
    padded = image.shape[1:]
    starts = list(itertools.product(*(window_starts(s, p, overlap) for s, p in zip(padded, patch))))
    weights = gaussian_weights(patch)
    output, total = None, torch.zeros(padded, dtype=torch.float32)
    for first in range(0, len(starts), windows_per_call):
        group = starts[first : first + windows_per_call]
        regions = [tuple(slice(s, s + p) for s, p in zip(start, patch)) for start in group]
        batch = torch.stack([image[(slice(None), *region)] for region in regions])
        predicted = network(batch).float().cpu()
        if output is None:
            output = torch.zeros((predicted.shape[1], *padded), dtype=torch.float32)
        for region, window in zip(regions, predicted):
            output[(slice(None), *region)] += window * weights
            total[region] += weights
        if on_windows:
            on_windows(len(group))
    output /= total
    crop = tuple(slice(d // 2, d // 2 + s) for d, s in zip(pad, shape))
    return output[(slice(None), *crop)]
