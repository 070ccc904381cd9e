"""Training with simulated interaction (SAM-Med3D's and RITM's protocol, nnInteractive's input).

Each training sample becomes one prompted object: a class its dataset annotates and the patch
holds (else any annotated class, which then has no prompt and nothing to find). The simulated
reader (tumorfm.interactive.simulate) gives a first prompt (a point inside, the jittered box, or
nothing), then 0..MAX_ROUNDS corrective clicks, each placed on the errors of the network's own
answer so far (a forward without gradient, the previous mask fed back), so the network learns to
correct itself as a reader will ask it to. The image gains the 5 prompt channels; the target
becomes that object's one channel. Every random choice comes from the run's seed, the step and
the sample index: a resumed run prompts exactly as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from tumorfm.interactive.prompts import encode
from tumorfm.interactive.simulate import corrective_click, first_prompt

MAX_ROUNDS = 3  # corrective clicks per sample, drawn 0..MAX_ROUNDS: each costs one forward
PROMPT_STREAM = 19  # the prompts' own random stream: the patches are drawn as without them


def prompted_classes(classes: list[str]) -> list[str]:
    """The promptable network's one output class: the pool's class if it has one (so its head
    starts from the automatic bundle's head of that name), else 'object'."""
    return list(classes) if len(classes) == 1 else ["object"]


class Prompter:
    """Turns a batch of the loader (image, target over the pool's classes, annotated) into a
    prompted batch (image + PROMPT_CHANNELS, the prompted object's target)."""

    def __init__(self, model, autocast, device, spacings: dict[str, tuple], seed: int):
        self.model, self.autocast, self.device = model, autocast, device
        self.spacings, self.seed = spacings, seed

    @torch.no_grad()
    def _answer(self, images: torch.Tensor) -> np.ndarray:
        with self.autocast:
            logits = self.model(images.to(self.device))
        logits = logits[0] if isinstance(logits, list) else logits
        return (logits[:, 0].float() > 0).cpu().numpy()

    def __call__(self, batch: dict, step: int, validation: bool = False) -> dict:
        image, target, annotated = batch["image"], batch["target"], batch["annotated"]
        size = len(image)
        key = [self.seed, int(step), PROMPT_STREAM, int(validation)]
        rngs = [np.random.default_rng([*key, i]) for i in range(size)]
        objects = np.zeros((size, *image.shape[2:]), bool)
        for i, rng in enumerate(rngs):
            present = [k for k in np.flatnonzero(annotated[i].numpy()) if target[i, k].any()]
            choices = present or list(np.flatnonzero(annotated[i].numpy()))
            objects[i] = target[i, choices[int(rng.integers(len(choices)))]].numpy() > 0
        spacing = [self.spacings[name] for name in batch["dataset"]]
        prompts = [first_prompt(objects[i], rngs[i], spacing_zyx=spacing[i]) for i in range(size)]
        rounds = [int(rng.integers(MAX_ROUNDS + 1)) for rng in rngs]
        previous = [None] * size
        for round_ in range(max(rounds) + 1):
            channels = np.stack([
                encode(objects.shape[1:], *prompts[i], previous[i], spacing[i]) for i in range(size)
            ])  # fmt: skip
            images = torch.cat([image, torch.from_numpy(channels)], dim=1)
            if round_ == max(rounds):
                break
            answers = self._answer(images)
            for i in range(size):
                if round_ < rounds[i]:  # this sample asks for another click
                    click = corrective_click(answers[i], objects[i], spacing[i])
                    if click is not None:
                        prompts[i] = ([*prompts[i][0], click], prompts[i][1])
                    previous[i] = answers[i]
        return {
            **batch,
            "image": images,
            "target": torch.from_numpy(objects[:, None].astype(np.float32)).to(target.dtype),
            "annotated": torch.ones((size, 1), dtype=annotated.dtype),
        }

    def stream(self, loader: Iterator[dict], first_step: int) -> Iterator[dict]:
        """The loader's batches, prompted; `first_step` is the run's global step at the start."""
        for step, batch in enumerate(loader, start=first_step):
            yield self(batch, step)


class PromptedBatches:
    """Validation batches, prompted the same way (fixed: step = the validation step)."""

    def __init__(self, batches, prompter: Prompter):
        self.batches, self.prompter, self.cases = batches, prompter, batches.cases

    def __getitem__(self, step: int) -> dict:
        return self.prompter(self.batches[step], step, validation=True)
