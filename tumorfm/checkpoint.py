"""Resume state: everything a run needs to continue exactly, written without pickle.

    RUN/state/model.safetensors      weights
    RUN/state/optimizer.safetensors  optimiser buffers (momentum, Adam moments), by parameter index
    RUN/state/rng.safetensors        torch's CPU (and CUDA) random states
    RUN/state/state.json             epoch, step, optimiser hyper-parameters, best metric, ...

The folder is written beside the old one and swapped in by renames, so a run killed while saving
still has its previous state. The loader needs no state of its own: every batch is a pure function
of (seed, step), so the step number is its position.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tumorfm.errors import TumorFMError
from tumorfm.files import atomic_folder, previous

STATE = "state"


SEPARATOR = "|"  # between a parameter's key (an index, or a name under FSDP) and its buffer


def _optimizer_tensors(state: dict) -> tuple[dict, dict]:
    tensors, scalars = {}, {}
    for key, buffers in state["state"].items():
        for name, value in buffers.items():
            if torch.is_tensor(value):
                tensors[f"{key}{SEPARATOR}{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{key}{SEPARATOR}{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _key(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def save_state(
    run: Path,
    model_state: dict,
    optimizer_state: dict,
    meta: dict,
    scaler: torch.amp.GradScaler | None = None,
) -> Path:
    """Write RUN/state atomically (new folder, then renames: see files.atomic_folder)."""
    with atomic_folder(run / STATE) as tmp:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in model_state.items()},
            str(tmp / "model.safetensors"),
        )
        tensors, optimizer_meta = _optimizer_tensors(optimizer_state)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
        save_file(rng, str(tmp / "rng.safetensors"))
        full = {
            **meta,
            "optimizer": optimizer_meta,
            "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        }
        (tmp / "state.json").write_text(json.dumps(full, indent=2))
    return run / STATE


def has_state(run: Path) -> bool:
    return any((folder / "state.json").is_file() for folder in (run / STATE, previous(run / STATE)))


def load_state(run: Path) -> tuple[dict, dict, dict, dict]:
    """(meta, model tensors, optimizer state dict, rng tensors) of the last complete save."""
    folder = run / STATE
    if not (folder / "state.json").is_file():  # killed between the two renames
        folder = previous(run / STATE)
    reading = folder / "state.json"
    try:
        meta = json.loads(reading.read_text())
        reading = folder / "model.safetensors"
        model = load_file(str(reading))
        reading = folder / "optimizer.safetensors"
        buffers = load_file(str(reading))
        reading = folder / "state.json"
        optimizer_meta = meta.pop("optimizer")
        state: dict[int | str, dict] = {}
        for key, value in [*buffers.items(), *optimizer_meta["scalars"].items()]:
            parameter, name = key.split(SEPARATOR, 1)
            state.setdefault(_key(parameter), {})[name] = value
        optimizer_state = {"state": state, "param_groups": optimizer_meta["param_groups"]}
        reading = folder / "rng.safetensors"
        rng = load_file(str(reading))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, SafetensorError) as error:
        raise TumorFMError(
            f"{reading}: damaged ({type(error).__name__}: {error}); this run cannot resume "
            "from it: start a new run"
        ) from None
    return meta, model, optimizer_state, rng


def restore_rng(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    cuda = [rng[k] for k in sorted(k for k in rng if k.startswith("cuda"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
