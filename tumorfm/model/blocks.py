"""The CNN blocks of TSFM (paper, section 2.2 and Fig. 1b), in the STU-Net family.

A residual block is two 3x3x3 Conv - InstanceNorm - LeakyReLU layers around an identity (or a
1x1x1 projection when the shape changes). The paper uses pre-activation (norm and activation
before each conv, He et al. 2016: the residual branch sees inputs of both signs); post-activation
(STU-Net's BasicResBlock) is an option.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LAST = torch.channels_last_3d  # prediction's layout (tumorfm.infer.predictor)


class InstanceNorm(nn.InstanceNorm3d):
    """Instance norm that reads a channels-last input in place: as group norm with one group per
    channel, the same function. PyTorch's CPU instance norm copies such a tensor to the standard
    layout and back; prediction runs channels-last (tumorfm.infer.predictor: oneDNN's convs then
    skip their own layout copies), where that copy took a third of a window's time. Other inputs
    (training) take nn.InstanceNorm3d's own path, bit for bit."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 5 and not x.is_contiguous() and x.is_contiguous(memory_format=LAST):
            return F.group_norm(x, x.shape[1], self.weight, self.bias, self.eps)
        return super().forward(x)


class Conv3d(nn.Conv3d):
    """nn.Conv3d that gives one float32 window on a CPU to oneDNN. PyTorch picks its CPU kernel
    by a rule written for 2D images: a batch of one goes to oneDNN only when N*C*D*H > 20480, so
    an 8-channel 32x64x64 window runs the generic im2col kernel, about 5x slower (0.23 s vs 0.05
    s measured on an AMD EPYC). Prediction runs one window at a time, so without this tsfm-tiny
    spent four fifths of a window there. Same weights and state dict; outputs agree to 1e-6.
    Training (gradients on), autocast and other dtypes take nn.Conv3d's own path."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.shape[0] == 1
            and x.dtype == torch.float32
            and x.device.type == "cpu"
            and self.weight.dtype == torch.float32
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
            and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu")  # bf16 prediction: autocast's own conv
            and torch.backends.mkldnn.is_available()
        ):
            return torch.mkldnn_convolution(
                x, self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups
            )
        return super().forward(x)


def _norm(channels: int) -> InstanceNorm:
    return InstanceNorm(channels, eps=1e-5, affine=True)


def _act() -> nn.LeakyReLU:
    return nn.LeakyReLU(0.01, inplace=True)  # its input (a norm output) is used nowhere else


class ResidualBlock(nn.Module):
    """Two 3x3x3 convs with a residual; `stride` 2 on the first conv halves the grid."""

    def __init__(self, in_channels: int, out_channels: int, stride=1, pre_activation: bool = True):
        super().__init__()
        self.pre_activation = pre_activation
        self.conv1 = Conv3d(in_channels, out_channels, 3, stride=stride, padding=1)
        self.conv2 = Conv3d(out_channels, out_channels, 3, padding=1)
        self.norm1 = _norm(in_channels if pre_activation else out_channels)
        self.norm2 = _norm(out_channels)
        self.act = _act()
        strided = any(s != 1 for s in (stride if isinstance(stride, tuple) else (stride,)))
        needs_projection = in_channels != out_channels or strided
        self.skip = (
            Conv3d(in_channels, out_channels, 1, stride=stride)
            if needs_projection
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_activation:
            out = self.conv1(self.act(self.norm1(x)))
            out = self.conv2(self.act(self.norm2(out)))
            return out.add_(self.skip(x))  # in place: a conv's backward needs not its output
        out = self.act(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.act(out + self.skip(x))


class EncoderStage(nn.Sequential):
    """A down-sampling residual block (stride 2, channels doubled) then `blocks - 1` more."""

    def __init__(
        self, in_channels: int, out_channels: int, blocks: int, stride, pre_activation: bool
    ):
        layers = [ResidualBlock(in_channels, out_channels, stride, pre_activation)]
        layers += [
            ResidualBlock(out_channels, out_channels, 1, pre_activation) for _ in range(blocks - 1)
        ]
        super().__init__(*layers)


class UpStage(nn.Module):
    """Up-sampling block: interpolate x2, 1x1x1 conv halving the channels, concatenate the skip,
    then residual blocks (the first one maps 2C -> C).

    The 1x1x1 conv runs before the interpolation: the two commute (both are linear, the conv acts
    per voxel), so the function is the paper's, at an eighth of the cost.
    """

    def __init__(self, in_channels: int, out_channels: int, blocks: int, pre_activation: bool):
        super().__init__()
        self.reduce = Conv3d(in_channels, out_channels, 1)
        self.blocks = nn.Sequential(
            ResidualBlock(2 * out_channels, out_channels, 1, pre_activation),
            *[
                ResidualBlock(out_channels, out_channels, 1, pre_activation)
                for _ in range(blocks - 1)
            ],
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(self.reduce(x), size=skip.shape[2:], mode="nearest")
        return self.blocks(torch.cat([x, skip], dim=1))
