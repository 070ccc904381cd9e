"""A web viewer of scans and their segmentations, built on NiiVue (issue 21).

    from tumorfm.viewer import Viewer, export_page, read_scene
    Viewer(read_scene("ct.nii.gz", ["ct_pred.nii.gz"]), "ct").start().url   # served locally
    export_page("ct.nii.gz", ["ct_pred.nii.gz"], "ct.html")                  # one file

Stages: layers (read, check, name and encode the volumes), page (the HTML around NiiVue),
server (local, token-guarded), assets (the pinned NiiVue bundle, `python -m
tumorfm.viewer.assets` installs it). Imported on first use, so that command runs alone.
"""

import importlib

_HOMES = {"Layer": "layers", "Scene": "layers", "read_scene": "layers"}
_HOMES |= {"export_page": "page", "Viewer": "server"}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'tumorfm.viewer' has no attribute '{name}'")
    return getattr(importlib.import_module(f"tumorfm.viewer.{_HOMES[name]}"), name)
