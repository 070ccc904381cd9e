"""Latent-diffusion tumours: DiffTumor (Chen et al., "Towards Generalizable Tumor Synthesis", CVPR
2024) on MONAI's generative networks.

Stage 1, an AutoencoderKL, compresses a crop scaled to [-1, 1] by 4 per axis (paper: 96^3 -> 8 x
24^3). Stage 2, a DiffusionModelUNet, denoises the latent of a crop holding a tumour; it sees, as
DiffTumor's Unet3D its 17 channels (8 + 8 + 1), concat(noisy latent, latent of the crop with the
tumour blanked to 0, tumour mask on the latent grid as -1/+1). The mask is max-pooled, not nearest
down-sampled as in DiffTumor, so that a tumour smaller than a latent cell is still seen. Trained by
DDPM noise prediction, sampled by DDIM. The tumour's mask comes from the procedural engine's shape
code; only its texture is generated, and only the tumour and a soft rim of organ around it are
pasted back, so the scan farther than reach_mm() from it is bit-identical.

Few-step schedule. DiffTumor makes early tumours (tiny/small, < 2 cm) with a model trained on a
4-step DDPM chain and sampled in those 4 steps, larger ones with a 200-step model sampled in 50
DDIM steps (cosine schedule). Here a bundle names its chain (`timesteps`, cosine by default) and
two step counts: tiny/small tumours get `early_steps` DDIM steps, larger ones `steps`. Given a
second bundle, DiffusionEngine(model, early=EARLY) makes the tiny/small ones with it (the paper's
early model: train one with timesteps=4 on small tumours); otherwise the main model is sampled in
the few steps, spaced from the last timestep (pure noise) down, the last step giving the x0
prediction.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import AutoencoderKL, DiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from scipy import ndimage

from tumorfm.errors import TumorFMError
from tumorfm.files import atomic_folder, read_json_object
from tumorfm.synth import procedural as proc
from tumorfm.synth.procedural import EDGE_REACH_MM, SIZES, Synthesised, Tumour

KIND, VERSION = "tumorfm-synthesis", 1
WEIGHTS, CONFIG = "model.safetensors", "config.json"
EARLY = ("tiny", "small")  # DiffTumor's early tumours (< 2 cm): made with the few-step schedule
CT_WINDOW = (-200.0, 250.0)  # HU mapped to [-1, 1]
MR_PERCENTILES = (0.5, 99.5)  # MR has no absolute scale: each crop's own percentiles

# crop: voxels a side; latent: channels; ae: autoencoder channels per level (4x down-sampling
# between 3 levels); unet: denoiser channels per level, attend: attention per level (heads of
# unet[0] channels), blocks: residual blocks a level; disc: PatchGAN discriminator channels
# fmt: off
PRESETS: dict[str, dict] = {
    # CPU-trainable in minutes: 32^3 -> 4 x 8^3
    "tiny": dict(crop=32, latent=4, ae=(16, 32, 32), unet=(32, 64), attend=(0, 0), blocks=1,
                 disc=32),
    "small": dict(crop=64, latent=8, ae=(32, 64, 64), unet=(32, 64, 128), attend=(0, 0, 1),
                  blocks=1, disc=32),
    # DiffTumor: 96^3 -> 8 x 24^3 (their VQGAN: 16 hidden channels doubled per down-sampling);
    # their Unet3D: width 24 x (1, 2, 4, 8), 2 blocks a level; discriminator of 64 channels
    "paper": dict(crop=96, latent=8, ae=(16, 32, 64), unet=(24, 48, 96, 192), attend=(0, 0, 1, 1),
                  blocks=2, disc=64),
}
# fmt: on


@dataclass
class DiffusionConfig:
    preset: str = "tiny"
    modality: str = "CT"
    crop: int | None = None  # voxels per side of the model's cube; None: the preset's
    latent_channels: int | None = None  # None: the preset's
    window: tuple[float, float] | None = None  # CT: HU to [-1, 1]; MR: percentiles of each crop
    timesteps: int = 200  # the DDPM chain the denoiser is trained on
    schedule: str = "cosine"  # MONAI noise schedule
    steps: int = 50  # DDIM steps for medium and large tumours
    early_steps: int = 4  # DDIM steps for tiny and small ones
    eta: float = 0.0  # DDIM noise (0: deterministic given the first latent)
    latent_scale: float = 1.0  # latents are multiplied by it (train_diffusion: 1 / their std)

    def __post_init__(self):
        def bad(name, why):
            raise TumorFMError(f"diffusion config: {name} {getattr(self, name)!r} {why}")

        if self.preset not in PRESETS:
            bad("preset", f"is unknown: use one of {', '.join(PRESETS)}")
        self.modality = str(self.modality).upper()
        if self.modality not in ("CT", "MR"):
            bad("modality", "must be CT or MR")
        p = PRESETS[self.preset]
        self.crop = p["crop"] if self.crop is None else self.crop
        self.latent_channels = self.latent_channels or p["latent"]
        if self.window is None:
            self.window = CT_WINDOW if self.modality == "CT" else MR_PERCENTILES
        try:
            self.window = tuple(float(w) for w in self.window)
        except (TypeError, ValueError):
            bad("window", "must be two numbers, low < high")
        if len(self.window) != 2 or not self.window[0] < self.window[1]:
            bad("window", "must be two numbers, low < high")
        step = 2 ** (len(p["ae"]) + len(p["unet"]) - 2)
        if not isinstance(self.crop, int) or self.crop < step or self.crop % step:
            bad("crop", f"must be a positive multiple of {step} for preset {self.preset!r}")
        for name in ("latent_channels", "timesteps", "steps", "early_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                bad(name, "must be a whole number, 1 or more")
        if not self.latent_scale > 0 or not 0 <= self.eta <= 1:
            bad("latent_scale" if not self.latent_scale > 0 else "eta", "is out of range")

    def to_dict(self) -> dict:
        return {**asdict(self), "window": list(self.window)}

    @classmethod
    def from_dict(cls, data: dict, source: str = "diffusion config") -> DiffusionConfig:
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise TumorFMError(f"{source}: unknown key {unknown[0]!r} (known: {', '.join(known)})")
        try:
            return cls(**data)
        except TumorFMError as error:
            raise TumorFMError(str(error).replace("diffusion config", source, 1)) from None


# fmt: off
def build_autoencoder(config: DiffusionConfig) -> AutoencoderKL:
    p = PRESETS[config.preset]
    return AutoencoderKL(
        spatial_dims=3, in_channels=1, out_channels=1, channels=p["ae"], num_res_blocks=1,
        attention_levels=(False,) * len(p["ae"]), latent_channels=config.latent_channels,
        norm_num_groups=8, with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False)


def build_diffusion(config: DiffusionConfig) -> DiffusionModelUNet:
    """The denoiser: in, noisy latent + context latent + mask; out, the predicted noise."""
    p, latent = PRESETS[config.preset], config.latent_channels
    return DiffusionModelUNet(
        spatial_dims=3, in_channels=2 * latent + 1, out_channels=latent, channels=p["unet"],
        attention_levels=tuple(bool(a) for a in p["attend"]), num_res_blocks=p["blocks"],
        norm_num_groups=8, num_head_channels=p["unet"][0])
# fmt: on


def parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@dataclass
class SynthModel:
    autoencoder: AutoencoderKL
    diffusion: DiffusionModelUNet | None  # None in a stage-1 (autoencoder only) bundle
    config: DiffusionConfig


def intensity_range(crop: np.ndarray, config: DiffusionConfig) -> tuple[float, float]:
    """The values mapped to -1 and +1: CT's window, or the MR crop's percentiles."""
    if config.modality == "CT":
        return config.window
    low, high = (float(v) for v in np.percentile(crop, config.window))
    return low, max(high, low + 1e-3)


def to_unit(values, low: float, high: float):
    return np.clip((values - low) / (high - low) * 2.0 - 1.0, -1.0, 1.0)


def condition(autoencoder: AutoencoderKL, x: torch.Tensor, mask: torch.Tensor, scale: float):
    """DiffTumor's conditioning: the latent of the crop with the tumour region set to 0, and the
    mask as -1/+1 on the latent grid (a cell is tumour if any of its voxels is)."""
    context = autoencoder.encode(x * (1.0 - mask))[0] * scale
    small = F.max_pool3d(mask, x.shape[-1] // context.shape[-1])
    return torch.cat([context, small * 2.0 - 1.0], dim=1)


@torch.no_grad()
def inpaint(model: SynthModel, x, mask, steps: int, generator: torch.Generator) -> torch.Tensor:
    """Crops x (N, 1, D, D, D) in [-1, 1] with their tumours generated where mask is 1: DDIM in
    `steps` steps (at most the chain's length), decoded. Only the tumour is meant to be kept."""
    config = model.config
    cond = condition(model.autoencoder, x, mask, config.latent_scale)
    z = torch.randn((x.shape[0], config.latent_channels, *cond.shape[2:]), generator=generator)
    scheduler = DDIMScheduler(config.timesteps, config.schedule, clip_sample=False)
    steps = min(steps, config.timesteps)
    scheduler.set_timesteps(steps)
    timesteps = torch.arange(config.timesteps - 1, -1, -(config.timesteps // steps))[:steps]
    for t in timesteps:
        noise = model.diffusion(torch.cat([z, cond], dim=1), t.repeat(x.shape[0]))
        z, x0 = scheduler.step(noise, int(t), z, config.eta, generator)
    return model.autoencoder.decode(x0 / config.latent_scale).clamp(-1.0, 1.0)


def region(lo, hi, crop: int, spacing, rng=None) -> tuple[np.ndarray, np.ndarray]:
    """(start, size) of the box a tumour of bounding box [lo, hi) is generated in: the model's
    crop centred on it, or, if it and its rim do not fit, a box a quarter larger than them that is
    resampled to the crop. `rng` shifts the box (training crops), keeping the tumour inside."""
    lo, hi = np.asarray(lo), np.asarray(hi)
    need = hi - lo + 2 * np.ceil(EDGE_REACH_MM / np.asarray(spacing)).astype(int)
    size = np.maximum(crop, np.ceil(1.25 * need)).astype(int)
    start = (lo + hi) // 2 - size // 2
    if rng is not None:
        slack = (size - need) // 4
        start = start + rng.integers(-slack, slack + 1)
    return start, size


def cut(volume: np.ndarray, start, size, mode: str = "edge") -> np.ndarray:
    """volume[start:start + size], padded where the box leaves it."""
    inner = tuple(slice(max(s, 0), min(s + n, d)) for s, n, d in zip(start, size, volume.shape))
    pads = [(a.start - s, s + n - a.stop) for a, s, n in zip(inner, start, size)]
    return np.pad(volume[inner], pads, mode=mode)


def resize(array, size) -> torch.Tensor:
    """A (Z, Y, X) array (or a (1, 1, Z, Y, X) tensor) on a `size` grid, trilinear."""
    t = torch.as_tensor(
        np.asarray(array, dtype=np.float32) if isinstance(array, np.ndarray) else array
    )
    t = t.reshape(1, 1, *t.shape[-3:])
    size = tuple(int(s) for s in size)
    return t if tuple(t.shape[-3:]) == size else F.interpolate(t, size=size, mode="trilinear")


class DiffusionEngine:
    """procedural.synthesise's interface, each tumour's texture made by the diffusion model:
    DiffusionEngine(load_synth_bundle(BUNDLE)).synthesise(image, organ, spacing, seed=0)."""

    def __init__(
        self, model: SynthModel, early: SynthModel | None = None, steps=None, early_steps=None
    ):
        self.model, self.early = model, early or model
        for name, m in (("model", model), ("early", self.early)):
            if m.diffusion is None:
                raise TumorFMError(f"{name}: an autoencoder-only (stage 1) synthesis bundle")
        if self.early.config.modality != model.config.modality:
            kinds = f"{self.early.config.modality}, not {model.config.modality}"
            raise TumorFMError(f"early: a synthesis model for {kinds}")
        self.steps = steps or model.config.steps
        self.early_steps = early_steps or self.early.config.early_steps

    def synthesise(
        self,
        image,
        organ,
        spacing_zyx,
        *,
        seed: int,
        modality: str = "CT",
        count: int = 1,
        size: str = "mixed",
        mass_effect: bool = False,
    ):
        """As procedural.synthesise: `count` tumours of `size` in the organ (nonzero voxels of
        `organ`) of a (Z, Y, X) scan; the output depends on the inputs and the seed only."""
        checked = proc._check(image, organ, spacing_zyx, seed, modality, count, size)
        image, organ, spacing, modality = checked
        if modality != self.model.config.modality:
            raise TumorFMError(f"modality {modality}: a {self.model.config.modality} model")
        rng = np.random.default_rng(seed)
        median = float(np.median(image[organ]))
        room, offset, block = proc._room(organ, spacing, exact=False)
        names = list(SIZES) if size == "mixed" else [size]
        if room.max() <= min(SIZES[n][0] for n in names):
            room, offset, block = proc._room(organ, spacing, exact=True)
        out, tumour, records = image.copy(), np.zeros(image.shape, dtype=bool), []
        for _ in range(count):  # placed and shaped by procedural's code
            name, radii = proc._draw_radii(rng, size, room, organ, spacing)
            inside = np.flatnonzero(room > max(radii))
            pick = np.unravel_index(inside[rng.integers(inside.size)], room.shape)
            centre = tuple(int(o + p * k + rng.integers(k)) for o, p, k in zip(offset, pick, block))
            deform, edge = rng.uniform(*proc.DEFORM), rng.uniform(*proc.EDGE_MM)
            push = rng.uniform(*proc.MASS) * mass_effect  # drawn either way: same tumours
            lo, shape = proc._shape(rng, organ, centre, radii, spacing, deform)
            generator = torch.Generator().manual_seed(int(rng.integers(2**63)))
            early = name in EARLY  # DiffTumor's few-step schedule (and model) for these
            model, steps = (self.early, self.early_steps) if early else (self.model, self.steps)
            tumour_ = dict(lo=lo, shape=shape, centre=centre, radii=radii, edge=edge, push=push)
            voxels, mean = _paint(model, steps, generator, out, organ, tumour, spacing, tumour_)
            records.append(Tumour(centre, tuple(map(float, radii)), name, mean - median, voxels))
        return Synthesised(out, tumour, records)


def _paint(model, steps, generator, out, organ, tumour, sp, new: dict) -> tuple[int, float]:
    """Generate one tumour (`new`: its mask box and draws) in its box and write it, with a soft
    rim in the organ, into `out` and `tumour`; returns (voxels, mean intensity)."""
    config, grid = model.config, (model.config.crop,) * 3
    t_lo, t_hi = proc._bbox(new["shape"])
    start, size = region(np.add(new["lo"], t_lo), np.add(new["lo"], t_hi), config.crop, sp)
    mask = np.zeros(size, dtype=bool)
    at = tuple(slice(s + a - o, s + b - o) for s, a, b, o in zip(new["lo"], t_lo, t_hi, start))
    mask[at] = new["shape"][tuple(slice(a, b) for a, b in zip(t_lo, t_hi))]
    values = cut(out, start, size).astype(np.float64)
    low, high = intensity_range(values, config)
    x = resize(to_unit(values, low, high), grid)
    made = inpaint(model, x, (resize(mask, grid) >= 0.5).float(), steps, generator)
    made = (resize(made, size)[0, 0].double().numpy() + 1.0) / 2.0 * (high - low) + low

    inner = tuple(slice(max(s, 0), min(s + n, d)) for s, n, d in zip(start, size, out.shape))
    sub = tuple(slice(a.start - s, a.stop - s) for a, s in zip(inner, start))
    local, made, mask, organ = out[inner].astype(np.float64), made[sub], mask[sub], organ[inner]
    dist = ndimage.distance_transform_edt(~mask, sampling=sp)
    axes = [(np.arange(a.start, a.stop) - c) * s for a, c, s in zip(inner, new["centre"], sp)]
    push_mm = new["push"] * float(np.mean(new["radii"]))  # 0 without mass effect
    local = proc.blend(local, made, mask, organ, tumour[inner], dist, axes, sp, new["radii"],
                       push_mm, new["edge"])  # fmt: skip
    local = proc._cast(local, out.dtype)
    out[inner] = local
    tumour[inner] |= mask
    return int(mask.sum()), float(out[inner][mask].astype(np.float64).mean())


def save_synth_bundle(folder, autoencoder, diffusion, config: DiffusionConfig) -> Path:
    """BUNDLE/model.safetensors (autoencoder.* and diffusion.* tensors; diffusion may be None
    after stage 1) and BUNDLE/config.json, written atomically."""
    folder = Path(folder)
    nets = {"autoencoder": autoencoder, "diffusion": diffusion}
    tensors = {
        f"{name}.{k}": v.detach().cpu().contiguous()
        for name, net in nets.items()
        if net is not None
        for k, v in net.state_dict().items()
    }
    meta = {
        "kind": KIND,
        "format_version": VERSION,
        "modality": config.modality,
        "preset": config.preset,
        "crop": config.crop,
        "stages": [name for name, net in nets.items() if net is not None],
        "config": config.to_dict(),
    }
    with atomic_folder(folder) as tmp:
        save_file(tensors, str(tmp / WEIGHTS), metadata={"kind": KIND})
        (tmp / CONFIG).write_text(json.dumps(meta, indent=2))
    return folder


def load_synth_bundle(folder: str | os.PathLike, modality: str | None = None) -> SynthModel:
    """A synthesis bundle's networks (eval mode, CPU); `modality` if given must be its own."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TumorFMError(f"{folder}: not a synthesis bundle folder ({WEIGHTS} and {CONFIG})")
    path = folder / CONFIG
    meta = read_json_object(path, f"a synthesis bundle needs {CONFIG} and {WEIGHTS}")
    if meta.get("kind") != KIND:
        seg = meta.get("format") == "tumorfm-bundle"
        what = "a segmentation bundle" if seg else f"kind {meta.get('kind')!r}"
        raise TumorFMError(f"{path}: {what}, not a tumour synthesis bundle (kind {KIND!r})")
    if meta.get("format_version") != VERSION:
        found = meta.get("format_version")
        raise TumorFMError(f"{path}: format version {found!r}; this tumorfm reads {VERSION}")
    config = DiffusionConfig.from_dict(meta.get("config") or {}, source=str(path))
    if modality is not None and str(modality).upper() != config.modality:
        raise TumorFMError(f"{path}: a synthesis model for {config.modality}, not {modality}")
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise TumorFMError(f"{weights}: missing; a synthesis bundle needs {CONFIG} and {WEIGHTS}")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as error:
        raise TumorFMError(f"{weights}: truncated or not a safetensors file ({error})") from None
    nets = {"autoencoder": build_autoencoder(config)}
    if "diffusion" in meta.get("stages", []):
        nets["diffusion"] = build_diffusion(config)
    for name, net in nets.items():
        want = net.state_dict()
        got = {k[len(name) + 1 :]: v for k, v in tensors.items() if k.startswith(name + ".")}
        for key in sorted(set(want) | set(got)):
            if key not in got or key not in want or got[key].shape != want[key].shape:
                why = "missing, unexpected or of another shape than its config's"
                raise TumorFMError(f"{weights}: tensor '{name}.{key}' {why}")
        net.load_state_dict(got)
        net.eval()
    return SynthModel(nets["autoencoder"], nets.get("diffusion"), config)
