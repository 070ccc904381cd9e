"""Training DiffTumor's two stages on crops around real tumours (see diffusion.py).

    RUN/settings.json   stage, config, training settings, digest of the crops (and autoencoder)
    RUN/log.jsonl       one row per logging interval: step, mean losses, seconds
    RUN/state/          exact resume state (tumorfm/checkpoint.py), saved with every log row
    RUN/bundle/         the synthesis bundle at the end (stage 1: the autoencoder alone)

Stage 1, the autoencoder: L1 reconstruction + KL, and optionally a PatchGAN adversarial loss (no
perceptual loss: nothing is downloaded). Stage 2, the denoiser, on the frozen autoencoder's latents
of the crops: DDPM noise-prediction MSE at a uniformly drawn timestep, conditioned as DiffTumor
(context latent + mask). The initial weights are drawn from torch seeded with `seed` and every step
is a pure function of (seed, step) and the weights, so a killed run resumed from its state ends
with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import PatchAdversarialLoss
from monai.networks.nets import PatchDiscriminator
from monai.networks.schedulers import DDPMScheduler
from scipy import ndimage
from tqdm import tqdm

from tumorfm.checkpoint import has_state, load_state, save_state
from tumorfm.errors import TumorFMError
from tumorfm.files import write_json
from tumorfm.synth.diffusion import (
    PRESETS,
    DiffusionConfig,
    SynthModel,
    build_autoencoder,
    build_diffusion,
    condition,
    cut,
    intensity_range,
    region,
    resize,
    save_synth_bundle,
    to_unit,
)

SEPARATOR = "."  # between a network's name and its parameter index, in the merged optimiser state


def tumour_crops(image, label, tumour_value: int, crop: int, n: int, seed: int, spacing_zyx=None):
    """`n` crops of a (Z, Y, X) scan around its tumours (label == tumour_value), each on a grid of
    crop^3 voxels: (images float32 (n, D, D, D), masks bool, the same shape). A crop is the box
    the diffusion engine would use for the tumour (diffusion.region: the crop centred on it, or a
    larger box resampled to it), shifted at random; tumours are drawn evenly among the pieces."""
    image, tumour = np.asarray(image), np.asarray(label) == tumour_value
    if image.shape != tumour.shape or image.ndim != 3:
        raise TumorFMError(f"image {image.shape} and label {tumour.shape}: need one 3D shape")
    pieces, count = ndimage.label(tumour)
    if count == 0:
        raise TumorFMError(f"label has no voxel of value {tumour_value}: no tumour to crop")
    boxes = ndimage.find_objects(pieces)
    spacing = np.ones(3) if spacing_zyx is None else np.asarray(spacing_zyx, dtype=np.float64)
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for _ in range(n):
        box = boxes[int(rng.integers(count))]
        lo, hi = [b.start for b in box], [b.stop for b in box]
        start, size = region(lo, hi, crop, spacing, rng)
        grid = (crop,) * 3
        images.append(resize(cut(image, start, size).astype(np.float32), grid)[0, 0].numpy())
        mask = resize(cut(tumour, start, size, mode="constant"), grid)[0, 0].numpy() >= 0.5
        masks.append(mask)
    return np.stack(images), np.stack(masks)


def build_discriminator(config: DiffusionConfig) -> PatchDiscriminator:
    """The PatchGAN of stage 1: 3 layers (DiffTumor's), fewer on crops under 32^3."""
    disc, layers = PRESETS[config.preset]["disc"], min(3, config.crop.bit_length() - 3)
    return PatchDiscriminator(spatial_dims=3, channels=disc, in_channels=1, num_layers_d=layers)


def _unit(crops, config: DiffusionConfig) -> torch.Tensor:
    """(N, D, D, D) crops in the image's units -> (N, 1, D, D, D) in [-1, 1]."""
    crops = np.asarray(crops, dtype=np.float64)
    if crops.ndim != 4 or crops.shape[1:] != (config.crop,) * 3 or len(crops) == 0:
        raise TumorFMError(
            f"crops of shape {crops.shape}: need (N, {config.crop}, "
            f"{config.crop}, {config.crop}) for preset {config.preset!r}"
        )
    unit = [to_unit(c, *intensity_range(c, config)) for c in crops]
    return torch.from_numpy(np.stack(unit)[:, None].astype(np.float32))


def _seeded(seed: int, build, config):
    """A network whose initial weights are drawn from torch's generator seeded with `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build(config)


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def train_autoencoder(
    crops,
    config: DiffusionConfig,
    out,
    steps: int,
    seed: int,
    resume: bool = False,
    *,
    batch: int = 2,
    lr: float = 1e-4,
    kl_weight: float = 1e-6,
    adversarial_weight: float = 0.0,
    adversarial_start: int = 0,
    log_every: int = 50,
):
    """Stage 1 on (N, D, D, D) crops in the image's units (CT: HU); returns the autoencoder and
    writes RUN/bundle (autoencoder only). adversarial_weight > 0 adds a PatchGAN from step
    adversarial_start on (least-squares criterion)."""
    x = _unit(crops, config)
    autoencoder, disc = (
        _seeded(seed, build_autoencoder, config),
        _seeded(seed, build_discriminator, config),
    )
    nets = {"autoencoder": autoencoder, "discriminator": disc}
    optimizers = {name: torch.optim.Adam(n.parameters(), lr=lr) for name, n in nets.items()}
    adversarial = PatchAdversarialLoss(criterion="least_squares")
    settings = dict(
        stage="autoencoder",
        config=config.to_dict(),
        seed=seed,
        batch=batch,
        lr=lr,
        kl_weight=kl_weight,
        adversarial_weight=adversarial_weight,
        adversarial_start=adversarial_start,
        log_every=log_every,
        crops=_digest(x.numpy()),
    )

    def step(index: int, rng: np.random.Generator) -> dict:
        real = x[rng.integers(len(x), size=batch)]
        fake, mu, sigma = autoencoder(real)
        l1 = (fake - real).abs().mean()
        kl = 0.5 * (mu**2 + sigma**2 - torch.log(sigma**2) - 1).sum(dim=(1, 2, 3, 4)).mean()
        loss, losses = l1 + kl_weight * kl, {"l1": l1.item(), "kl": kl.item()}
        gan = adversarial_weight > 0 and index >= adversarial_start
        if gan:
            fooled = adversarial(disc(fake)[-1], target_is_real=True, for_discriminator=False)
            loss = loss + adversarial_weight * fooled
            losses["generator"] = fooled.item()
        optimizers["autoencoder"].zero_grad(set_to_none=True)
        loss.backward()
        optimizers["autoencoder"].step()
        if gan:
            judged = adversarial(
                disc(fake.detach())[-1], target_is_real=False, for_discriminator=True
            )
            judged = judged + adversarial(
                disc(real)[-1], target_is_real=True, for_discriminator=True
            )
            optimizers["discriminator"].zero_grad(set_to_none=True)
            (0.5 * adversarial_weight * judged).backward()
            optimizers["discriminator"].step()
            losses["discriminator"] = 0.5 * judged.item()
        return {"loss": loss.item(), **losses}

    _loop(Path(out), settings, resume, nets, optimizers, steps, seed, log_every, step)
    autoencoder.eval()
    save_synth_bundle(Path(out) / "bundle", autoencoder, None, config)
    return autoencoder


def train_diffusion(
    crops_with_masks,
    autoencoder,
    config: DiffusionConfig,
    out,
    steps: int,
    seed: int,
    resume: bool = False,
    *,
    batch: int = 2,
    lr: float = 1e-4,
    log_every: int = 50,
) -> SynthModel:
    """Stage 2 on (images, masks) as tumour_crops returns them, with the trained autoencoder
    frozen; returns the model and writes RUN/bundle. The latents are scaled to unit variance
    (config.latent_scale, measured on the crops' latents, as in latent diffusion)."""
    images, masks = crops_with_masks
    x, m = _unit(images, config), torch.from_numpy(np.asarray(masks, dtype=np.float32))[:, None]
    if m.shape != x.shape:
        raise TumorFMError(f"masks of shape {tuple(m.shape[::2])} for crops {tuple(x.shape[::2])}")
    autoencoder.eval().requires_grad_(False)
    with torch.no_grad():
        latents = torch.cat([autoencoder.encode(c)[0] for c in x.split(8)])
        scale = 1.0 / max(float(latents.std()), 1e-6)
        config = replace(config, latent_scale=scale)
        latents = latents * scale
        conds = torch.cat(
            [condition(autoencoder, c, k, scale) for c, k in zip(x.split(8), m.split(8))]
        )
    unet = _seeded(seed, build_diffusion, config)
    optimizers = {"diffusion": torch.optim.Adam(unet.parameters(), lr=lr)}
    scheduler = DDPMScheduler(config.timesteps, config.schedule)
    weights = {k: v.numpy() for k, v in autoencoder.state_dict().items()}
    settings = dict(
        stage="diffusion",
        config=config.to_dict(),
        seed=seed,
        batch=batch,
        lr=lr,
        log_every=log_every,
        crops=_digest(x.numpy(), m.numpy()),
        autoencoder=_digest(*weights.values()),
    )

    def step(index: int, rng: np.random.Generator) -> dict:
        pick = rng.integers(len(x), size=batch)
        z0, cond = latents[pick], conds[pick]
        noise = torch.randn_like(z0)
        t = torch.randint(0, config.timesteps, (batch,))
        predicted = unet(torch.cat([scheduler.add_noise(z0, noise, t), cond], dim=1), t)
        loss = F.mse_loss(predicted, noise)
        optimizers["diffusion"].zero_grad(set_to_none=True)
        loss.backward()
        optimizers["diffusion"].step()
        return {"loss": loss.item()}

    _loop(
        Path(out), settings, resume, {"diffusion": unet}, optimizers, steps, seed, log_every, step
    )
    unet.eval()
    save_synth_bundle(Path(out) / "bundle", autoencoder, unet, config)
    return SynthModel(autoencoder, unet, config)


def _loop(run: Path, settings, resume, nets, optimizers, steps, seed, log_every, step_fn):
    """The shared run: settings, resume, progress bar, log rows, state saved with every row.
    Step i draws its batch from numpy's generator and its noise from torch's, both seeded by
    (seed, i): nothing random carries over from one step to the next."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise TumorFMError(f"steps {steps!r} must be a whole number, 1 or more")
    settings = json.loads(json.dumps(settings))  # as read back: tuples become lists
    start = _start(run, settings, resume, nets, optimizers)
    for net in nets.values():
        net.train()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=settings["stage"], leave=False)
    sums, count, began = {}, 0, time.perf_counter()
    for index in bar:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(np.random.SeedSequence([seed, index]).generate_state(1)[0]))
            losses = step_fn(index, np.random.default_rng([seed, index]))
        if not all(np.isfinite(v) for v in losses.values()):
            raise TumorFMError(f"{run}: loss is not finite at step {index + 1} ({losses})")
        sums = {k: sums.get(k, 0.0) + v for k, v in losses.items()}
        count += 1
        bar.set_postfix(loss=f"{losses['loss']:.4f}")
        if (index + 1) % log_every == 0 or index + 1 == steps:
            row = {"step": index + 1, **{k: v / count for k, v in sums.items()}}
            row["seconds"] = round(time.perf_counter() - began, 3)
            with open(run / "log.jsonl", "a") as stream:
                stream.write(json.dumps(row) + "\n")
            state = {
                f"{name}.{k}": v for name, n in nets.items() for k, v in n.state_dict().items()
            }
            save_state(run, state, _merge(optimizers), {"step": index + 1})
            sums, count, began = {}, 0, time.perf_counter()
    for net in nets.values():
        net.eval()


def _start(run: Path, settings: dict, resume: bool, nets, optimizers) -> int:
    """Write a new run's settings, or check a resumed run's and load its state: the next step."""
    if not resume:
        if (run / "settings.json").exists() or has_state(run):
            raise TumorFMError(f"{run}: already holds a run; resume it or choose another folder")
        run.mkdir(parents=True, exist_ok=True)
        write_json(run / "settings.json", settings)
        return 0
    if not (run / "settings.json").is_file() or not has_state(run):
        raise TumorFMError(f"{run}: not a resumable synthesis run (no settings.json and state/)")
    saved = json.loads((run / "settings.json").read_text())
    for key in sorted(set(saved) | set(settings)):
        if saved.get(key) != settings.get(key):
            raise TumorFMError(
                f"{run}/settings.json: the run has {key}={saved.get(key)!r}, "
                f"not {settings.get(key)!r}; resume it as it was started"
            )
    meta, weights, optimizer_state, _ = load_state(run)
    for name, net in nets.items():
        net.load_state_dict(
            {k[len(name) + 1 :]: v for k, v in weights.items() if k.startswith(name + ".")}
        )
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(_split(optimizer_state, name))
    done = int(meta["step"])
    log = run / "log.jsonl"  # drop rows logged after the saved state (a kill in between)
    if log.is_file():
        rows = [r for r in log.read_text().splitlines(keepends=True) if r.strip()]
        log.write_text("".join(r for r in rows if json.loads(r)["step"] <= done))
    return done


def _merge(optimizers: dict) -> dict:
    """Several optimisers' state dicts as one (checkpoint.save_state takes one)."""
    state, groups = {}, {}
    for name, optimizer in optimizers.items():
        full = optimizer.state_dict()
        state.update({f"{name}{SEPARATOR}{k}": v for k, v in full["state"].items()})
        groups[name] = full["param_groups"]
    return {"state": state, "param_groups": groups}


def _split(merged: dict, name: str) -> dict:
    prefix = f"{name}{SEPARATOR}"
    state = {
        int(str(k)[len(prefix) :]): v
        for k, v in merged["state"].items()
        if str(k).startswith(prefix)
    }
    return {"state": state, "param_groups": merged["param_groups"][name]}
