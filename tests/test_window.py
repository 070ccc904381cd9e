"""tumorfm.infer.window against MONAI's sliding_window_inference, which it stands in for."""

import pytest
import torch

from tumorfm.infer.window import gaussian_weights, sliding_window, window_count


class _Local(torch.nn.Module):
    """A network whose output depends on the window's position (a conv with zero padding sees
    the window's edges), so a misplaced or misweighted window changes the blend."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(2, 3, 3, padding=1)
        self.calls = 0

    def forward(self, x):
        self.calls += x.shape[0]
        return self.conv(x)


@pytest.mark.parametrize(
    "shape, patch, overlap, per_call",
    [
        ((37, 50, 41), (16, 24, 24), 0.5, 1),
        ((37, 50, 41), (16, 24, 24), 0.25, 3),
        ((10, 50, 20), (16, 24, 24), 0.5, 2),  # smaller than the patch on two axes: padded
        ((16, 24, 24), (16, 24, 24), 0.5, 1),  # exactly one window
    ],
)
def test_same_as_monai(shape, patch, overlap, per_call):
    from monai.inferers import sliding_window_inference

    image = torch.randn(2, *shape)
    network = _Local()
    with torch.inference_mode():
        ours = sliding_window(image, patch, overlap, network, per_call)
        calls, network.calls = network.calls, 0
        theirs = sliding_window_inference(
            image[None], patch, per_call, network, overlap=overlap, mode="gaussian",
            sigma_scale=0.125,
        )[0]  # fmt: skip
    assert ours.shape == (3, *shape)
    assert calls == network.calls == window_count(shape, patch, overlap)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_weights_peak_at_the_centre_and_are_floored():
    weights = gaussian_weights((8, 9, 10))
    assert weights.shape == (8, 9, 10)
    assert weights.max() <= 1.0 and weights.min() >= 1e-3
    centre = weights[3:5, 4, 4:6].min()
    assert centre == weights.max() and weights[0, 0, 0] < 0.01 * centre


def test_progress_is_told_every_window():
    told = []
    sliding_window(torch.zeros(1, 20, 20, 20), (8, 8, 8), 0.5, lambda b: b, 2, told.append)
    assert sum(told) == window_count((20, 20, 20), (8, 8, 8), 0.5) == 4**3  # starts 0, 4, 8, 12
