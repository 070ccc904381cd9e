"""Validation during training: nnU-Net's pseudo Dice on fixed validation patches, per dataset and
per annotated class (full-volume evaluation is `tumorfm evaluate`'s job)."""

from __future__ import annotations

import numpy as np
import torch

from tumorfm.train.loader import PatchBatches


@torch.no_grad()
def validate(
    model, batches: PatchBatches, steps: int, classes: list[str], processes, autocast
) -> dict:
    """nnU-Net's pseudo Dice on fixed validation patches, per dataset and annotated class."""
    model.eval()
    names = sorted({c.properties["dataset"] for c in batches.cases})
    counts = torch.zeros(len(names), len(classes), 3, dtype=torch.float64)  # tp, fp, fn
    for step in range(steps):
        batch = batches[step]
        with autocast:
            logits = model(batch["image"].to(processes.device))
        logits = logits[0] if isinstance(logits, list) else logits
        predicted = (logits.float() > 0).cpu()
        target = batch["target"].bool()
        for i, dataset in enumerate(batch["dataset"]):
            keep = batch["annotated"][i]
            p, t = predicted[i][keep].flatten(1), target[i][keep].flatten(1)
            d = names.index(dataset)
            counts[d, keep, 0] += (p & t).sum(1).double()
            counts[d, keep, 1] += (p & ~t).sum(1).double()
            counts[d, keep, 2] += (~p & t).sum(1).double()
    if processes.distributed:
        torch.distributed.all_reduce(counts)
    model.train()
    dice = {}
    for d, dataset in enumerate(names):
        for k, name in enumerate(classes):
            tp, fp, fn = counts[d, k].tolist()
            if tp + fp + fn > 0:
                dice.setdefault(dataset, {})[name] = 2 * tp / (2 * tp + fp + fn)
    scores = [v for per_class in dice.values() for v in per_class.values()]
    return {"dice": dice, "mean_dice": float(np.mean(scores)) if scores else float("nan")}
