"""Procedural tumours: the recipe of Hu et al., "Label-Free Liver Tumor Segmentation" (CVPR 2023),
on which DiffTumor (CVPR 2024) builds, re-derived in millimetres so that anisotropic scans work.

A tumour is an ellipsoid with a size class's radii, elastically deformed by a smooth random
displacement, centred in the organ eroded by its largest radius and clipped to the organ. Its mean
intensity is set from the organ's own: on CT so many HU below the organ's median (most liver
tumours are hypodense on portal-venous CT); on MR, which has no absolute scale, part of the way
from the organ's median to its 5th or 95th percentile. Gaussian-filtered noise gives it texture,
and the scan's own voxel-level noise is kept, so the tumour is as grainy as its surroundings.
Unlike Hu et al., who darken whatever lies there (and so must avoid vessels), the tumour replaces
the tissue's smooth content: vessels do not shine through it. Its edge fades over a soft rim
outside the mask; an optional mass effect pushes the organ tissue around it outward.

Guarantees (tests/test_synth_procedural.py): the output depends on the inputs and the seed only;
only organ voxels within reach_mm() of a tumour change; the tumour mask lies in the organ; the
inputs are never written to. Each tumour is built in a box around it, so its cost does not grow
with the scan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, special

from tumorfm.data.looks import QUANTILES, checked_look
from tumorfm.errors import TumorFMError

SIZES: dict[str, tuple[float, float]] = {
    # Radius range per axis, mm. Hu et al.'s code (MrGiovanni/SyntheticTumors,
    # TumorGenerated/utils.py) draws each radius in 0.75-1.25 x 4, 8, 16, 32 voxels on scans
    # resampled to 1 mm: these are those ranges in mm
    "tiny": (3.0, 5.0),
    "small": (6.0, 10.0),
    "medium": (12.0, 20.0),
    "large": (24.0, 40.0),
}
MODALITIES = ("CT", "MR")
# CT: the tumour's mean is this many HU below the organ's median. Hu et al. subtract 65-145 HU
# times a texture whose mean is 0.5-0.55, i.e. their tumours are ~33-80 HU darker than the liver,
# in line with hypodense metastases on portal-venous CT (liver ~100-110 HU, lesions ~40-70 HU)
CT_SHIFT_HU = (30.0, 80.0)
# MR: the fraction of the way from the organ's median to its 5th percentile (darker) or its 95th
# (brighter), each side with even odds. Our choice, not a published range: MR tumours are hypo- or
# hyperintense depending on the sequence (e.g. enhancing rim vs necrosis on post-contrast T1)
MR_SHIFT = (0.3, 0.8)
TEXTURE = (0.15, 0.35)  # std of the tumour's texture, as a fraction of its shift
TEXTURE_MM = (3.0, 8.0)  # Gaussian sigma of the texture (Hu et al.: 3-8 voxels at 1 mm)
EDGE_MM = (1.0, 2.0)  # sigma of the soft edge (Hu et al. blur it with 1-2 voxels at 1 mm)
# std of the elastic displacement, fraction of each radius: Hu et al.'s deformation sigmas are
# 0.12-0.31 of the radius over their four classes
DEFORM = (0.12, 0.3)
DEFORM_MAX = 0.4  # displacement is softly capped here, so the centre stays inside the tumour
MASS = (0.1, 0.2)  # mass effect: outward push at the tumour's edge, fraction of its mean radius
EDGE_REACH_MM = 8.0  # no voxel farther than this from the tumour mask is blended
MASS_REACH_MM = 10.0  # nor moved by the mass effect
# a measured look (synth.appearance) is relative to the tissue this far outside the tumour, and
# a tumour made from one is set against the same shell of its organ
SHELL_MM = (3.0, 15.0)
SHELL_MIN_VOXELS = 50  # a thinner shell says nothing: the organ's median stands in


def reach_mm(mass_effect: bool) -> float:
    """How far from the tumour mask voxels may change: beyond it the scan is bit-identical."""
    return MASS_REACH_MM if mass_effect else EDGE_REACH_MM


@dataclass(frozen=True)
class Tumour:
    """One inserted tumour, for the run's record. intensity_shift is the tumour's mean minus the
    organ's median, in the image's units (HU on CT); a measured shift (shift_hu, looks), minus
    the median of the organ tissue SHELL_MM around the tumour."""

    centre_zyx: tuple[int, int, int]
    radii_mm: tuple[float, float, float]
    size: str
    intensity_shift: float
    voxels: int


@dataclass
class Synthesised:
    image: np.ndarray  # the input's shape and dtype, with the tumours in it
    tumour: np.ndarray  # bool, the inserted tumours
    tumours: list[Tumour]


def synthesise(
    image,
    organ,
    spacing_zyx,
    *,
    seed: int,
    modality: str = "CT",
    count: int = 1,
    size: str = "mixed",
    mass_effect: bool = False,
    shift_hu: tuple[float, float] | None = None,
    texture_hu: tuple[float, float] | None = None,
    looks: list[dict] | None = None,
) -> Synthesised:
    """Insert `count` tumours of `size` into the organ (nonzero voxels of `organ`) of a (Z, Y, X)
    scan; spacing in mm. "mixed" draws a class per tumour among those the organ can hold, and
    radii are capped by the organ's depth: an error only when not even the smallest fits.
    Integer scans stay integer (rounded); the inputs are not modified. On CT, `shift_hu` (the
    tumour's mean minus the organ's median) and `texture_hu` (the std of its smooth texture) are
    drawn from these ranges when given, e.g. as measured on real tumours (synth.appearance);
    by default from Hu et al.'s hypodense liver-tumour recipe. `looks` (CT, instead of the
    ranges): real tumours' measured looks (synth.appearance's per-case dicts: shift_hu,
    texture_hu, quantiles), one drawn per tumour, whose texture then has that tumour's HU
    distribution (its tails too), not a Gaussian one. A measured shift is set against the organ
    tissue SHELL_MM around the new tumour, as it was measured."""
    image, organ, spacing, modality = _check(image, organ, spacing_zyx, seed, modality, count, size)
    look = checked_look(shift_hu, texture_hu, modality, looks)
    rng = np.random.default_rng(seed)
    values = image[organ].astype(np.float64)
    if modality == "CT":
        stats = (float(np.median(values)),)
    else:
        stats = tuple(float(p) for p in np.percentile(values, [5, 50, 95]))
    room, offset, block = _room(organ, spacing, exact=False)
    names = list(SIZES) if size == "mixed" else [size]
    if room.max() <= min(SIZES[n][0] for n in names):  # the bound may be too strict: be exact
        room, offset, block = _room(organ, spacing, exact=True)
    out = image.copy()
    tumour = np.zeros(image.shape, dtype=bool)
    records = []
    for _ in range(count):
        name, radii = _draw_radii(rng, size, room, organ, spacing)
        inside = np.flatnonzero(room > max(radii))  # a block, then a voxel in it
        pick = np.unravel_index(inside[rng.integers(inside.size)], room.shape)
        centre = tuple(int(o + p * k + rng.integers(k)) for o, p, k in zip(offset, pick, block))
        shift, voxels = _insert(rng, out, organ, tumour, centre, radii, spacing, stats, look,
                                mass_effect)  # fmt: skip
        records.append(Tumour(centre, tuple(float(r) for r in radii), name, shift, voxels))
    return Synthesised(out, tumour, records)


def _check(image, organ, spacing_zyx, seed, modality, count, size):
    """Every user mistake as a one-line TumorFMError, before any work."""
    if size != "mixed" and size not in SIZES:
        raise TumorFMError(f"size {size!r} is unknown: use one of {', '.join([*SIZES, 'mixed'])}")
    if str(modality).upper() not in MODALITIES:
        raise TumorFMError(f"modality {modality!r} is unknown: use one of {', '.join(MODALITIES)}")
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise TumorFMError(f"count {count!r} must be a whole number of tumours, 1 or more")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TumorFMError(f"seed {seed!r} must be a non-negative integer")
    image, organ = np.asarray(image), np.asarray(organ)
    if image.ndim != 3 or image.dtype.kind not in "iuf":
        raise TumorFMError(
            f"image must be a 3D (Z, Y, X) array of numbers, got shape {image.shape} {image.dtype}"
        )
    try:
        spacing = np.asarray(spacing_zyx, dtype=np.float64).reshape(3)
    except (TypeError, ValueError):
        message = f"spacing {spacing_zyx!r} must be three numbers (z, y, x) in mm"
        raise TumorFMError(message) from None
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        shown = tuple(float(s) for s in spacing)
        raise TumorFMError(f"spacing {shown} must be positive and finite (mm per voxel)")
    if organ.shape != image.shape:
        raise TumorFMError(f"organ mask shape {organ.shape} != image shape {image.shape}")
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        bad = int(np.count_nonzero(~np.isfinite(image)))
        raise TumorFMError(f"image has {bad} NaN or infinite voxels: tumours need finite values")
    organ = organ != 0
    if not organ.any():
        raise TumorFMError("organ mask is empty: no voxel to put a tumour in")
    return image, organ, spacing, str(modality).upper()


def _room(organ: np.ndarray, spacing: np.ndarray, exact: bool):
    """mm from each voxel of the organ's bounding box to the nearest voxel outside the organ (or
    the scan): a tumour of radius r fits where this exceeds r. For a big box at fine spacing,
    ~5x faster, a lower bound on blocks of ~2 mm: the distance between the blocks that lie wholly
    in the organ and the others, less a block's diagonal. Returns (room per block, the box's
    origin, block size)."""
    lo, hi = _bbox(organ)
    crop = organ[tuple(slice(a, b) for a, b in zip(lo, hi))]
    k = np.maximum(np.floor(2.0 / spacing), 1).astype(int)
    if exact or crop.size < 500_000 or k.max() == 1:
        k = np.ones(3, dtype=int)
    n = -(-np.asarray(crop.shape) // k)  # blocks per axis; padding voxels count as outside
    padded = np.zeros(n * k, dtype=bool)
    padded[tuple(slice(0, s) for s in crop.shape)] = crop
    blocks = padded.reshape(n[0], k[0], n[1], k[1], n[2], k[2]).all(axis=(1, 3, 5))
    room = ndimage.distance_transform_edt(np.pad(blocks, 1), sampling=k * spacing)
    if k.max() > 1:
        room -= float(np.linalg.norm(k * spacing))
    return room[1:-1, 1:-1, 1:-1], lo, k


def _bbox(mask: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]]:
    lo, hi = [], []
    for axis in range(3):
        nonzero = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        lo.append(int(nonzero[0]))
        hi.append(int(nonzero[-1]) + 1)
    return tuple(lo), tuple(hi)


def _draw_radii(rng, size, room, organ, spacing) -> tuple[str, np.ndarray]:
    """A size class (drawn among those that fit, for "mixed") and three radii in its range,
    capped by the organ's depth so that a tumour of the class always finds a place."""
    deepest = float(room.max())
    names = list(SIZES) if size == "mixed" else [size]
    fits = [n for n in names if SIZES[n][0] < deepest]
    if not fits:
        lo, hi = _bbox(organ)
        extent = " x ".join(f"{(b - a) * s:.0f}" for a, b, s in zip(lo, hi, spacing))
        smallest = min(names, key=lambda n: SIZES[n][0])
        raise TumorFMError(
            f"organ too small for a {smallest!r} tumour (size {size!r}, radius >= "
            f"{SIZES[smallest][0]:g} mm): it spans {extent} mm (z x y x x) and its deepest "
            f"voxel is {deepest:.1f} mm from its edge"
        )
    name = fits[int(rng.integers(len(fits)))] if len(fits) > 1 else fits[0]
    low, high = SIZES[name]
    return name, rng.uniform(low, min(high, deepest), size=3)


def _insert(rng, out, organ, tumour, centre, radii, spacing, stats, look, mass_effect):
    """Build one tumour around `centre` and write it into `out` and `tumour`; returns (intensity
    shift, voxels). Every draw happens whether or not mass_effect is on, so the same seed gives
    the same tumours with and without it."""
    r, sp = np.asarray(radii), spacing
    deform, edge, push = rng.uniform(*DEFORM), rng.uniform(*EDGE_MM), rng.uniform(*MASS)
    texture_mm, texture = rng.uniform(*TEXTURE_MM), rng.uniform(*TEXTURE)
    shift = _shift(rng, stats, look.get("shift_hu"))
    quantiles = None
    if "looks" in look:  # one real tumour's look, whole: its shift, texture and distribution
        shift, spread, quantiles = look["looks"][int(rng.integers(len(look["looks"])))]
    elif "texture_hu" in look:  # a scale, drawn log-uniformly, as real tumours' skew to smooth
        spread = math.exp(rng.uniform(*np.log(np.maximum(look["texture_hu"], 1.0))))
    else:
        spread = texture * abs(shift)
    measured = "looks" in look or "shift_hu" in look
    shape_lo, shape = _shape(rng, organ, centre, r, sp, deform)

    # the work box: the tumour and every voxel it may change (reach_mm), and, for a measured look,
    # the tissue shell its shift is set against
    span = np.ceil(max(MASS_REACH_MM, SHELL_MM[1] if measured else 0.0) / sp).astype(int) + 1
    t_lo, t_hi = _bbox(shape)
    lo = np.maximum(np.add(shape_lo, t_lo) - span, 0)
    hi = np.minimum(np.add(shape_lo, t_hi) + span, out.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    mask = np.zeros(hi - lo, dtype=bool)
    at = tuple(slice(s + a - o, s + b - o) for s, a, b, o in zip(shape_lo, t_lo, t_hi, lo))
    mask[at] = shape[tuple(slice(a, b) for a, b in zip(t_lo, t_hi))]
    axes = [(np.arange(a, b) - c) * s for a, b, c, s in zip(lo, hi, centre, sp)]  # mm from centre
    dist = ndimage.distance_transform_edt(~mask, sampling=sp)  # mm to the tumour, 0 inside
    organ_box = organ[box]

    # intensity: the level, a smooth texture, and the organ's own fine noise (what a 1-voxel
    # Gaussian over the organ alone takes out), shifted so that the tumour's mean is the level
    local = out[box].astype(np.float64)
    reference = stats[0] if len(stats) == 1 else stats[1]
    if measured:  # against the tissue around it, as synth.appearance measured the shift
        shell = organ_box & ~mask & (dist >= SHELL_MM[0]) & (dist <= SHELL_MM[1])
        if shell.sum() >= SHELL_MIN_VOXELS:
            reference = float(np.median(local[shell]))
    level = reference + shift
    weight = ndimage.gaussian_filter(organ_box.astype(np.float64), 1.0)
    smooth = ndimage.gaussian_filter(np.where(organ_box, local, 0.0), 1.0)
    fine = np.where(organ_box, local - smooth / np.maximum(weight, 1e-6), 0.0)
    noise = _smooth_noise(rng, axes, texture_mm)
    noise = (noise - noise[mask].mean()) / (noise[mask].std() or 1.0)
    if quantiles is not None:  # the smooth field, given the real tumour's HU distribution
        noise = np.interp(special.ndtr(noise), np.divide(QUANTILES, 100.0), quantiles)
        noise = (noise - noise[mask].mean()) / (noise[mask].std() or 1.0)
    field = spread * noise + fine
    target = level + field - field[mask].mean()

    push_mm = push * float(r.mean()) if mass_effect else 0.0
    local = blend(local, target, mask, organ_box, tumour[box], dist, axes, sp, r, push_mm, edge)
    local = _cast(local, out.dtype)
    out[box] = local
    tumour[box] |= mask
    return float(shift), int(mask.sum())


def blend(local, target, mask, organ, taken, dist, axes, sp, radii, push_mm, edge):
    """A tumour written into `local` (float64, its box): with push_mm > 0 the organ tissue near it
    shows what lay closer to its centre (mass effect), then the tumour's `target` replaces the
    tissue on its mask and fades over a rim of organ outside it, from the voxel's near face (half
    a voxel closer than its centre), exactly 0 from 3 sigma (`edge` mm) on. `taken`: earlier
    tumours, never moved; `dist`: mm to the mask; `axes`: mm from the centre along each axis."""
    if push_mm > 0:
        zone = min(float(np.mean(radii)), MASS_REACH_MM)
        push_mm = min(push_mm, 0.4 * zone)  # < zone / 2: the warp cannot fold
        move = organ & ~mask & ~taken & (dist < zone)
        where = np.nonzero(move)
        pos = np.stack([axes[a][where[a]] for a in range(3)])  # mm from the centre
        step = push_mm * (1.0 - dist[move] / zone) ** 2 / np.linalg.norm(pos, axis=0)
        source = np.stack(where) - pos * step / sp[:, None]
        local[move] = ndimage.map_coordinates(local, source, order=1, mode="nearest")
    rim = organ & ~mask & (dist <= EDGE_REACH_MM)
    gap = np.maximum(dist[rim] - 0.5 * sp.min(), 0.0) / edge
    floor = math.exp(-4.5)
    weight = np.clip((np.exp(-0.5 * gap**2) - floor) / (1.0 - floor), 0.0, 1.0)
    local[mask] = target[mask]
    local[rim] += weight * (target[rim] - local[rim])
    return local


def _cast(local: np.ndarray, dtype) -> np.ndarray:
    """Back to the scan's dtype: integer scans rounded and clipped to their range."""
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        local = np.clip(np.rint(local), info.min, info.max)
    return local.astype(dtype)


def _shape(rng, organ, centre, r, sp, deform) -> tuple[np.ndarray, np.ndarray]:
    """The tumour mask in a box around the centre: the ellipsoid seen through a smooth random
    displacement (softly capped at 0.4 radius, so the centre stays in), kept in the organ and in
    one piece, the piece holding the centre. Returns (box origin, mask)."""
    half = np.ceil((1 + DEFORM_MAX) * r / sp).astype(int) + 1
    lo = np.maximum(np.asarray(centre) - half, 0)
    hi = np.minimum(np.asarray(centre) + half + 1, organ.shape)
    axes = [(np.arange(a, b) - c) * s for a, b, c, s in zip(lo, hi, centre, sp)]
    grid = np.meshgrid(*axes, indexing="ij", sparse=True)
    rho2 = np.zeros(hi - lo)
    for axis in range(3):
        field = _smooth_noise(rng, axes, 0.5 * float(r.mean()))
        cap = DEFORM_MAX * r[axis]
        field = cap * np.tanh(field * (deform * r[axis] / (field.std() or 1.0)) / cap)
        rho2 += ((grid[axis] + field) / r[axis]) ** 2
    pieces, _ = ndimage.label((rho2 <= 1.0) & organ[tuple(slice(a, b) for a, b in zip(lo, hi))])
    return lo, pieces == pieces[tuple(np.asarray(centre) - lo)]


def _shift(rng, stats, shift_hu=None) -> float:
    """The tumour's mean minus the organ's median: CT in HU, MR toward a percentile."""
    if len(stats) == 1:
        return float(rng.uniform(*shift_hu)) if shift_hu else -float(rng.uniform(*CT_SHIFT_HU))
    p5, p50, p95 = stats
    fraction = float(rng.uniform(*MR_SHIFT))
    return fraction * (p95 - p50) if rng.random() < 0.5 else -fraction * (p50 - p5)


def _smooth_noise(rng, axes, sigma_mm: float) -> np.ndarray:
    """White noise filtered by a Gaussian of sigma_mm, on the box whose mm coordinates are `axes`.
    Noise on knots sigma_mm apart, each spread by the Gaussian: separable, so it costs a few
    matrix products instead of a 3D convolution."""
    bases = []
    for a in axes:
        knots = np.arange(a[0] - 2 * sigma_mm, a[-1] + 2.5 * sigma_mm, sigma_mm)
        bases.append(np.exp(-0.5 * ((a[:, None] - knots[None, :]) / sigma_mm) ** 2))
    weights = rng.standard_normal(tuple(b.shape[1] for b in bases))
    return np.einsum("abc,za,yb,xc->zyx", weights, *bases, optimize=True)
