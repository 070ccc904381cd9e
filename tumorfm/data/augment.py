"""nnU-Net v2's default 3D training augmentation, run by batchgeneratorsv2 (nnU-Net's own library).

The set and its probabilities are those of nnUNetTrainer.get_training_transforms: rotation and
scaling from an enlarged crop (so rotated corners are image, not padding), Gaussian noise, blur,
brightness, contrast, low resolution, inverted and plain gamma, mirroring. Elastic deformation is
there but off, as in nnU-Net.

Why batchgeneratorsv2 and not MONAI: benchmarks/augment.py runs the same set in both on real
sarcoma CT patches, one thread, nearest-neighbour labels in both (results/augment.json). With
nnU-Net's probabilities the median sample takes 4.3 ms vs 20.1 ms (64^3) and 27 ms vs 273 ms
(96x160x160); with every transform on, 26 vs 37 ms and 341 vs 562 ms. MONAI's RandAffine resamples
every sample, even one it neither rotates nor scales, and MONAI has no exact twin of several
nnU-Net choices (isotropic scaling drawn apart from rotation, per-channel probabilities). Both
install beside torch 2.13.0 without torchvision or CUDA wheels; batchgeneratorsv2 brings 21
packages (batchgenerators, pandas, scikit-image, scikit-learn, ...) against MONAI's one. We take
that for 5-10x faster augmentation that is nnU-Net's own rather than an imitation of it.

batchgeneratorsv2 draws from numpy's and torch's global generators. Each call here seeds both from
the sample's own seed and restores them afterwards, so a sample depends on its seed only, whatever
process or worker runs it, and the caller's generators are left as they were.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

CROP_MIN_SCALE = 0.85  # nnU-Net sizes the enlarged crop for this zoom, not for its full 0.7 range


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges; the defaults are nnU-Net v2's for 3D patches."""

    p_rotation: float = 0.2
    rotation_degrees: float = 30.0  # uniform in +-this, about each axis
    p_scaling: float = 0.2
    scaling: tuple[float, float] = (0.7, 1.4)  # one factor for all axes; > 1 shrinks objects
    p_elastic: float = 0.0
    elastic_scale: tuple[float, float] = (0.05, 0.15)  # smoothing sigma, fraction of the patch
    elastic_magnitude: tuple[float, float] = (0.0, 5.0)  # largest displacement, voxels
    p_noise: float = 0.1
    noise_std: tuple[float, float] = (0.0, 0.1)  # nnU-Net's "noise_variance", used as std
    p_blur: float = 0.2
    p_blur_per_channel: float = 0.5
    blur_sigma: tuple[float, float] = (0.5, 1.0)  # voxels, drawn per axis
    p_brightness: float = 0.15
    brightness: tuple[float, float] = (0.75, 1.25)  # multiplier
    p_contrast: float = 0.15
    contrast: tuple[float, float] = (0.75, 1.25)  # about the mean, range preserved
    p_low_resolution: float = 0.25
    p_low_resolution_per_channel: float = 0.5
    low_resolution: tuple[float, float] = (0.5, 1.0)  # downsampling factor
    p_inverted_gamma: float = 0.1
    p_gamma: float = 0.3
    gamma: tuple[float, float] = (0.7, 1.5)  # mean and std are kept
    mirror_axes: tuple[int, ...] = (0, 1, 2)  # each flipped with p 0.5
    # "linear": nnU-Net's per-label linear interpolation (smooth edges). "nearest": the labels of
    # rotated or scaled samples cost ~30% less (benchmarks/augment.py, all transforms on)
    label_interpolation: str = "linear"

    @classmethod
    def mirror_only(cls) -> AugmentConfig:
        """Only flips: what tests use to check that image and labels move together."""
        off = {name: 0.0 for name in cls.__dataclass_fields__ if name.startswith("p_")}
        return replace(cls(), **off)

    @property
    def spatial(self) -> bool:
        return max(self.p_rotation, self.p_scaling, self.p_elastic) > 0

    def crop_size(self, patch_size) -> tuple[int, ...]:
        """What to cut from the case: the patch itself, or the enlarged crop when resampling."""
        if not self.spatial:
            return tuple(int(p) for p in patch_size)
        degrees = self.rotation_degrees if self.p_rotation > 0 else 0.0
        return enlarged_patch_size(patch_size, degrees, CROP_MIN_SCALE)


def enlarged_patch_size(patch, degrees: float, min_scale: float) -> tuple[int, int, int]:
    """The crop that holds the patch rotated by up to +-degrees about any axis and zoomed in by
    min_scale, like nnU-Net's get_patch_size (but symmetric in the rotation's sign)."""
    size = np.array(patch, dtype=float)
    extent = size.copy()
    c, s = abs(math.cos(math.radians(degrees))), abs(math.sin(math.radians(degrees)))
    for axis in range(3):
        p, q = [a for a in range(3) if a != axis]
        extent[p] = max(extent[p], size[p] * c + size[q] * s)
        extent[q] = max(extent[q], size[p] * s + size[q] * c)
    return tuple(int(e) for e in extent / min_scale)


class Augmenter:
    """The pipeline for one patch size. Call it per sample: (image, label, seed) -> patch."""

    def __init__(self, patch_size, config: AugmentConfig | None = None):
        self.config = config or AugmentConfig()
        self.patch_size = tuple(int(p) for p in patch_size)
        self.crop_size = self.config.crop_size(self.patch_size)
        self.pipeline = _build(self.patch_size, self.config)

    def __call__(
        self, image: np.ndarray, label: np.ndarray, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image (C, *crop) float32, label (*crop) int -> (C, *patch) float32, (*patch) int16."""
        assert tuple(image.shape[1:]) == self.crop_size, (image.shape, self.crop_size)
        data = {
            "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
            "segmentation": torch.from_numpy(np.ascontiguousarray(label, dtype=np.int16))[None],
        }
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            state = np.random.get_state()
            np.random.seed(seed % 2**32)
            try:
                out = self.pipeline(**data)
            finally:
                np.random.set_state(state)
        return out["image"].contiguous(), out["segmentation"][0].contiguous()


def _build(patch_size: tuple[int, ...], config: AugmentConfig):
    """nnU-Net's transform list, in nnU-Net's order. Imported here: the library takes ~1 s."""
    from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
    from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
    from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
    from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
    from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
    from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform
    from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
    from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
    from batchgeneratorsv2.transforms.utils.random import RandomTransform

    if config.label_interpolation not in ("linear", "nearest"):
        raise ValueError(
            f"label_interpolation must be 'linear' or 'nearest', not '{config.label_interpolation}'"
        )
    c = config
    angle = math.radians(c.rotation_degrees)
    transforms = []
    if c.spatial:
        transforms.append(
            SpatialTransform(
                patch_size,
                patch_center_dist_from_border=0,
                random_crop=False,  # the loader chose the location; take the centre of its crop
                p_elastic_deform=c.p_elastic,
                elastic_deform_scale=c.elastic_scale,
                elastic_deform_magnitude=c.elastic_magnitude,
                p_rotation=c.p_rotation,
                rotation=(-angle, angle),
                p_scaling=c.p_scaling,
                scaling=c.scaling,
                p_synchronize_scaling_across_axes=1,
                mode_seg="bilinear" if c.label_interpolation == "linear" else "nearest",
                border_mode_seg="constant",
                padding_value_seg=0,
            )
        )

    def maybe(transform, p: float) -> None:
        if p > 0:
            transforms.append(RandomTransform(transform, apply_probability=p))

    # benchmark=False: blur picks FFT or direct convolution by a fixed rule, never by timing
    # (timing would make the result depend on the machine's load)
    maybe(
        GaussianNoiseTransform(c.noise_std, p_per_channel=1, synchronize_channels=True), c.p_noise
    )
    maybe(
        GaussianBlurTransform(
            c.blur_sigma,
            synchronize_channels=False,
            synchronize_axes=False,
            p_per_channel=c.p_blur_per_channel,
            benchmark=False,
        ),
        c.p_blur,
    )
    maybe(
        MultiplicativeBrightnessTransform(
            BGContrast(c.brightness), synchronize_channels=False, p_per_channel=1
        ),
        c.p_brightness,
    )
    maybe(
        ContrastTransform(
            BGContrast(c.contrast), preserve_range=True, synchronize_channels=False, p_per_channel=1
        ),
        c.p_contrast,
    )
    maybe(
        SimulateLowResolutionTransform(
            c.low_resolution,
            synchronize_channels=False,
            synchronize_axes=True,
            ignore_axes=None,
            allowed_channels=None,
            p_per_channel=c.p_low_resolution_per_channel,
        ),
        c.p_low_resolution,
    )
    for p_invert, p in ((1, c.p_inverted_gamma), (0, c.p_gamma)):
        maybe(
            GammaTransform(
                BGContrast(c.gamma),
                p_invert_image=p_invert,
                synchronize_channels=False,
                p_per_channel=1,
                p_retain_stats=1,
            ),
            p,
        )
    if c.mirror_axes:
        transforms.append(MirrorTransform(allowed_axes=tuple(c.mirror_axes)))
    return ComposeTransforms(transforms)
