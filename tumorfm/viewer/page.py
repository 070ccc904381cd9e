"""The viewer's page: viewer.html filled with the layers, served or exported as one file.

Served, the page fetches NiiVue and each volume from the server (`niivue.umd.js`,
`volumes/N.nii.gz`, relative to the token's path). Exported, the same page carries all of it
inline (the script, the volumes as base64), so it opens from disk with no server; the pages a
report links to (write_case_page) share one NiiVue beside them instead. Scans larger than
EXPORT_VOXELS are shrunk for a page on disk, and the page says so.
"""

from __future__ import annotations

import base64
import html
import json
import shutil
from pathlib import Path
from urllib.parse import quote

from tumorfm.files import atomic_file
from tumorfm.tables import STATISTICS_HEADER, statistics_rows, table_html
from tumorfm.viewer import assets
from tumorfm.viewer.layers import Layer, Scene, read_scene

TEMPLATE = Path(__file__).with_name("viewer.html")
EXPORT_VOXELS = 16_000_000  # per volume in an exported page: 512x512x61, about 20 MB of base64
OPACITY = 0.5  # label maps over the scan
VIEW = 3  # NiiVue's slice type: 3 planes (axial, coronal, sagittal) and the 3D render


def _tables(layers: list[Layer]) -> str:
    parts = []
    for layer in layers:
        if layer.statistics:
            parts.append(f"<h2>{html.escape(layer.name)}: statistics</h2>")
            parts.append(table_html(STATISTICS_HEADER, statistics_rows(layer.statistics)))
    return "\n".join(parts)


def page(
    scene: Scene, title: str, embed: bool, script_inside: bool | None = None,
    refine: int | None = None,
) -> str:  # fmt: skip
    """The page's HTML; `embed` puts the volumes inside it, and the script unless
    `script_inside` is False (pages sharing one copy of NiiVue beside them); `refine`: the
    index of the layer a served page refines with clicks (tumorfm.viewer.refine)."""
    config = {
        "refine": refine,
        "view": VIEW,
        "opacity": OPACITY,
        "note": scene.note,
        "centre": scene.centre,
        "grid": scene.grid_config(),
        "layers": [
            {
                "name": layer.name,
                "url": f"volumes/{index}.nii.gz",
                "classes": layer.classes,
                "window": layer.window,
                **({"base64": base64.b64encode(layer.nifti).decode()} if embed else {}),
            }
            for index, layer in enumerate(scene.layers)
        ],
    }
    inline = embed if script_inside is None else script_inside
    if inline:  # nothing in NiiVue's bundle closes a script element; keep it so
        code = assets.script().decode("utf-8").replace("</script", "<\\/script")
        script = f"<script>{code}</script>"
    else:
        script = '<script src="niivue.umd.js"></script>'
    text = json.dumps(config).replace("</", "<\\/")
    filled = TEMPLATE.read_text(encoding="utf-8")
    for key, value in (
        ("__TITLE__", html.escape(title)),
        ("__TABLES__", _tables(scene.layers)),
        ("__CONFIG__", text),
    ):
        filled = filled.replace(key, value)
    return filled.replace("__SCRIPT__", script)  # last: the script's text is not searched


def export_page(
    scan: str | Path,
    label_maps: list[str | Path],
    path: str | Path,
    title: str | None = None,
    max_voxels: int = EXPORT_VOXELS,
) -> Path:
    """Write a self-contained viewer page of `scan` and its `label_maps` to `path`."""
    scene = read_scene(scan, label_maps, max_voxels)
    text = page(scene, title or Path(scan).name, embed=True)
    path = Path(path)
    with atomic_file(path, suffix=".html") as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_case_page(
    folder: str | Path,
    name: str,
    scan: str | Path,
    label_maps: list[str | Path],
    names: list[str] | None = None,
) -> str:
    """Write FOLDER/viewer/NAME.html, a case's page with its volumes inside and the NiiVue
    bundle (copied once, with its licence) beside it; return its link relative to FOLDER."""
    pages = Path(folder) / "viewer"
    pages.mkdir(parents=True, exist_ok=True)
    assets.script()  # a one-line error when NiiVue is not installed
    for source in (assets.SCRIPT, assets.LICENCE):
        if not (pages / source.name).is_file():
            with atomic_file(pages / source.name) as tmp:
                shutil.copyfile(source, tmp)
    scene = read_scene(scan, label_maps, EXPORT_VOXELS, names)
    with atomic_file(pages / f"{name}.html", suffix=".html") as tmp:
        tmp.write_text(page(scene, name, embed=True, script_inside=False), encoding="utf-8")
    return f"viewer/{quote(name)}.html"
