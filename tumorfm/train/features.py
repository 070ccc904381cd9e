"""Feature distillation (`distill --features`): the student's bottleneck and decoder stages learn
the teacher's through 1x1x1 adapters (FitNets, Romero et al. 2015; for 3D segmentation, Qin et
al., TMI 2021), beside the logit term of tumorfm.train.teacher.

Stages pair by resolution (their stride from the input), so a student with fewer or narrower
stages than its teacher pairs wherever both have one. Each pair's term is the squared error
relative to the teacher feature's mean square: every stage weighs alike whatever its scale. The
adapters train with the student (in its optimiser), are kept in the run's resume state under
`ADAPTERS.`, and stay out of the bundle: predict never needs them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tumorfm.model.network import TSFM, TSFMConfig

ADAPTERS = "kd_adapters."  # the adapters' key prefix in RUN/state/model.safetensors


def stage_strides(config: TSFMConfig) -> dict[str, tuple[tuple[int, ...], int]]:
    """{module name: (stride from the input, channels)} of the bottleneck's output and of each
    decoder stage's, as TSFM.forward computes them."""
    strides = [(config.stem_stride,) * len(config.patch_size)]  # a strided stem: all halved
    for step in config.strides:
        strides.append(tuple(a * b for a, b in zip(strides[-1], step)))
    stages = {"bottleneck": (strides[-1], config.widths[-1])}
    for j in range(len(config.widths) - 1):  # decoder stage j ends at encoder stage i's grid
        i = len(config.widths) - 2 - j
        stages[f"decoder.{j}"] = (strides[i], config.widths[i])
    return stages


def stage_pairs(student: TSFMConfig, teacher: TSFMConfig) -> dict[str, str]:
    """{student stage: teacher stage} of equal stride, bottleneck with bottleneck."""
    ours, theirs = stage_strides(student), stage_strides(teacher)
    pairs = {}
    if ours["bottleneck"][0] == theirs["bottleneck"][0]:
        pairs["bottleneck"] = "bottleneck"
    decoder = {stride: name for name, (stride, _) in theirs.items() if name != "bottleneck"}
    for name, (stride, _) in ours.items():
        if name != "bottleneck" and stride in decoder:
            pairs[name] = decoder[stride]
    return pairs


class Tap:
    """Forward hooks that keep the last outputs of named modules of a network."""

    def __init__(self, model: nn.Module, names: list[str]):
        modules = dict(model.named_modules())
        self.outputs: dict[str, torch.Tensor] = {}
        for name in names:
            modules[name].register_forward_hook(self._keep(name))

    def _keep(self, name: str):
        def hook(module, inputs, output):
            self.outputs[name] = output

        return hook

    def take(self) -> dict[str, torch.Tensor]:
        """The kept outputs, forgotten here (so they do not outlive the step)."""
        outputs, self.outputs = self.outputs, {}
        return outputs


class FeatureDistillation(nn.Module):
    """The adapters, and the term that matches the student's stages to the teacher's."""

    def __init__(self, student: TSFM, teacher: TSFM):
        super().__init__()
        self.pairs = stage_pairs(student.config, teacher.config)
        if not self.pairs:
            raise ValueError("the student and the teacher share no stage resolution")
        ours, theirs = stage_strides(student.config), stage_strides(teacher.config)
        self.adapters = nn.ModuleDict(
            {_key(s): nn.Conv3d(ours[s][1], theirs[t][1], 1) for s, t in self.pairs.items()}
        )
        self.student = Tap(student, list(self.pairs))
        self.teacher = Tap(teacher, list(self.pairs.values()))

    def loss(self) -> torch.Tensor:
        """Mean over pairs of |adapter(student) - teacher|^2 / mean(teacher^2), from the last
        forward of each network."""
        ours, theirs = self.student.take(), self.teacher.take()
        terms = []
        for s, t in self.pairs.items():
            target = theirs[t].float()
            error = F.mse_loss(self.adapters[_key(s)](ours[s].float()), target)
            terms.append(error / target.pow(2).mean().clamp_min(1e-6))
        return torch.stack(terms).mean()

    def state(self) -> dict[str, torch.Tensor]:
        """The adapters' weights under ADAPTERS, for the run's resume state."""
        return {ADAPTERS + k: v.detach().cpu() for k, v in self.adapters.state_dict().items()}

    def load(self, weights: dict[str, torch.Tensor]) -> None:
        """Restore the adapters from resume-state weights, and take their keys out of them."""
        mine = {k[len(ADAPTERS) :]: weights.pop(k) for k in list(weights) if k.startswith(ADAPTERS)}
        self.adapters.load_state_dict(mine)


def _key(name: str) -> str:
    return name.replace(".", "_")  # ModuleDict keys hold no dots


__all__ = ["ADAPTERS", "FeatureDistillation", "Tap", "stage_pairs", "stage_strides"]
