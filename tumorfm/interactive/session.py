"""One scan, its prompts and its mask, apart from the network: segment-anything's SamPredictor
shape (`set_image` once, then prompts, then the mask) for a promptable TSFM bundle.

The scan is prepared once, exactly as `predict` prepares it (axial order, crop to non-zero,
normalisation, plan spacing). Each prompt then costs one forward of one patch-sized window on
the plan grid (nnInteractive's AutoZoom in its simplest form, without the zoom): the window
covers every prompt if they fit in a patch, else it is centred on the newest one. The network
sees the scan, the prompts and the current mask in that window, and its answer replaces the
mask there; outside the window nothing changes. One window is enough for most tumours because
the lowres plans size the patch to hold most of a case (75% of the median one); a larger
object is refined window by window, each click bringing its own. No mirroring: a click must
answer in about a second on a CPU.

The mask is kept as probabilities on the plan grid (one float32 volume) and brought back to
the scan's grid and stored axis order when read, with the same resampling as `predict`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tumorfm.data.grid import GridMap, to_plan_grid
from tumorfm.data.io import Geometry
from tumorfm.data.orient import Orientation
from tumorfm.data.plan import Plan
from tumorfm.data.resample import resample_probabilities
from tumorfm.errors import TumorFMError
from tumorfm.infer.predictor import Predictor, choose_device, choose_plan
from tumorfm.interactive import local
from tumorfm.interactive.prompts import (
    POINT_RADIUS_MM,
    PROMPT_CHANNELS,
    Box,
    Point,
    encode,
    shape_text,
)
from tumorfm.model.bundle import CONFIG, bundle_folder, load_bundle, read_bundle_config
from tumorfm.model.precision import autocast

Triple = tuple[float, float, float]


@dataclass(frozen=True)
class IndexMap:
    """Voxel indices of a scan in its stored order <-> the plan grid: axes permuted to the
    axial order (never flipped, tumorfm.data.orient), the crop to non-zero subtracted, the
    resampling undone by scaling. tumorfm.data.resample matches grids by their outer edges, so
    a slice bound e goes to e * new / old and a voxel centre c to (c + 0.5) * new / old - 0.5."""

    orientation: Orientation
    grid: GridMap

    def _scale(self) -> list[float]:
        g = self.grid
        return [m / n for m, n in zip(g.shape_after_resampling, g.shape_after_cropping)]

    def _axial(self, stored) -> list[float]:
        return [float(stored[a]) for a in self.orientation.axes]

    def _stored(self, axial) -> Triple:
        out = [0.0, 0.0, 0.0]
        for value, axis in zip(axial, self.orientation.axes):
            out[axis] = float(value)
        return tuple(out)

    def point_to_plan(self, zyx) -> Triple:
        axial = self._axial(zyx)
        return tuple(
            (c - lo + 0.5) * f - 0.5 for c, (lo, _), f in zip(axial, self.grid.bbox, self._scale())
        )

    def point_to_scan(self, zyx) -> Triple:
        bbox, scale = self.grid.bbox, self._scale()
        return self._stored([(p + 0.5) / f - 0.5 + lo for p, (lo, _), f in zip(zyx, bbox, scale)])

    def edges_to_plan(self, lo_zyx, hi_zyx) -> tuple[Triple, Triple]:
        """A half-open box's bounds; not clipped to the plan grid."""
        scale, bbox = self._scale(), self.grid.bbox
        lo = [(e - b) * f for e, (b, _), f in zip(self._axial(lo_zyx), bbox, scale)]
        hi = [(e - b) * f for e, (b, _), f in zip(self._axial(hi_zyx), bbox, scale)]
        return tuple(lo), tuple(hi)

    def to_cropped(self, zyx) -> Triple:
        """A stored scan's voxel index -> the index on its axial, cropped grid (not resampled)."""
        return tuple(c - lo for c, (lo, _) in zip(self._axial(zyx), self.grid.bbox))

    def edges_to_cropped(self, lo_zyx, hi_zyx) -> tuple[Triple, Triple]:
        return self.to_cropped(lo_zyx), self.to_cropped(hi_zyx)

    def edges_to_scan(self, lo_zyx, hi_zyx) -> tuple[Triple, Triple]:
        scale, bbox = self._scale(), self.grid.bbox
        lo = [e / f + b for e, (b, _), f in zip(lo_zyx, bbox, scale)]
        hi = [e / f + b for e, (b, _), f in zip(hi_zyx, bbox, scale)]
        return self._stored(lo), self._stored(hi)


class Session:
    """A promptable network, the plan its inputs were prepared with and its patch size; one
    scan at a time. `Session.from_bundle` for a bundle; the constructor for any network that
    takes the plan's channels followed by PROMPT_CHANNELS and gives one logit channel (the
    prompted object). Coordinates in and out are voxel indices (z, y, x) of the scan as stored.

        session = Session.from_bundle(bundle)
        session.set_image(array, geometry)        # once per scan
        session.add_point((40, 120, 96))          # a positive click
        session.add_point((38, 150, 90), positive=False)
        label = session.mask                      # bool, the scan's stored shape
    """

    def __init__(
        self,
        network: torch.nn.Module,
        plan: Plan,
        *,
        patch_size: tuple[int, ...],
        device: str = "auto",
        precision: str = "auto",
    ):
        self.device = choose_device(device)
        self.network = network.to(self.device).eval()
        self.plan, self.patch_size = plan, tuple(int(p) for p in patch_size)
        self.autocast, self.precision = autocast(precision, self.device)
        self.points: list[Point] = []  # as given, in the scan's stored indices
        self.boxes: list[Box] = []
        self.seconds = 0.0  # of the last prompt: encoding and one forward
        self._map: IndexMap | None = None

    @classmethod
    def from_bundle(
        cls, bundle: str | Path, device: str = "auto", plan: str | None = None,
        precision: str = "auto", object_class: str | None = None,
    ) -> Session:  # fmt: skip
        """A bundle (folder or shipped name) with its plan `plan` (or its only one): a promptable
        one answers each prompt with a forward; an automatic one gives an AutomaticSession
        (`object_class`: which of its classes is the object, when the plan has several)."""
        folder = bundle_folder(bundle)
        meta = read_bundle_config(folder)
        channels = (meta.get("extra") or {}).get("prompt_channels")
        if channels is None:
            from tumorfm.infer.predictor import PredictOptions, Predictor

            classes = [object_class] if object_class else None
            options = PredictOptions(plan, classes, mirror=False, device=device,
                                     precision=precision)  # fmt: skip
            return AutomaticSession(Predictor.from_bundle(folder, options))
        if object_class is not None:
            raise TumorFMError(
                f"{folder}: promptable, one object per prompt; a class is chosen only on an "
                f"automatic bundle (drop '{object_class}')"
            )
        if list(channels) != list(PROMPT_CHANNELS):
            raise TumorFMError(
                f"{folder / CONFIG}: prompt channels {channels}; this tumorfm encodes "
                f"{list(PROMPT_CHANNELS)}"
            )
        plan_name, chosen = choose_plan(meta, plan, folder)
        network = load_bundle(folder, device=str(choose_device(device))).model
        config = network.config
        scan = len(chosen.normalization_schemes)
        if config.in_channels != scan + len(PROMPT_CHANNELS):
            raise TumorFMError(
                f"{folder / CONFIG}: the network takes {config.in_channels} channels, plan "
                f"'{plan_name}' gives {scan} plus {len(PROMPT_CHANNELS)} prompt channels"
            )
        if config.num_classes != 1:
            raise TumorFMError(
                f"{folder / CONFIG}: a promptable network has one output channel (the "
                f"prompted object), this one has {config.num_classes}"
            )
        return cls(network, chosen, patch_size=config.patch_size, device=device,
                   precision=precision)  # fmt: skip

    def set_image(self, image: np.ndarray, geometry: Geometry) -> None:
        """Prepare a scan ((C, Z, Y, X) or (Z, Y, X), any axis order) once; forgets the
        prompts and the mask of the previous scan."""
        image = np.asarray(image)
        image = image[None] if image.ndim == 3 else image
        shape = tuple(reversed(geometry.spatial().size))
        if image.ndim != 4 or image.shape[1:] != shape:
            raise TumorFMError(
                f"image of shape {image.shape}: its geometry has {shape_text(shape)}"
            )
        channels = len(self.plan.normalization_schemes)
        if image.shape[0] != channels:
            raise TumorFMError(
                f"image with {image.shape[0]} channel(s): the model expects {channels}"
            )
        orientation = Orientation.of(geometry)
        axial = orientation.to_axial(image).astype(np.float32, copy=False)
        self._image, _, grid = to_plan_grid(axial, orientation.spacing_zyx(geometry), self.plan)
        self._map, self._shape = IndexMap(orientation, grid), shape
        self.reset()

    def reset(self) -> None:
        """No prompts, an empty mask."""
        self._need_image()
        self.points, self.boxes, self._plan_points, self._plan_boxes = [], [], [], []
        self._probability = np.zeros(self._map.grid.shape_after_resampling, np.float32)
        self._window: tuple[slice, ...] | None = None
        self._mask: np.ndarray | None = None

    def set_mask(self, mask: np.ndarray) -> None:
        """Start from `mask` (bool, the scan's stored shape; e.g. an automatic prediction):
        it becomes the previous-mask channel, and the prompts given so far are forgotten.
        Its part outside the scan's non-zero box is dropped (the network never sees there)."""
        self._need_image()
        mask = np.asarray(mask)
        if mask.shape != self._shape:
            raise TumorFMError(
                f"mask of shape {mask.shape}: the scan has {shape_text(self._shape)}"
            )
        self.reset()
        grid = self._map.grid
        cropped = self._map.orientation.to_axial(mask)[grid.region].astype(np.float32)
        self._probability = resample_probabilities(
            cropped, grid.shape_after_resampling, grid.separate_axis
        ).astype(np.float32, copy=False)

    def add_point(self, zyx, positive: bool = True) -> None:
        """A click at voxel `zyx` of the stored scan; refines the mask around it."""
        self._need_image()
        point = Point(zyx, positive).check(self._shape)
        inside = Point(self._map.point_to_plan(point.zyx), positive)
        if not all(-0.5 <= c < n - 0.5 for c, n in zip(inside.zyx, self._probability.shape)):
            raise TumorFMError(f"{point.name}: in the scan's empty (all-zero) border")
        self._add(point, inside, (inside.zyx, tuple(c + 1 for c in inside.zyx)))

    def add_box(self, lo_zyx, hi_zyx, positive: bool = True) -> None:
        """A box (half-open: hi exclusive) in the stored scan; refines the mask around it."""
        self._need_image()
        box = Box(lo_zyx, hi_zyx, positive).check(self._shape)
        lo, hi = self._map.edges_to_plan(box.lo_zyx, box.hi_zyx)
        shape = self._probability.shape
        lo = tuple(max(a, 0.0) for a in lo)
        hi = tuple(min(b, float(n)) for b, n in zip(hi, shape))
        if any(a >= b for a, b in zip(lo, hi)):
            raise TumorFMError(f"{box.name}: in the scan's empty (all-zero) border")
        self._add(box, Box(lo, hi, positive), (lo, hi))

    @property
    def mask(self) -> np.ndarray:
        """The current mask: bool, the scan's stored shape and axis order."""
        self._need_image()
        if self._mask is None:
            grid = self._map.grid
            full = np.zeros(grid.shape_before_cropping, bool)
            full[grid.region] = self._cropped_mask()
            self._mask = np.ascontiguousarray(self._map.orientation.back(full))
        return self._mask

    def _cropped_mask(self) -> np.ndarray:
        """The mask on the scan's axial, cropped grid: the plan grid's probabilities, back."""
        return self._map.grid.back(self._probability) >= 0.5

    @property
    def window(self) -> tuple[Triple, Triple] | None:
        """Where the last prompt could change the mask: a half-open box (lo, hi) in the stored
        scan's indices (give or take one voxel of interpolation at its faces)."""
        if self._window is None:
            return None
        return self._map.edges_to_scan(*zip(*((s.start, s.stop) for s in self._window)))

    @property
    def index_map(self) -> IndexMap:
        self._need_image()
        return self._map

    def _need_image(self) -> None:
        if self._map is None:
            raise RuntimeError("no image: call set_image first")

    def _add(self, prompt: Point | Box, on_grid: Point | Box, extent) -> None:
        """Record the prompt (as given, and on the plan grid) and predict around it."""
        if not prompt.positive and not (
            any(p.positive for p in self._plan_points + self._plan_boxes)
            or (self._probability >= 0.5).any()
        ):
            raise TumorFMError(
                f"{prompt.name}: a negative prompt needs something to correct; give a "
                "positive prompt or a mask first"
            )
        if isinstance(prompt, Point):
            self.points.append(prompt)
            self._plan_points.append(on_grid)
        else:
            self.boxes.append(prompt)
            self._plan_boxes.append(on_grid)
        self._predict(extent)

    def _choose_window(self, newest) -> tuple[slice, ...]:
        """One patch: around every prompt if they fit in it, else around the newest."""
        extents = [(p.zyx, tuple(c + 1 for c in p.zyx)) for p in self._plan_points]
        extents += [(b.lo_zyx, b.hi_zyx) for b in self._plan_boxes]
        lo = np.min([e[0] for e in extents], axis=0)
        hi = np.max([e[1] for e in extents], axis=0)
        if np.any(hi - lo > np.asarray(self.patch_size)):
            lo, hi = np.asarray(newest[0]), np.asarray(newest[1])
        window = []
        for a, b, p, n in zip(lo, hi, self.patch_size, self._probability.shape):
            start = min(max(math.floor((a + b) / 2 - p / 2 + 0.5), 0), max(n - p, 0))
            window.append(slice(start, min(start + p, n)))
        return tuple(window)

    def _predict(self, newest) -> None:
        """One forward of one window; its probabilities replace the mask there."""
        timer = time.perf_counter()
        window = self._choose_window(newest)
        shape = tuple(s.stop - s.start for s in window)
        prompts = encode(
            shape, self._plan_points, self._plan_boxes, self._probability[window],
            self.plan.target_spacing_zyx, POINT_RADIUS_MM, tuple(s.start for s in window),
        )  # fmt: skip
        inputs = np.concatenate([self._image[(slice(None), *window)], prompts])
        # a scan smaller than the patch: zeros beyond it, as the sliding window of `predict`
        inputs = np.pad(inputs, [(0, 0)] + [(0, p - s) for p, s in zip(self.patch_size, shape)])
        with torch.inference_mode(), self.autocast:
            logits = self.network(torch.from_numpy(inputs)[None].to(self.device))
        probability = torch.sigmoid(logits[0, 0].float()).cpu().numpy()
        self._probability[window] = probability[tuple(slice(0, s) for s in shape)]
        self._window, self._mask = window, None
        self.seconds = time.perf_counter() - timer


class AutomaticSession(Session):
    """Prompts on an automatic bundle: its network runs once per scan (`predict`'s sliding
    window, no mirroring, brought back to the scan's grid), and each prompt then refines those
    probabilities by local thresholds (tumorfm.interactive.local) at the scan's own resolution,
    with no forward at all: a click answers in a fraction of a second, and every click is
    honoured. Before any prompt the mask is the network's own; a prompt may change it anywhere
    (a positive click selects its object), so `window` is the whole scan."""

    def __init__(self, predictor: Predictor):
        if len(predictor.channels) != 1:
            raise TumorFMError(
                f"{predictor.source}: plan '{predictor.plan_name}' predicts "
                f"{', '.join(predictor.labels)}; name the object's class (refine --class)"
            )
        super().__init__(
            predictor.network, predictor.plan, patch_size=predictor.patch_size,
            device=str(predictor.device), precision=predictor.options.precision,
        )  # fmt: skip
        self.predictor, self.object_class = predictor, next(iter(predictor.labels))
        self.threshold = predictor.thresholds[self.object_class]  # the mask before any prompt
        self._network: tuple[np.ndarray, np.ndarray] | None = None  # plan grid, scan grid
        # the local clicks' settings: see tumorfm.interactive.local
        self.margin, self.reach_mm, self.box_fade = local.MARGIN, local.REACH_MM, local.BOX_FADE

    def set_image(self, image: np.ndarray, geometry: Geometry) -> None:
        self._network = None
        super().set_image(image, geometry)
        timer = time.perf_counter()
        answer = self.predictor.sliding_window(self._image, "network")[0]
        self._network = (answer, self._map.grid.back(answer))
        self._spacing = self._map.orientation.spacing_zyx(geometry)
        self.reset()
        self.seconds = time.perf_counter() - timer

    def reset(self) -> None:
        """No prompts: the network's own mask."""
        super().reset()
        self._refined: np.ndarray | None = None
        if self._network is not None:
            self._probability, self._scan = (a.copy() for a in self._network)

    def set_mask(self, mask: np.ndarray) -> None:
        """Start from `mask` instead of the network's answer: prompts then refine the mask."""
        super().set_mask(mask)
        grid = self._map.grid
        self._scan = self._map.orientation.to_axial(mask)[grid.region].astype(np.float32)

    def _predict(self, newest) -> None:
        timer = time.perf_counter()
        index = self._map
        points = [Point(index.to_cropped(p.zyx), p.positive) for p in self.points]
        boxes = [
            Box(*index.edges_to_cropped(b.lo_zyx, b.hi_zyx), positive=b.positive)
            for b in self.boxes
        ]
        self._refined = local.refine(
            self._scan, points, boxes, self._spacing, self.margin, self.reach_mm, self.box_fade,
            self.threshold,
        )  # fmt: skip
        self._window = tuple(slice(0, n) for n in self._probability.shape)
        self._mask = None
        self.seconds = time.perf_counter() - timer

    def _cropped_mask(self) -> np.ndarray:
        return self._scan >= self.threshold if self._refined is None else self._refined
