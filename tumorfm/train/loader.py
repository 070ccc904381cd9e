"""Training patches from the preprocessed cache: deterministic, resumable, sliced per rank.

Item `step` of PatchBatches is the batch of that training step, and every sample in it is a pure
function of (seed, step, i), i its index in the global batch: it has its own generator,
np.random.default_rng([seed, step, i]), which draws the case, the location and the augmentation
seed. So a run resumed at step k sees the batches an uninterrupted run sees, whatever the number
of DataLoader workers, and rank r of W computes exactly samples [r*B/W, (r+1)*B/W) of the batch.

Sampling follows nnU-Net v2's data loader: the last third of the global batch
(oversample_foreground) holds a foreground voxel of a label drawn uniformly among those the case
holds, so rare tumours are seen as often as their organs; the rest is anywhere. With spatial
augmentation an enlarged crop is cut first and the rotation or scaling produces the final patch
from it. Cases smaller than the crop are padded with 0 (image and label).

Placement (`placement`). nnU-Net centres a case smaller than the patch in it, and a foreground
sample centres its voxel ("centred", the default). On scans cropped around their tumour (the
sarcoma set) every patch then holds the tumour in the same place, and the network learns where
in its window a tumour sits as well as what one looks like: the shipped bundle, trained that way,
scores 0.654 on its held-out sarcomas as cropped and 0.575 on average when each is moved within
the window grid (0.462 at worst; benchmarks/placement.py). "anywhere" lets the patch hang out of
the case by up to half its size on any side, and puts the foreground voxel anywhere in it, so
that the tumour of a case cropped around it lands anywhere in the patch. (Keeping such a case
whole inside the patch, as this option first did, moved nothing: the sarcoma crops nearly fill
the 48x96x96 patch, and their tumours stayed within 15 voxels of its centre in-plane.) It makes a
network find a tumour wherever it sits in the window (benchmarks/patch_position.py), but in runs
of 400 iterations it cost Dice on the held-out sarcomas (benchmarks/placement.py), so nnU-Net's
rule stays the default.

A dataset with online
synthesis (pool file) has that share of its samples centred on its organ, with synthetic tumours
put in (tumorfm.synth.online) from a generator of their own, before augmentation.
"""

from __future__ import annotations

import math
import sys
from contextlib import contextmanager

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from tumorfm.data.augment import AugmentConfig, Augmenter
from tumorfm.data.cache import CachedCase
from tumorfm.defaults import PLACEMENT, PLACEMENTS
from tumorfm.errors import TumorFMError
from tumorfm.synth.online import insert_tumours

SYNTHESIS_STREAM = 1  # the fourth key of a sample's synthesis generator


def synthesis_draw(seed: int, step: int, index: int, probability: float):
    """Whether sample `index` of step `step` gets synthetic tumours, and the generator that then
    makes them: a pure function of these, so a benchmark can count the patches a run changed."""
    synth = np.random.default_rng([seed, int(step), int(index), SYNTHESIS_STREAM])
    return probability > 0 and synth.random() < probability, synth


class PatchBatches(Dataset):
    """Map-style: batches[step] -> this rank's part of the batch of training step `step`."""

    def __init__(
        self,
        cases: list[CachedCase],
        weights: list[float],
        classes: list[str],
        class_regions: list[list[int]],
        patch_size: tuple[int, int, int],
        batch_size: int,
        seed: int,
        augment: bool = True,
        oversample_foreground: float = 0.33,
        rank: int = 0,
        world_size: int = 1,
        augment_config: AugmentConfig | None = None,
        synthesis: dict[str, dict] | None = None,
        placement: str = PLACEMENT,
    ):
        if not cases:
            raise ValueError("no cases to sample from")
        if len(weights) != len(cases):
            raise ValueError(f"{len(weights)} weights for {len(cases)} cases")
        if len(class_regions) != len(classes):
            raise ValueError(f"{len(class_regions)} class regions for {len(classes)} classes")
        if batch_size < 1 or world_size < 1 or batch_size % world_size:
            raise ValueError(f"batch size {batch_size} is not divisible by world size {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        if placement not in PLACEMENTS:
            raise ValueError(f"placement '{placement}': choose one of {', '.join(PLACEMENTS)}")
        if not 0 <= oversample_foreground <= 1:
            raise ValueError(f"oversample_foreground {oversample_foreground} is not in [0, 1]")
        weights = np.asarray(weights, dtype=float)
        if (weights < 0).any() or not weights.sum() > 0 or not np.isfinite(weights).all():
            raise ValueError("sampling weights must be finite, non-negative and not all zero")
        self.patch_size = tuple(int(p) for p in patch_size)
        check_cases(cases, self.patch_size)
        self.cases = list(cases)
        self.cumulative = np.cumsum(weights) / weights.sum()
        self.classes = list(classes)
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.first_forced = round(batch_size * (1 - oversample_foreground))  # nnU-Net's rule
        self.augmenter = Augmenter(self.patch_size, augment_config) if augment else None
        self.crop_size = self.augmenter.crop_size if augment else self.patch_size
        self.placement = placement
        # label value -> membership in each class region, so the target is one gather
        size = max([len(classes), *(v for region in class_regions for v in region)]) + 1
        lookup = np.zeros((size, len(classes)), dtype=np.uint8)
        for k, region in enumerate(class_regions):
            lookup[list(region), k] = 1
        self.lookup = torch.from_numpy(lookup)
        self.synthesis = synthesis or {}  # dataset -> tumorfm.synth.online spec
        self.annotated = torch.tensor(
            [[c in case.properties["annotated_classes"] for c in classes] for case in cases],
            dtype=torch.bool,
        )

    def __getitem__(self, step: int) -> dict:
        per_rank = self.batch_size // self.world_size
        with _one_thread():  # same floats in the main process as in a (one-thread) worker
            samples = [
                self.sample(step, i)
                for i in range(self.rank * per_rank, (self.rank + 1) * per_rank)
            ]
        return {
            "image": torch.stack([s["image"] for s in samples]),
            "target": torch.stack([s["target"] for s in samples]),
            "annotated": torch.stack([s["annotated"] for s in samples]),
            "forced_label": torch.tensor([s["forced_label"] for s in samples]),
            "case_id": [s["case_id"] for s in samples],
            "dataset": [s["dataset"] for s in samples],
        }

    def sample(self, step: int, index: int) -> dict:
        """Sample `index` of the global batch of `step`: its own generator, nothing shared."""
        rng = np.random.default_rng([self.seed, int(step), int(index)])
        case_index = min(
            int(np.searchsorted(self.cumulative, rng.random(), side="right")), len(self.cases) - 1
        )
        case = self.cases[case_index]
        image, label = case.image(), case.label()
        annotated = self.annotated[case_index]
        # synthesis draws from a stream of its own: runs without it sample as they always did
        spec = self.synthesis.get(case.properties["dataset"])
        chosen, synth = synthesis_draw(self.seed, step, index, spec["probability"] if spec else 0)
        organ = spec["organ_value"] if chosen else None  # None for an HU-window organ
        force = index >= self.first_forced or organ is not None
        start, forced_label = self._location(label.shape, case if force else None, rng, organ)
        image = crop(image, start, self.crop_size, np.float32)
        label = crop(label[None], start, self.crop_size, np.int16)[0]
        if chosen:
            image, label, inserted = insert_tumours(image, label, spec, int(synth.integers(2**32)))
            if inserted:
                annotated = annotated.clone()
                annotated[spec["tumour_value"] - 1] = True
        augment_seed = int(rng.integers(2**32))  # drawn always: same stream with augment off
        if self.augmenter is not None:
            image, label = self.augmenter(image, label, augment_seed)
        else:
            image, label = torch.from_numpy(image), torch.from_numpy(label)
        target = self.lookup[label.long()].permute(3, 0, 1, 2).contiguous()
        return {
            "image": image,
            "target": target,
            "annotated": annotated,
            "forced_label": forced_label,
            "case_id": case.case_id,
            "dataset": case.properties["dataset"],
        }

    def _location(
        self, shape, case: CachedCase | None, rng, only: int | None = None
    ) -> tuple[np.ndarray, int]:
        """Start of the crop (may be negative: padding) and the label it is centred on (0: none);
        `only` centres it on that label (an organ to put a synthetic tumour in), if present.

        Like nnU-Net's get_bbox: the crop may hang out of the image by half the enlargement, or
        more when the case is smaller than the crop. A forced crop puts the voxel at the patch's
        centre ("centred") or anywhere in the patch ("anywhere"), then is shifted (on both sides,
        nnU-Net only on the lower) to stay in that range.
        """
        shape, crop_size = np.array(shape), np.array(self.crop_size)
        patch = np.array(self.patch_size)
        need = np.maximum(crop_size - patch, crop_size - shape)
        low = -(need // 2)
        high = shape + need // 2 + need % 2 - crop_size
        margin = (crop_size - patch) // 2  # where the patch starts inside the crop
        anywhere = self.placement == "anywhere"
        if anywhere:  # the patch may hang out of the case by half its size, on any side
            reach = patch // 2
            low = np.minimum(low, -reach - margin)
            high = np.maximum(high, shape - patch + reach - margin)
        if case is not None:
            locations = case.class_locations()
            present = sorted(value for value, voxels in locations.items() if len(voxels))
            present = [only] if only in present else present
            if present:  # a case without foreground falls back to a random crop, as in nnU-Net
                value = present[rng.integers(len(present))]
                voxel = locations[value][rng.integers(len(locations[value]))]
                spot = margin + rng.integers(0, patch) if anywhere else crop_size // 2
                return np.clip(voxel - spot, low, high), value
        return rng.integers(low, high + 1), 0


def crop(array: np.ndarray, start, size, dtype) -> np.ndarray:
    """array[:, start:start+size] as a new array, zero where the box leaves the array."""
    out = np.zeros((array.shape[0], *size), dtype=dtype)
    src, dst = [slice(None)], [slice(None)]
    for a, s, n in zip(start, size, array.shape[1:]):
        lo, hi = max(int(a), 0), min(int(a) + s, n)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - a, hi - a))
    out[tuple(dst)] = array[tuple(src)]
    return out


def check_cases(cases: list[CachedCase], patch_size: tuple[int, ...]) -> None:
    """One-line errors for a pool that cannot give patches: channels differ, or all too small."""
    channels = {}
    for case in cases:
        channels.setdefault(case.properties["image_shape"][0], case.properties["dataset"])
    if len(channels) > 1:
        (a, name_a), (b, name_b) = list(channels.items())[:2]
        raise TumorFMError(
            f"datasets '{name_a}' ({a} channel{'s' * (a != 1)}) and '{name_b}' "
            f"({b} channel{'s' * (b != 1)}) differ in channel count; one model needs one"
        )
    shapes = [tuple(case.properties["label_shape"]) for case in cases]
    if any(all(s >= p for s, p in zip(shape, patch_size)) for shape in shapes):
        return
    largest = "x".join(map(str, max(shapes, key=math.prod)))
    patch = "x".join(map(str, patch_size))
    if not any(all(2 * s >= p for s, p in zip(shape, patch_size)) for shape in shapes):
        raise TumorFMError(
            f"patch {patch} is more than twice every case along an axis (largest case "
            f"{largest}); choose a smaller --patch"
        )
    # as nnU-Net does: thin scans (e.g. 20 MR slices under a 32-slice patch) are padded
    print(f"tumorfm: note: patch {patch} is larger than every case (largest case {largest}); "
          f"patches are padded", file=sys.stderr)  # fmt: skip


@contextmanager
def _one_thread():
    threads = torch.get_num_threads()
    if threads != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads != 1:
            torch.set_num_threads(threads)


def make_loader(batches: PatchBatches, start_step: int, num_steps: int, workers: int) -> DataLoader:
    """Steps start_step .. start_step+num_steps-1, in order, computed ahead by `workers` processes.

    Four batches per worker are kept ready: augmentation time varies ~100x between samples
    (a rotated 96x160x160 patch vs a plain crop), and the queue absorbs the slow ones.
    """
    return DataLoader(
        batches,
        batch_size=None,  # the dataset's items are whole batches already
        sampler=range(start_step, start_step + num_steps),
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        pin_memory=torch.cuda.is_available(),
    )
