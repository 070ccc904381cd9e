"""Synthetic CT phantoms: abdomens with organs and tumours, written as nnU-Net v2 raw datasets.

Why: the demo and the tests need many labelled CT-like cases from several "sites" that look like
the paper's pool (a tumour site labels one organ and its tumour, a multi-organ site labels organs
only), without any patient data. None of this is real data, and every dataset.json says so.

Anatomy lives in body-normalised coordinates: x from patient right (-1) to left (+1), y from
anterior (-1) to posterior (+1), z from inferior (-1) to superior (+1), i.e. ITK/LPS with an
identity direction. The body has adult size when the field of view allows it and is shrunk to fit
otherwise, so a 96^3 volume still shows every organ. Tumour diameters are physical (mm), capped
by how deep the organ is. Arrays are (z, y, x) like everywhere in tumorfm.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from tumorfm.data.io import Geometry, write_volume

AIR_HU = -1000.0
SOFT_TISSUE_HU = 40.0  # unenhanced soft tissue: contrast uptake is measured from here
MIN_TUMOUR_MM, MAX_TUMOUR_MM = 3.0, 40.0
ADULT_BODY_HALF_MM = (170.0, 120.0, 110.0)  # (x, y, z): half width, half depth, half abdomen


@dataclass(frozen=True)
class Organ:
    """An organ as a deformed ellipsoid in body-normalised (x, y, z) coordinates."""

    center: tuple[float, float, float]
    half_axes: tuple[float, float, float]
    angle_deg: float  # rotation in the axial plane
    hu: tuple[float, float]  # range of the mean HU (portal venous phase)
    texture_hu: float  # amplitude of the low-frequency texture


# Painting order: a later organ overwrites an earlier one where they overlap.
ORGANS: dict[str, Organ] = {
    "stomach": Organ((0.36, -0.38, 0.38), (0.26, 0.22, 0.26), 20.0, (20.0, 35.0), 6.0),
    "liver": Organ((-0.42, -0.08, 0.30), (0.42, 0.52, 0.48), -10.0, (55.0, 65.0), 5.0),
    "spleen": Organ((0.62, 0.32, 0.36), (0.16, 0.26, 0.26), 35.0, (45.0, 50.0), 4.0),
    "pancreas": Organ((0.08, 0.10, 0.02), (0.40, 0.13, 0.16), -12.0, (40.0, 50.0), 6.0),
    "kidney_left": Organ((0.46, 0.46, -0.18), (0.14, 0.14, 0.30), 25.0, (150.0, 200.0), 10.0),
    "kidney_right": Organ((-0.46, 0.46, -0.30), (0.14, 0.14, 0.30), -25.0, (150.0, 200.0), 10.0),
    "aorta": Organ((0.08, 0.40, 0.0), (0.08, 0.08, 3.0), 0.0, (150.0, 250.0), 4.0),
}
SPINE = Organ((0.0, 0.72, 0.0), (0.15, 0.14, 3.0), 0.0, (400.0, 700.0), 60.0)


@dataclass(frozen=True)
class PhantomSite:
    """One synthetic "hospital": which structures it labels, and how its scanner looks."""

    name: str  # nnU-Net dataset name, e.g. "PhantomLiver"
    dataset_id: int
    case_prefix: str  # case ids are f"{case_prefix}_{index:03d}"
    organs: tuple[str, ...]  # labelled organs, labels 1..n in this order
    tumour_label: str | None  # e.g. "liver_tumour" (label n + 1); None: no tumours in the images
    tumour_organs: tuple[str, ...] = ()  # organs that may hold a tumour
    spacing: tuple[float, float, float] = (1.5, 1.5, 2.5)  # mm, ITK order (x, y, z)
    noise_hu: float = 12.0  # sigma of the Gaussian scanner noise
    enhancement: float = 1.0  # scales every organ's contrast uptake (scan phase, dose)
    tumour_contrast_hu: tuple[float, float] = (20.0, 60.0)  # |tumour - organ| range
    hyperdense_fraction: float = 0.2  # share of tumours brighter than their organ
    tumour_counts: tuple[float, ...] = (0.1, 0.45, 0.3, 0.15)  # P(0), P(1), ... tumours

    @property
    def folder_name(self) -> str:
        return f"Dataset{self.dataset_id:03d}_{self.name}"

    @property
    def labels(self) -> dict[str, int]:
        names = ("background", *self.organs) + ((self.tumour_label,) if self.tumour_label else ())
        return {name: value for value, name in enumerate(names)}


DEFAULT_SITES: tuple[PhantomSite, ...] = (
    PhantomSite(
        "PhantomLiver",
        901,
        "liver",
        ("liver",),
        "liver_tumour",
        ("liver",),
        spacing=(1.5, 1.5, 2.5),
        noise_hu=12.0,
        enhancement=1.0,
        tumour_contrast_hu=(20.0, 70.0),
        hyperdense_fraction=0.2,
    ),
    PhantomSite(
        "PhantomKidney",
        902,
        "kidney",
        ("kidney_left", "kidney_right"),
        "kidney_tumour",
        ("kidney_left", "kidney_right"),
        spacing=(1.8, 1.8, 2.0),
        noise_hu=18.0,
        enhancement=1.15,
        tumour_contrast_hu=(40.0, 110.0),
        hyperdense_fraction=0.1,
    ),
    PhantomSite(
        "PhantomPancreas",
        903,
        "pancreas",
        ("pancreas",),
        "pancreas_tumour",
        ("pancreas",),
        spacing=(1.6, 1.6, 3.0),
        noise_hu=15.0,
        enhancement=0.9,
        tumour_contrast_hu=(15.0, 45.0),
        hyperdense_fraction=0.0,
    ),
    PhantomSite(
        "PhantomMultiOrgan",
        904,
        "abdomen",
        tuple(ORGANS),
        None,
        (),
        spacing=(2.0, 2.0, 3.0),
        noise_hu=10.0,
        enhancement=1.05,
    ),
)


def _interpolation_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Gaussian weights from n_in control points to n_out voxels, rows of unit L2 norm."""
    t = np.linspace(0.0, n_in - 1.0, n_out)
    weights = np.exp(-0.5 * ((t[:, None] - np.arange(n_in)) / 0.7) ** 2)
    return (weights / np.sqrt((weights**2).sum(1, keepdims=True))).astype(np.float32)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], points) -> np.ndarray:
    """A smooth random field of unit variance with about `points` control points per axis.

    Coarse white noise interpolated separably with Gaussian weights: milliseconds for a 96^3
    field, where a full-resolution gaussian_filter or zoom would dominate the case time.
    """
    points = [points] * len(shape) if np.isscalar(points) else points
    coarse = rng.standard_normal(
        [max(2, min(int(p), n)) for p, n in zip(points, shape)], dtype=np.float32
    )
    matrices = [_interpolation_matrix(n, c) for n, c in zip(shape, coarse.shape)]
    return np.einsum("za,yb,xc,abc->zyx", *matrices, coarse, optimize=True)


def _window(coords: np.ndarray, center: float, reach: float) -> slice:
    """The index range whose voxel centres lie within `reach` mm of `center` along one axis."""
    return slice(
        int(np.searchsorted(coords, center - reach)),
        int(np.searchsorted(coords, center + reach, side="right")),
    )


def _deformed_ellipsoid(rng, axes_mm, center_mm, half_mm, angle_deg, roughness):
    """Mask of an ellipsoid whose surface smooth noise pushes in and out, and where it sits.

    centre and half axes are (x, y, z) mm; returns (mask, (z, y, x) slices) or None if the
    ellipsoid misses the volume. Computed on its bounding box only, to stay fast.
    """
    reach_xy = max(half_mm[0], half_mm[1]) * (1 + roughness)
    window = (
        _window(axes_mm[0], center_mm[2], half_mm[2] * (1 + roughness)),
        _window(axes_mm[1], center_mm[1], reach_xy),
        _window(axes_mm[2], center_mm[0], reach_xy),
    )
    if any(s.start >= s.stop for s in window):
        return None
    z = axes_mm[0][window[0], None, None] - center_mm[2]
    y = axes_mm[1][None, window[1], None] - center_mm[1]
    x = axes_mm[2][None, None, window[2]] - center_mm[0]
    cos, sin = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    along, across = cos * x + sin * y, cos * y - sin * x
    radius = np.sqrt((along / half_mm[0]) ** 2 + (across / half_mm[1]) ** 2 + (z / half_mm[2]) ** 2)
    bumps = np.clip(smooth_noise(rng, radius.shape, 5) / 2, -1, 1)
    return radius + roughness * bumps < 1, window


def _place_tumour(rng, organ_map, organ_value, tumours, spacing_zyx):
    """Mask (full volume) of one irregular tumour inside organ `organ_value`, or None if none fits.

    The centre is drawn where the organ (minus earlier tumours) is at least a radius deep; the
    shape is the level set of (distance / radius - noise) holding exactly a sphere's volume, then
    clipped to the organ, kept one voxel away from earlier tumours, and reduced to one component.
    """
    box = ndimage.find_objects((organ_map == organ_value).astype(np.int8))
    if not box:
        return None
    box = box[0]
    free = np.pad((organ_map[box] == organ_value) & ~tumours[box], 1)
    depth = ndimage.distance_transform_edt(free, sampling=spacing_zyx)[1:-1, 1:-1, 1:-1]
    smallest = max(MIN_TUMOUR_MM, 2 * min(spacing_zyx))
    largest = min(MAX_TUMOUR_MM, 2 * float(depth.max()))
    if largest < smallest:
        return None
    diameter = min(largest, math.exp(rng.uniform(math.log(smallest), math.log(largest))))
    candidates = np.flatnonzero(depth >= diameter / 2)
    center = np.unravel_index(rng.choice(candidates), depth.shape)
    center = [int(c) + s.start for c, s in zip(center, box)]
    reach = [math.ceil(0.75 * diameter / s) + 1 for s in spacing_zyx]
    window = tuple(
        slice(max(0, c - r), min(n, c + r + 1)) for c, r, n in zip(center, reach, organ_map.shape)
    )
    offsets = np.ogrid[window]
    distance = np.sqrt(sum(((o - c) * s) ** 2 for o, c, s in zip(offsets, center, spacing_zyx)))
    level = distance / (diameter / 2) - 0.2 * np.clip(
        smooth_noise(rng, distance.shape, 4) / 2, -1, 1
    )
    voxel_mm3 = float(np.prod(spacing_zyx))
    count = int(np.clip(round(math.pi / 6 * diameter**3 / voxel_mm3), 1, level.size))
    shape = level <= np.partition(level.ravel(), count - 1)[count - 1]
    shape &= organ_map[window] == organ_value
    shape &= ~ndimage.binary_dilation(tumours[window])
    components, n = ndimage.label(shape)
    if n == 0:
        return None
    shape = components == 1 + np.argmax(np.bincount(components.ravel())[1:])
    if shape.sum() * voxel_mm3 < math.pi / 6 * MIN_TUMOUR_MM**3:
        return None
    mask = np.zeros_like(tumours)
    mask[window] = shape
    return mask


def _simulate(site: PhantomSite, shape_zyx: tuple[int, int, int], seed: int):
    """Float HU volume, organ index map (1 + index in ORGANS, tumours keep their organ), tumours.

    Separate from make_case so tests can check that every tumour voxel lies inside its organ.
    """
    rng = np.random.default_rng(seed)
    spacing_zyx = tuple(float(s) for s in reversed(site.spacing))
    axes_mm = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape_zyx, spacing_zyx)]
    fov_xyz = [n * s for n, s in zip(reversed(shape_zyx), site.spacing)]
    fit_xy = min(
        1.0, 0.46 * fov_xyz[0] / ADULT_BODY_HALF_MM[0], 0.46 * fov_xyz[1] / ADULT_BODY_HALF_MM[1]
    )
    body_half = np.array(
        [
            ADULT_BODY_HALF_MM[0] * fit_xy,
            ADULT_BODY_HALF_MM[1] * fit_xy,
            min(ADULT_BODY_HALF_MM[2], 0.48 * fov_xyz[2]),
        ]
    )
    body_half[:2] *= rng.uniform(0.9, 1.05, 2)
    body_center = np.array([*rng.normal(0, 0.03, 2) * body_half[:2], 0.0])

    hu = np.full(shape_zyx, AIR_HU, dtype=np.float32)
    y = (axes_mm[1][:, None] - body_center[1]) / body_half[1]
    x = (axes_mm[2][None, :] - body_center[0]) / body_half[0]
    outline = np.sqrt(x**2 + y**2) + 0.04 * smooth_noise(rng, (1, *shape_zyx[1:]), (1, 6, 6))[0]
    body = np.broadcast_to(outline < 1, shape_zyx)
    fat_or_muscle = np.clip(
        0.5 + 0.4 * smooth_noise(rng, shape_zyx, [n // 8 for n in shape_zyx]), 0, 1
    )
    hu[body] = (-100.0 + 140.0 * fat_or_muscle)[body]  # fat (-100 HU) .. muscle (40 HU)
    texture = smooth_noise(rng, shape_zyx, [n // 5 for n in shape_zyx])

    def place(organ: Organ):
        center = body_center + (np.array(organ.center) + rng.normal(0, 0.03, 3)) * body_half
        half = np.array(organ.half_axes) * rng.uniform(0.88, 1.12, 3) * body_half
        found = _deformed_ellipsoid(
            rng, axes_mm, center, half, organ.angle_deg + rng.normal(0, 8), roughness=0.3
        )
        if found is None:
            return None
        mask, window = found
        mask &= body[window]
        base = SOFT_TISSUE_HU + (rng.uniform(*organ.hu) - SOFT_TISSUE_HU) * site.enhancement
        hu[window][mask] = base + organ.texture_hu * texture[window][mask]
        return mask, window

    place(SPINE)
    organ_map = np.zeros(shape_zyx, dtype=np.uint8)
    for index, organ in enumerate(ORGANS.values(), start=1):
        placed = place(organ)
        if placed is not None:
            organ_map[placed[1]][placed[0]] = index

    tumours = np.zeros(shape_zyx, dtype=bool)
    if site.tumour_label is not None:
        for _ in range(rng.choice(len(site.tumour_counts), p=site.tumour_counts)):
            organ_value = 1 + list(ORGANS).index(rng.choice(site.tumour_organs))
            tumour = _place_tumour(rng, organ_map, organ_value, tumours, spacing_zyx)
            if tumour is None:
                continue
            sign = 1.0 if rng.random() < site.hyperdense_fraction else -1.0
            own_texture = smooth_noise(rng, shape_zyx, [n // 3 for n in shape_zyx])[tumour]
            hu[tumour] += (
                sign * rng.uniform(*site.tumour_contrast_hu) + rng.uniform(5, 15) * own_texture
            )
            tumours |= tumour

    hu = ndimage.gaussian_filter(hu, sigma=0.5)  # partial volume at organ edges
    hu += site.noise_hu * rng.standard_normal(shape_zyx, dtype=np.float32)
    origin = tuple(float(-(n - 1) / 2 * s) for n, s in zip(reversed(shape_zyx), site.spacing))
    geometry = Geometry(
        tuple(int(n) for n in reversed(shape_zyx)),
        tuple(map(float, site.spacing)),
        origin,
        (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    )
    return hu, organ_map, tumours, geometry


def make_case(
    site: PhantomSite, shape_zyx: tuple[int, int, int], seed: int
) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """One synthetic case in memory: (image int16 HU, label uint8 in the site's labels, geometry).

    Organs the site does not label are still in the image but are background in the label.
    """
    hu, organ_map, tumours, geometry = _simulate(site, tuple(shape_zyx), seed)
    image = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    to_site = np.zeros(len(ORGANS) + 1, dtype=np.uint8)
    for name, value in site.labels.items():
        if name in ORGANS:
            to_site[1 + list(ORGANS).index(name)] = value
    label = to_site[organ_map]
    if site.tumour_label is not None:
        label[tumours] = site.labels[site.tumour_label]
    return image, label, geometry


def case_seed(seed: int, site_index: int, case_index: int) -> int:
    """The seed of one case: independent streams for every (pool seed, site, case)."""
    return int(np.random.SeedSequence([seed, site_index, case_index]).generate_state(1)[0])


def _dataset_json(site: PhantomSite, num_training: int, seed: int) -> dict:
    provenance = f"synthetic, generated by tumorfm phantom, seed {seed}"
    return {
        "name": site.name,
        "description": f"Synthetic CT phantoms, not patient data ({provenance}).",
        "licence": provenance,
        "channel_names": {"0": "CT"},
        "labels": site.labels,
        "numTraining": num_training,
        "file_ending": ".nii.gz",
    }


def write_phantom_pool(
    out_dir: str | os.PathLike,
    cases_per_site: int = 8,
    shape_zyx: tuple[int, int, int] = (64, 96, 96),
    seed: int = 0,
    sites: tuple[PhantomSite, ...] = DEFAULT_SITES,
    progress: bool = False,
) -> list[Path]:
    """Write every site as an nnU-Net v2 raw dataset folder under out_dir; return the folders.

    Rewriting into an existing pool replaces its cases; stale phantom cases of the same site
    (from a run with more cases) are removed so numTraining stays true.
    """
    out_dir = Path(out_dir)
    folders = []
    bar = tqdm(
        total=len(sites) * cases_per_site,
        desc="phantoms",
        unit="case",
        disable=None if progress else True,
    )
    for site_index, site in enumerate(sites):
        folder = out_dir / site.folder_name
        folder.mkdir(parents=True, exist_ok=True)
        written = set()
        for case_index in range(cases_per_site):
            image, label, geometry = make_case(
                site, shape_zyx, case_seed(seed, site_index, case_index)
            )
            case = f"{site.case_prefix}_{case_index:03d}"
            written.add(write_volume(image, geometry, folder / "imagesTr" / f"{case}_0000.nii.gz"))
            written.add(write_volume(label, geometry, folder / "labelsTr" / f"{case}.nii.gz"))
            bar.update()
        for sub in ("imagesTr", "labelsTr"):
            for stale in (folder / sub).glob(f"{site.case_prefix}_[0-9][0-9][0-9]*.nii.gz"):
                if stale not in written:
                    stale.unlink()
        dataset = json.dumps(_dataset_json(site, cases_per_site, seed), indent=2)
        (folder / "dataset.json").write_text(dataset + "\n")
        folders.append(folder)
    bar.close()
    return folders
