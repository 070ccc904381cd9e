"""The teacher's side of distillation (tumorfm.train.distill): its frozen network and the term
its outputs add to the trainer's loss,

    loss = alpha * (T^2 * BCE(sigmoid(s / T), sigmoid(t / T)) + 1 - Dice(sigmoid(s), t > 0))
         + (1 - alpha) * partial-label loss

on the student's full-resolution output (deep supervision stays on the labels), the teacher on
the same augmented patch, in evaluation mode without gradients, in the run's precision. T^2
keeps the gradients' size as T grows (Hinton et al.). The Dice with the teacher's mask is there
for the reason the labels' loss has one: averaged over voxels, the BCE is ruled by the many
background voxels, and a student taught by it alone learnt to say "background" first (the
distill benchmark, seed 0: validation Dice 0.0 after 100 of 300 iterations and 0.43 at the end,
against 0.53 and 0.66 on the labels alone)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import torch
import torch.nn.functional as F

from tumorfm.errors import TumorFMError
from tumorfm.model.bundle import bundle_folder, load_bundle
from tumorfm.train.features import FeatureDistillation
from tumorfm.train.loss import batch_dice


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * BCE between the softened sigmoids, averaged over batch, classes and voxels."""
    target = torch.sigmoid(teacher / temperature)
    soft = F.binary_cross_entropy_with_logits(student / temperature, target)
    return soft * temperature**2


def teacher_dice_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice between the student's probabilities and the teacher's mask (logit > 0),
    per class over the batch and the voxels (nnU-Net's batch Dice), averaged over classes."""
    p, mask = torch.sigmoid(student.float()), (teacher > 0).float()
    over = (0, *range(2, student.ndim))
    return 1 - batch_dice((p * mask).sum(over), p.sum(over), mask.sum(over)).mean()


class Teacher:
    """A bundle's network answering for the student's classes, frozen, in evaluation mode."""

    def __init__(
        self,
        bundle: str | Path,
        classes: list[str],
        in_channels: int,
        patch_size: tuple[int, ...],
        device: torch.device,
        autocast: AbstractContextManager,
    ):
        loaded = load_bundle(bundle, patch_size=patch_size)
        check_teacher(
            bundle_folder(bundle), loaded.classes, loaded.modalities, classes, in_channels
        )
        self.channels = [loaded.classes.index(name) for name in classes]
        self.model = loaded.model.to(device).eval().requires_grad_(False)
        self.autocast, self.device = autocast, device
        self.parameters = sum(p.numel() for p in self.model.parameters())

    @torch.no_grad()
    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        with self.autocast:
            logits = self.model(image.to(self.device))
        return logits[:, self.channels].float()


def check_teacher(
    folder: Path, teacher_classes: list[str], modalities: list[str], classes: list[str], channels
) -> None:
    """Refuse a teacher that cannot teach this student: another input, or classes it lacks."""
    if len(modalities) != channels:
        raise TumorFMError(
            f"--teacher {folder}: takes {len(modalities)} input channels "
            f"({', '.join(modalities)}); the student's scans have {channels}"
        )
    missing = [name for name in classes if name not in teacher_classes]
    if missing:
        raise TumorFMError(
            f"--teacher {folder}: does not segment {', '.join(missing)} (its classes: "
            f"{', '.join(teacher_classes)}); map the dataset's classes to the teacher's with --map"
        )


def distilled(
    label_loss: Callable[[object, dict], torch.Tensor],
    teacher: Teacher,
    temperature: float,
    alpha: float,
    features: FeatureDistillation | None = None,
) -> Callable[[object, dict], torch.Tensor]:
    """The trainer's loss with the teacher's term mixed in (the Stepper's `loss`); alpha 0 is
    the labels alone (the teacher is not run): the baseline of the distillation benchmark.
    With `features`, the teacher's term also holds their stage-matching term."""
    if alpha == 0:
        return label_loss

    def loss(outputs, batch: dict) -> torch.Tensor:
        main = outputs[0] if isinstance(outputs, list) else outputs
        answer = teacher(batch["image"])
        taught = kd_loss(main, answer, temperature) + teacher_dice_loss(main, answer)
        if features is not None:
            taught = taught + features.loss()
        labelled = label_loss(outputs, batch) if alpha < 1 else taught.new_zeros(())
        return alpha * taught + (1 - alpha) * labelled

    return loss
