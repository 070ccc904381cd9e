"""A training run's settings: the paper's recipe (`PretrainConfig`'s defaults) and a profile
that finishes in minutes on a 2-core CPU, each checked once, where the config is made."""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, fields

from tumorfm.defaults import CPU_PROFILE_PATCH, PAPER_PATCH, PLACEMENT, PLACEMENTS
from tumorfm.errors import TumorFMError
from tumorfm.model import list_models
from tumorfm.model.adapters import MODES


@dataclass
class PretrainConfig:
    model: str = "tsfm-1.6b"
    patch_size: tuple[int, int, int] = PAPER_PATCH
    batch_size: int = 2  # global, split across processes
    epochs: int = 1000
    iterations_per_epoch: int = 250
    optimizer: str = "sgd"  # or "adamw"
    lr: float = 1e-3
    momentum: float = 0.99
    weight_decay: float = 1e-3
    grad_clip: float = 12.0
    precision: str = "auto"  # auto (bf16 where the device has it), bf16, fp16, fp32
    deep_supervision: bool = True
    val_every: int = 10  # epochs
    val_fraction: float = 0.2  # of each dataset's cases, at least one when it has two
    folds: int = 0  # > 1: cross-validation, fold `fold` of `folds` held out (val_fraction unused)
    fold: int = 0  # of `folds`, or of a split file's list of folds
    split_file: str | None = None  # fixed train / val cases (nnU-Net's splits_final.json too)
    val_batches: int = 20
    seed: int = 0
    workers: int = 2
    checkpointing: bool = False
    fsdp: bool = False
    device: str = "auto"
    init_from: str | None = None  # a bundle to start from (transfer), else a fresh preset
    init_weights: bool = True  # False: init_from's architecture with fresh weights (baseline)
    mode: str = "full"  # which parameters train: full, decoder, head, adapter, lora
    warmup_epochs: int = 0  # first train only the heads (MultiTalent's transfer), then `mode`
    adaptation: dict = field(default_factory=dict)  # adapter_dim / lora_rank for the network
    promptable: bool = False  # learn from simulated clicks and boxes (tumorfm.interactive)
    teacher: str | None = None  # a bundle whose outputs the network also learns (distillation)
    kd_temperature: float = 2.0  # softens the teacher's and the student's sigmoids
    kd_alpha: float = 0.5  # weight of the teacher's term; 1 - kd_alpha: the labels'
    kd_features: bool = False  # the student's stages also learn the teacher's (train/features)
    placement: str = PLACEMENT  # of a small case and a foreground voxel in a patch (train/loader)

    def __post_init__(self):
        self.patch_size = tuple(int(p) for p in self.patch_size)
        if self.model not in list_models():
            raise TumorFMError(
                f"unknown model '{self.model}'; choose one of {', '.join(list_models())}"
            )
        if self.optimizer not in ("sgd", "adamw"):
            raise TumorFMError(f"optimizer '{self.optimizer}': choose sgd or adamw")
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise TumorFMError(f"precision '{self.precision}': choose auto, bf16, fp16 or fp32")
        if self.placement not in PLACEMENTS:
            raise TumorFMError(
                f"placement '{self.placement}': choose one of {', '.join(PLACEMENTS)}"
            )
        if self.mode not in MODES:
            raise TumorFMError(f"mode '{self.mode}': choose one of {', '.join(MODES)}")
        for name in ("lr", "momentum", "weight_decay", "grad_clip", "val_fraction"):
            value = getattr(self, name)
            low_ok = value > 0 if name in ("lr", "grad_clip") else value >= 0
            if not (math.isfinite(value) and low_ok and (name != "momentum" or value < 1)):
                raise TumorFMError(f"{name} {value}: {_RANGES[name]}")
        if not (math.isfinite(self.kd_temperature) and self.kd_temperature > 0):
            raise TumorFMError(f"temperature {self.kd_temperature}: must be a positive number")
        if not (math.isfinite(self.kd_alpha) and 0 <= self.kd_alpha <= 1):
            raise TumorFMError(f"alpha {self.kd_alpha}: the teacher's weight goes from 0 to 1")
        if self.kd_features and not self.teacher:
            raise TumorFMError("--features distils a teacher's stages: give --teacher")
        if self.kd_features and self.kd_alpha == 0:
            raise TumorFMError("--features with alpha 0: the teacher's term has no weight")
        if self.teacher and self.promptable:
            raise TumorFMError("distillation trains automatic segmenters: drop --promptable")
        if min(self.patch_size) < 8 or len(self.patch_size) != 3:
            raise TumorFMError(f"patch {self.patch_size}: three sizes (z y x), each at least 8")


_RANGES = {
    "lr": "the learning rate must be a positive finite number",
    "momentum": "must be finite, at least 0 and below 1",
    "weight_decay": "must be finite and not negative",
    "grad_clip": "the gradient norm clip must be a positive finite number",
    "val_fraction": "must be finite and not negative",
}

# The paper's recipe, and one that finishes in minutes on a 2-core CPU.
PROFILES = {
    "paper": {},
    # a short schedule: nnU-Net's initial lr (1e-2) instead of the paper's 1e-3 for 250k steps
    "cpu": dict(
        model="tsfm-tiny",
        patch_size=CPU_PROFILE_PATCH,
        epochs=10,
        iterations_per_epoch=20,
        lr=1e-2,
        val_every=2,
        val_batches=4,
    ),
}


def make_config(profile: str = "paper", **changes) -> PretrainConfig:
    """The profile's PretrainConfig with `changes` (PretrainConfig fields; None keeps the
    profile's). The one place where settings handed down by finetune and the transfer study
    are checked by name: a misspelt one is refused here, naming the closest field."""
    if profile not in PROFILES:
        raise TumorFMError(f"unknown profile '{profile}'; choose one of {', '.join(PROFILES)}")
    names = [f.name for f in fields(PretrainConfig)]
    for name in changes:
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise TumorFMError(f"setting '{name}' is not a training setting{hint}")
    return PretrainConfig(
        **{**PROFILES[profile], **{k: v for k, v in changes.items() if v is not None}}
    )
