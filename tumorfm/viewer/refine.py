"""The viewer's refinement: a Session (tumorfm.interactive) behind the page, so a reader clicks
in the scan and sees the mask change, as `tumorfm refine` would write it.

The page sends each action as a POST to the server (local and token-guarded like every GET):
`prompt` {"zyx": [z, y, x], "positive": bool} (the voxel under the crosshair, as stored), `undo`
and `save`; the first two answer with the new mask as a gzipped NIfTI label map on the scan's
grid, which the page swaps in for its `refined` layer. `save` writes the label map and a
<stem>_refine.json record (the prompts, the bundle, the settings) to the chosen file.
"""

from __future__ import annotations

import json
import time
from http import HTTPStatus
from pathlib import Path

import numpy as np

import tumorfm
from tumorfm.data.io import Geometry, to_image, volume_suffix, write_volume
from tumorfm.errors import TumorFMError
from tumorfm.files import write_json
from tumorfm.viewer.layers import Layer, nifti_bytes

MAX_BODY = 4096  # bytes of a POST: a prompt is a few dozen
COLOUR = [230, 159, 0]  # the palette's first colour: label value 1 in every tumorfm picture


class Refiner:
    """One scan's Session, the prompts so far (for undo) and where `save` writes."""

    def __init__(self, session, geometry: Geometry, out: Path, settings: dict):
        self.session, self.geometry, self.out, self.settings = session, geometry, out, settings
        self.prompts: list[dict] = []
        self.name = getattr(session, "object_class", None) or "object"

    def layer(self) -> Layer:
        classes = [{"value": 1, "name": self.name, "colour": COLOUR}]
        return Layer("refined", self._mask_nifti(), classes)

    def _mask_nifti(self) -> bytes:
        mask = self.session.mask.astype(np.uint8)
        return nifti_bytes(to_image(mask, self.geometry))

    def answer(self, action: str, body: bytes) -> tuple[int, str, bytes]:
        """(status, content type, body) for a POST of `action` with `body`."""
        try:
            if action == "prompt":
                self._prompt(_prompt_of(body))
            elif action == "undo":
                self._replay(self.prompts[:-1])
            elif action == "save":
                return HTTPStatus.OK, "text/plain; charset=utf-8", self._save().encode()
            else:
                return HTTPStatus.NOT_FOUND, "text/plain", b"no such refine action\n"
        except TumorFMError as error:
            return HTTPStatus.BAD_REQUEST, "text/plain; charset=utf-8", f"{error}\n".encode()
        return HTTPStatus.OK, "application/octet-stream", self._mask_nifti()

    def _prompt(self, prompt: dict) -> None:
        started = time.perf_counter()
        self.session.add_point(prompt["zyx"], prompt["positive"])
        self.prompts.append({**prompt, "seconds": round(time.perf_counter() - started, 3)})

    def _replay(self, prompts: list[dict]) -> None:
        self.session.reset()
        self.prompts = []
        for prompt in prompts:
            self._prompt({k: prompt[k] for k in ("zyx", "positive")})

    def _save(self) -> str:
        mask = self.session.mask.astype(np.uint8)
        write_volume(mask, self.geometry, self.out)
        stem = self.out.name[: -len(volume_suffix(self.out))]
        record = self.out.parent / f"{stem}_refine.json"
        voxels = int(mask.sum())
        write_json(record, {
            "tumorfm_version": tumorfm.__version__, "label": str(self.out),
            "settings": self.settings, "coordinates": "voxel indices (z, y, x) of the scan",
            "prompts": self.prompts, "voxels": voxels,
            "volume_ml": round(voxels * float(np.prod(self.geometry.spacing)) / 1000, 3),
        })  # fmt: skip
        return f"saved {self.out} ({voxels} voxels) and {record.name}"


def _prompt_of(body: bytes) -> dict:
    """{"zyx": [three whole numbers], "positive": bool} from a POST body, or a one-line error."""
    try:
        given = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise TumorFMError("prompt: not JSON") from None
    if not isinstance(given, dict) or set(given) != {"zyx", "positive"}:
        raise TumorFMError('prompt: expected {"zyx": [z, y, x], "positive": true or false}')
    zyx, positive = given["zyx"], given["positive"]
    if not isinstance(positive, bool) or not isinstance(zyx, list) or len(zyx) != 3:
        raise TumorFMError('prompt: expected {"zyx": [z, y, x], "positive": true or false}')
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in zyx):
        raise TumorFMError(f"prompt: voxel {zyx} must be three whole numbers")
    return {"zyx": zyx, "positive": positive}
