"""From a scan to a label map in the scan's own geometry.

A scan stored sagittally or coronally is taken as its axial stack (tumorfm.data.orient, as in
preprocessing) and the label map goes back to the stored order. The case goes through the
bundle's plan exactly as in training (crop to non-zero, normalise, resample to the target
spacing), then the network slides over it in windows weighted by a Gaussian (tumorfm.infer.window:
MONAI's window grid and weights without importing MONAI; one window per forward by default: on a
CPU, batches of windows measured no faster and held more activations), optionally averaged over
the 8 mirrorings. A bundle's network predicts channels-last (tumorfm.model.blocks.InstanceNorm)
with the weights that autocast would cast stored at its precision (tumorfm.model.precision). Each
class's sigmoid probability is resampled back to the cropped grid one class at a time (memory
stays at one volume per class), thresholded (at 0.5, or at the threshold `tumorfm model calibrate`
chose for the class on labelled scans and stored in the bundle) and painted in the bundle's order
(organs first, their tumours over them), then the crop is undone so the label map has the input's
size, spacing, origin and direction.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tumorfm.data.grid import GridMap, to_plan_grid
from tumorfm.data.io import Geometry
from tumorfm.data.orient import Orientation
from tumorfm.data.plan import Plan
from tumorfm.defaults import DECISION_THRESHOLD
from tumorfm.errors import TumorFMError
from tumorfm.infer import postprocess as post
from tumorfm.infer.window import sliding_window, window_count
from tumorfm.model.bundle import CONFIG, bundle_folder, load_bundle, read_bundle_config
from tumorfm.model.precision import autocast, store_lower

MIRROR_AXES = (2, 3, 4)  # z, y, x of a (B, C, Z, Y, X) batch
OVERLAP = 0.5  # nnU-Net's
FAST_OVERLAP = 0.25  # still blended: windows of overlap 0 would leave seams between tiles


@dataclass
class PredictOptions:
    """How to predict. `fast`: no mirroring and a smaller overlap, still Gaussian-blended so
    that no tile seam shows (nnU-Net's --disable_tta, plus fewer windows); an overlap given
    explicitly is always kept."""

    plan: str | None = None  # which of the bundle's dataset plans (needed if it has several)
    classes: list[str] | None = None  # keep a subset of the bundle's classes
    overlap: float | None = None  # None: OVERLAP, or FAST_OVERLAP with `fast`
    mirror: bool = True
    fast: bool = False
    windows_per_batch: int = 1  # on a CPU, batching windows is no faster and holds more
    device: str = "auto"  # cuda, else mps, else cpu
    precision: str = "auto"
    min_lesion_ml: float = 0.0
    largest_component: bool = False
    thresholds: dict[str, float] | None = None  # class -> threshold, over the bundle's own

    def __post_init__(self):
        if self.fast:
            self.mirror = False
        if self.overlap is None:
            self.overlap = FAST_OVERLAP if self.fast else OVERLAP
        if not 0.0 <= self.overlap < 1.0:  # NaN fails too
            raise TumorFMError(f"overlap {self.overlap}: must be at least 0 and below 1")
        for name, t in (self.thresholds or {}).items():
            if not 0.0 < t < 1.0:
                raise TumorFMError(f"--threshold {name}={t}: must be between 0 and 1")


@dataclass
class CasePrediction:
    case_id: str
    label: np.ndarray  # (Z, Y, X) in the input's geometry
    geometry: Geometry
    labels: dict[str, int]  # class name -> value in `label`
    probabilities: np.ndarray | None = None  # (K, Z, Y, X) float16, classes as in `labels`
    statistics: dict | None = None
    seconds: dict = field(default_factory=dict)


def choose_plan(meta: dict, name: str | None, folder: Path) -> tuple[str, Plan]:
    """The bundle's plan for `name`, or its only plan."""
    plans = (meta.get("plan") or {}).get("datasets") or {}
    if not plans:
        raise TumorFMError(f"{folder / CONFIG}: the bundle has no preprocessing plan")
    if name is None:
        if len(plans) > 1:
            raise TumorFMError(
                f"{folder}: the bundle holds plans of {len(plans)} datasets; choose one with "
                f"--plan ({', '.join(plans)})"
            )
        name = next(iter(plans))
    if name not in plans:
        raise TumorFMError(f"{folder}: no plan '{name}' in the bundle (has {', '.join(plans)})")
    try:
        return name, Plan.from_dict(plans[name])
    except TypeError as error:
        raise TumorFMError(f"{folder / CONFIG}: plan '{name}' is invalid ({error})") from None


def stored_thresholds(extra: dict, plan: str, classes: list[str], folder: Path) -> dict:
    """The decision thresholds the bundle stores for `plan` ({class: t}, 0 < t < 1), checked."""
    stored = (extra.get("thresholds") or {}).get(plan) or {}
    where = f"{folder / CONFIG}: extra.thresholds.{plan}"
    if not isinstance(stored, dict):
        raise TumorFMError(f"{where}: must map class names to thresholds")
    for name, t in stored.items():
        if name not in classes:
            raise TumorFMError(f"{where}: '{name}' is not a class of the bundle")
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < 1:
            raise TumorFMError(f"{where}.{name}: {t!r} is not a threshold between 0 and 1")
    return {name: float(t) for name, t in stored.items()}


def choose_device(name: str) -> torch.device:
    """auto: cuda, else mps, else cpu; a named device must exist here."""
    if name == "auto":
        mps = getattr(torch.backends, "mps", None)
        name = (
            "cuda" if torch.cuda.is_available() else "mps" if mps and mps.is_available() else "cpu"
        )
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available(),
    }
    kind = name.split(":")[0]
    if kind not in available:
        raise TumorFMError(f"device '{name}': choose auto, cpu, cuda or mps")
    if not available[kind]:
        raise TumorFMError(f"device '{name}' is not available on this machine")
    return torch.device(name)


class Predictor:
    """A network, the plan its inputs were prepared with, its classes (one output channel each)
    and how to predict; call it on (C, Z, Y, X) arrays. `Predictor.from_bundle` for a bundle;
    the constructor for any network that takes the plan's channels (a benchmark's peer, a
    promptable network), which then gets tumorfm's pre- and post-processing unchanged."""

    def __init__(
        self,
        network: torch.nn.Module,
        plan: Plan,
        classes: list[str],
        options: PredictOptions | None = None,
        *,
        patch_size: tuple[int, ...],
        paint_order: list[str] | None = None,
        parents: dict[str, str] | None = None,
        default_classes: list[str] | None = None,
        plan_name: str = "plan",
        source: str = "(in memory)",
        preset: str | None = None,
        lesions: list[str] | None = None,
        thresholds: dict[str, float] | None = None,
    ):
        self.options = options = options or PredictOptions()
        self.plan, self.plan_name, self.classes = plan, plan_name, list(classes)
        self.source, self.preset = source, preset
        self.device = choose_device(options.device)
        self.network = network.to(self.device).eval()
        self.patch_size = tuple(int(p) for p in patch_size)
        self.paint_order = list(paint_order or classes)
        wanted = options.classes or default_classes or self.classes
        unknown = [name for name in wanted if name not in self.classes]
        if unknown:
            raise TumorFMError(
                f"class '{unknown[0]}' is not in the bundle; it has {', '.join(self.classes)}"
            )
        self.labels = {
            name: self.classes.index(name) + 1 for name in self.classes if name in wanted
        }
        self.channels = [self.classes.index(name) for name in self.labels]
        self.parents = parents or {}
        self.lesions = self.lesion_classes(lesions)
        unknown = [name for name in options.thresholds or {} if name not in self.classes]
        if unknown:
            raise TumorFMError(
                f"--threshold {unknown[0]}: not a class of the bundle "
                f"(it has {', '.join(self.classes)})"
            )
        self.thresholds = {name: DECISION_THRESHOLD for name in self.labels} | {
            name: t
            for name, t in {**(thresholds or {}), **(options.thresholds or {})}.items()
            if name in self.labels
        }
        self.autocast, self.precision = autocast(options.precision, self.device)

    def lesion_classes(self, names: list[str] | None) -> set[str]:
        """The classes counted and measured as lesions: `names` (the bundle's record, or the
        user's `--lesion-classes`), else, for a bundle made before they were recorded, those the
        names say (tumorfm.data.classes.named_as_lesion)."""
        if names is None:
            return post.lesion_classes(list(self.labels), self.parents)
        unknown = [name for name in names if name not in self.classes]
        if unknown:
            raise TumorFMError(
                f"lesion class '{unknown[0]}' is not a class of the bundle "
                f"({', '.join(self.classes)})"
            )
        return set(names) & set(self.labels)

    @classmethod
    def from_bundle(cls, bundle: str | Path, options: PredictOptions | None = None) -> Predictor:
        """A bundle (folder or shipped name) with the plan `options.plan` names (or its only
        one); it predicts what that plan's dataset taught it (so a CT plan, no brain tumour)."""
        folder = bundle_folder(bundle)
        options = options or PredictOptions()
        meta = read_bundle_config(folder)
        plan_name, plan = choose_plan(meta, options.plan, folder)
        loaded = load_bundle(folder, device=str(choose_device(options.device)))
        channels = loaded.model.config.in_channels
        if len(plan.normalization_schemes) != channels:
            raise TumorFMError(
                f"{folder / CONFIG}: plan '{plan_name}' normalises "
                f"{len(plan.normalization_schemes)} channel(s), the network takes {channels}"
            )
        annotated = loaded.extra.get("annotated", {}).get(plan_name)
        predictor = cls(
            loaded.model, plan, loaded.classes, options,
            patch_size=loaded.model.config.patch_size, paint_order=loaded.paint_order,
            parents=loaded.extra.get("parents", {}),
            default_classes=[c for c in loaded.classes if c in annotated] if annotated else None,
            plan_name=plan_name, source=str(folder), preset=loaded.preset,
            lesions=loaded.lesions,
            thresholds=stored_thresholds(loaded.extra, plan_name, loaded.classes, folder),
        )  # fmt: skip
        store_lower(predictor.network, predictor.precision)  # its own network, run in autocast
        predictor.network.to(memory_format=torch.channels_last_3d)  # see model.blocks.InstanceNorm
        return predictor

    @property
    def in_channels(self) -> int:
        return len(self.plan.normalization_schemes)

    def settings(self) -> dict:
        o = self.options
        return {
            "bundle": self.source,
            "preset": self.preset,
            "plan": self.plan_name,
            "patch_size": list(self.patch_size),
            "target_spacing_zyx": list(self.plan.target_spacing_zyx),
            "overlap": o.overlap,
            "mirror": o.mirror,
            "windows_per_batch": o.windows_per_batch,
            "device": str(self.device),
            "precision": self.precision,
            "labels": self.labels,
            "thresholds": self.thresholds,
            "lesion_classes": sorted(self.lesions),
            "min_lesion_ml": o.min_lesion_ml,
            "largest_component": o.largest_component,
        }

    def _network(self, batch: torch.Tensor) -> torch.Tensor:
        """Sigmoid probabilities of the kept classes, averaged over the mirrorings."""
        flips = [()]
        if self.options.mirror:
            flips += [c for r in (1, 2, 3) for c in itertools.combinations(MIRROR_AXES, r)]
        total = None
        for axes in flips:
            with self.autocast:
                logits = self.network(batch.flip(axes) if axes else batch)
            probabilities = torch.sigmoid(logits[:, self.channels].float())
            probabilities = probabilities.flip(axes) if axes else probabilities
            total = probabilities if total is None else total.add_(probabilities)
        return total / len(flips)

    def sliding_window(self, image: np.ndarray, progress: str | None = None) -> np.ndarray:
        """(C, Z, Y, X) preprocessed image -> (K, Z, Y, X) float32 probabilities. `progress`:
        the label of a bar counting windows, drawn on a terminal only (never into a log)."""
        windows = window_count(image.shape[1:], self.patch_size, self.options.overlap)
        hidden = None if progress else True  # None: tqdm draws only on a terminal
        with tqdm(total=windows, desc=progress, unit="window", leave=False, disable=hidden) as bar:
            with torch.inference_mode():
                probabilities = sliding_window(
                    torch.from_numpy(image).to(self.device),
                    self.patch_size,
                    self.options.overlap,
                    self._network,
                    self.options.windows_per_batch,
                    bar.update,
                )
        return probabilities.numpy()

    def prepare(self, image: np.ndarray, case_id: str, spacing_zyx) -> tuple[np.ndarray, GridMap]:
        """(C, Z, Y, X) scan -> the network's input on the plan grid, as training saw it."""
        if image.shape[0] != self.in_channels:
            raise TumorFMError(
                f"{case_id}: {image.shape[0]} channel(s), the model expects {self.in_channels}"
            )
        resampled, _, grid = to_plan_grid(
            image.astype(np.float32, copy=False), spacing_zyx, self.plan
        )
        return resampled, grid

    def restore(
        self, probabilities: np.ndarray, grid: GridMap, keep_probabilities: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(K, ...) probabilities on the plan grid -> the label map on the scan's grid (and the
        probabilities there, float16), one class at a time, painted in the bundle's order."""
        dtype = np.uint8 if max(self.labels.values(), default=0) < 256 else np.uint16
        cropped_label = np.zeros(grid.shape_after_cropping, dtype=dtype)
        full = None
        if keep_probabilities:
            full = np.zeros((len(self.labels), *grid.shape_before_cropping), np.float16)
        index = {name: i for i, name in enumerate(self.labels)}
        for name in self.paint_order:
            if name not in self.labels:
                continue
            back = grid.back(probabilities[index[name]])
            cropped_label[back >= self.thresholds[name]] = self.labels[name]
            if full is not None:
                full[(index[name], *grid.region)] = back
        label = np.zeros(grid.shape_before_cropping, dtype=dtype)
        label[grid.region] = cropped_label
        return label, full

    def __call__(
        self,
        image: np.ndarray,
        geometry: Geometry,
        case_id: str = "case",
        keep_probabilities: bool = False,
        statistics: bool = False,
        progress: bool = False,
    ) -> CasePrediction:
        """Segment one scan: `image` (C, Z, Y, X) or (Z, Y, X) on `geometry`, stored in any
        axis order (the network and the statistics see it axial, tumorfm.data.orient)."""
        timer, seconds = time.perf_counter(), {}
        orientation = Orientation.of(geometry)
        image = orientation.to_axial(image[None] if image.ndim == 3 else image)
        spacing = orientation.spacing_zyx(geometry)
        resampled, grid = self.prepare(image, case_id, spacing)
        seconds["preprocess"] = time.perf_counter() - timer
        probabilities = self.sliding_window(resampled, case_id if progress else None)
        seconds["network"] = time.perf_counter() - timer - sum(seconds.values())
        del resampled
        label, full_probabilities = self.restore(probabilities, grid, keep_probabilities)
        options = self.options
        if options.min_lesion_ml > 0 or options.largest_component:
            label = post.postprocess(
                label,
                self.labels,
                spacing,
                self.lesions,
                self.parents,
                options.min_lesion_ml,
                options.largest_component,
            )
        seconds["export"] = time.perf_counter() - timer - sum(seconds.values())
        stats = None
        if statistics:  # on the axial stack: RECIST's diameters are axial
            scan = image[0] if len(image) == 1 else image
            stats = post.statistics(label, self.labels, spacing, self.lesions, scan)
        label = np.ascontiguousarray(orientation.back(label))
        if full_probabilities is not None:
            full_probabilities = np.ascontiguousarray(orientation.back(full_probabilities))
        seconds = {k: round(v, 3) for k, v in seconds.items()}
        return CasePrediction(
            case_id, label, geometry.spatial(), self.labels, full_probabilities, stats, seconds
        )
