"""What a procedural tumour looks like: HU ranges to draw from, or real tumours' measured looks
(a `tumorfm synth appearance -o` file, which a pool file may name), checked before any tumour is
made so a bad one is a one-line error. Here, under data, because reading a pool file reads it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from tumorfm.errors import TumorFMError
from tumorfm.files import read_json_object

# percent levels of a measured look's quantiles: a real tumour's standardised HU distribution,
# tails included (fat, necrosis, calcification make real sarcomas heavy-tailed)
QUANTILES = (0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 97.5, 99.0, 99.5)


def checked_look(shift_hu, texture_hu, modality, looks=None) -> dict:
    """The checked appearance ranges, or measured looks: HU only make sense on CT."""
    if looks is not None:
        if shift_hu is not None or texture_hu is not None:
            raise TumorFMError("give measured looks or shift_hu / texture_hu ranges, not both")
        if modality != "CT":
            raise TumorFMError("looks are in HU: CT only (MR tumours are set from percentiles)")
        return {"looks": checked_looks(looks)}
    look = {}
    for name, span in (("shift_hu", shift_hu), ("texture_hu", texture_hu)):
        if span is None:
            continue
        if modality != "CT":
            raise TumorFMError(f"{name} is in HU: CT only (MR tumours are set from percentiles)")
        try:
            low, high = (float(v) for v in span)
        except (TypeError, ValueError):
            raise TumorFMError(f"{name} {span!r} must be two numbers, low and high") from None
        if not (math.isfinite(low) and math.isfinite(high) and low <= high):
            raise TumorFMError(f"{name} {[low, high]} must be finite with low <= high")
        if name == "texture_hu" and low < 0:
            raise TumorFMError(f"texture_hu {[low, high]} is a standard deviation: not negative")
        look[name] = (low, high)
    return look


def checked_looks(looks) -> list[tuple[float, float, np.ndarray]]:
    """(shift, texture, quantiles) per look; a look that cannot be one is a one-line error."""
    checked = []
    for i, one in enumerate(list(looks)):
        try:
            shift, texture = float(one["shift_hu"]), float(one["texture_hu"])
            quantiles = np.asarray(one["quantiles"], dtype=np.float64)
        except (KeyError, TypeError, ValueError):
            raise TumorFMError(
                f"look {i}: needs shift_hu, texture_hu and quantiles (synth appearance's cases)"
            ) from None
        if not (math.isfinite(shift) and math.isfinite(texture) and texture >= 0):
            raise TumorFMError(
                f"look {i}: shift_hu {shift}, texture_hu {texture}: finite, std >= 0"
            )
        if (
            quantiles.shape != (len(QUANTILES),)
            or not np.all(np.isfinite(quantiles))
            or np.any(np.diff(quantiles) < 0)
        ):
            raise TumorFMError(
                f"look {i}: quantiles must be {len(QUANTILES)} non-decreasing numbers "
                f"(at {', '.join(f'{q:g}' for q in QUANTILES)} %)"
            )
        checked.append((shift, texture, quantiles))
    if not checked:
        raise TumorFMError("looks: none given; measure some with `tumorfm synth appearance`")
    return checked


def read_looks(path: Path) -> list[dict]:
    """The measured looks of a `tumorfm synth appearance -o` file, one per real tumour, checked
    as the engine takes them (procedural.synthesise's `looks`); one-line errors name the file."""
    path = Path(path)
    found = read_json_object(path, "write it with `tumorfm synth appearance -o`")
    cases = found.get("cases")
    if not isinstance(cases, dict) or not cases:
        raise TumorFMError(
            f"{path}: no measured tumours ('cases'); write it with `tumorfm synth appearance -o`"
        )
    looks = list(cases.values())
    try:
        checked_looks(looks)
    except TumorFMError as error:
        raise TumorFMError(f"{path}: {error}; measure again with this tumorfm") from None
    return looks
