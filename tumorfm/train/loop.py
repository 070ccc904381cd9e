"""The trainer's pieces, plain functions that pretraining, fine-tuning and any other training
(a peer network in benchmarks/, distillation, synthesis) share instead of copying the loop:
an optimiser, one step, one epoch, and the end-of-epoch save."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tumorfm.checkpoint import save_state
from tumorfm.errors import TumorFMError
from tumorfm.model.bundle import save_bundle
from tumorfm.train.logs import RunLogs


def make_optimizer(parameters, name: str, lr: float, weight_decay: float, momentum: float = 0.99):
    """nnU-Net's SGD (Nesterov) or AdamW."""
    if name == "sgd":
        return torch.optim.SGD(
            parameters, lr, momentum=momentum, nesterov=True, weight_decay=weight_decay
        )
    return torch.optim.AdamW(parameters, lr, weight_decay=weight_decay)


@dataclass
class Stepper:
    """What one training step needs. `loss(outputs, batch)` returns the scalar to minimise;
    outputs come back in float32 whatever the autocast ran in."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss: Callable[[object, dict], torch.Tensor]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    autocast: AbstractContextManager = field(default_factory=nullcontext)
    scaler: torch.amp.GradScaler | None = None  # fp16 only
    grad_clip: float = 12.0

    def step(self, batch: dict) -> float:
        """One optimiser step on `batch`; returns its loss."""
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast:
            outputs = self.model(batch["image"].to(self.device))
        outputs = [x.float() for x in outputs] if isinstance(outputs, list) else outputs.float()
        loss = self.loss(outputs, batch)
        if not torch.isfinite(loss):
            lr = self.optimizer.param_groups[0]["lr"]
            raise TumorFMError(
                f"the loss is {float(loss)} at learning rate {lr:g}: training diverged (try a "
                "lower --lr, or --precision fp32); the last epoch's saved state is intact"
            )
        scaler = self.scaler
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        if not torch.isfinite(norm) and not (scaler is not None and scaler.is_enabled()):
            raise TumorFMError(  # fp16's scaler skips such a step; any other would write NaN
                f"the gradient norm is {float(norm)}: training diverged (try a lower --lr); the "
                "last epoch's saved state is intact"
            )
        if scaler is not None:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()
        return float(loss.detach())

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr


def train_epoch(stepper: Stepper, loader: Iterator[dict], iterations: int, bar=None) -> dict:
    """`iterations` steps from `loader`: mean loss, seconds, and the share spent waiting for
    data (a loader that cannot keep up shows here first)."""
    started, waited, losses = time.perf_counter(), 0.0, []
    for _ in range(iterations):
        before = time.perf_counter()
        batch = next(loader)
        waited += time.perf_counter() - before
        losses.append(stepper.step(batch))
        if bar is not None:
            lr = stepper.optimizer.param_groups[0]["lr"]
            bar.update()
            bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}")
    seconds = time.perf_counter() - started
    return {
        "train_loss": float(np.mean(losses)),
        "seconds": round(seconds, 3),
        "iterations_per_second": iterations / seconds,
        "data_wait_share": waited / seconds,
    }


def save_epoch(
    run: Path,
    model: torch.nn.Module,
    state: tuple[dict, dict, dict, torch.amp.GradScaler | None],
    row: dict,
    logs: RunLogs,
    bundle_info: dict,
    improved: bool,
) -> None:
    """The end of an epoch, in the order that keeps a killed run resumable: the last (and best)
    bundle, the log line, then the exact resume state (weights, optimiser, meta, scaler)."""
    weights, optimizer_state, meta, scaler = state
    save_bundle(run / "last", model, **bundle_info)
    if improved:
        save_bundle(run / "best", model, **bundle_info)
    logs.epoch(row)  # before the state: a kill in between repeats the line, see RunLogs.rewind
    save_state(run, weights, optimizer_state, meta, scaler)
