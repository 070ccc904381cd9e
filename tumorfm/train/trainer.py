"""`tumorfm pretrain`: train TSFM on a preprocessed pool (paper, sections 2.1 and 3.1).

SGD with Nesterov momentum 0.99, weight decay 1e-3, initial lr 1e-3 with poly decay, batch 2,
250 iterations per epoch, 1000 epochs, patch 112x160x192: the paper's recipe is the default, and
`profile="cpu"` scales it down for a laptop. Each case is drawn with its pool probability (1/sqrt(n)
of its dataset), the partial-label loss scores only the classes its dataset annotates, and every
epoch ends with a resumable state, the last model as a bundle, and a line of logs.

    RUN/settings.json   config, versions, cache, pool digest      RUN/log.jsonl  one line an epoch
    RUN/split.json      training / validation cases per dataset   RUN/curves.csv the same, as CSV
    RUN/state/          exact resume state (tumorfm/checkpoint.py) RUN/tensorboard/  events
    RUN/last/, RUN/best/  model bundles (best: validation Dice)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from dataclasses import asdict, replace
from pathlib import Path

import torch
from tqdm import tqdm

import tumorfm
from tumorfm.checkpoint import has_state, load_state, restore_rng
from tumorfm.data.cache import read_pool, split_part
from tumorfm.data.classes import learnt_classes, paint_order
from tumorfm.errors import TumorFMError
from tumorfm.files import read_json_object, write_json
from tumorfm.interactive.prompts import PROMPT_CHANNELS
from tumorfm.interactive.training import PromptedBatches, Prompter, prompted_classes
from tumorfm.model.adapters import count_trainable, freeze
from tumorfm.model.precision import autocast as mixed_precision
from tumorfm.synth.online import online_specs
from tumorfm.train import distributed as dist
from tumorfm.train.config import PretrainConfig
from tumorfm.train.features import FeatureDistillation
from tumorfm.train.loader import PatchBatches, make_loader
from tumorfm.train.logs import RunLogs
from tumorfm.train.loop import Stepper, make_optimizer, save_epoch, train_epoch
from tumorfm.train.loss import PartialLabelLoss
from tumorfm.train.split import read_split, split_cases
from tumorfm.train.teacher import Teacher, distilled
from tumorfm.train.transfer import build_model
from tumorfm.train.validation import validate


def pool_digest(pool: dict) -> str:
    keys = ("classes", "class_regions", "datasets")
    return hashlib.sha256(json.dumps([pool[k] for k in keys], sort_keys=True).encode()).hexdigest()


def _split(cache: Path, pool: dict, config: PretrainConfig) -> dict:
    if config.split_file:
        return read_split(
            config.split_file, cache, pool, config.fold, config.val_fraction, config.seed
        )
    return split_cases(cache, pool, config.val_fraction, config.seed, config.folds, config.fold)


def _set_phase(model: torch.nn.Module, config: PretrainConfig, epoch: int, phase: str | None):
    """Freeze what this epoch does not train: the heads alone during the warm-up, then `mode`."""
    wanted = "head" if epoch < config.warmup_epochs else config.mode
    if wanted != phase:
        freeze(model, wanted)
    return wanted


def poly_lr(config: PretrainConfig, epoch: int) -> float:
    return config.lr * (1 - epoch / config.epochs) ** 0.9


def _start(
    cache: Path | None, out: Path | None, config: PretrainConfig | None, resume: Path | None
) -> tuple[Path, Path, PretrainConfig, dict, dict]:
    """Resolve the run folder, config, pool and split of a new or resumed run."""
    if resume is not None:
        run = Path(resume)
        settings_file = run / "settings.json"
        if not settings_file.is_file() or not has_state(run):
            raise TumorFMError(f"{run}: not a resumable tumorfm run (no settings.json and state/)")
        settings = read_json_object(settings_file, "the settings of the run to resume")
        try:
            config = PretrainConfig(**settings["config"])
            cache, digest = Path(cache or settings["cache"]), settings["pool_digest"]
        except (KeyError, TypeError) as error:
            raise TumorFMError(f"{settings_file}: damaged or not a tumorfm run ({error})") from None
        pool = read_pool(cache)
        if pool_digest(pool) != digest:
            raise TumorFMError(
                f"{run}: this run was trained on another pool than the cache "
                f"{cache}; resume it with the cache it started from"
            )
        return run, cache, config, pool, read_json_object(run / "split.json", "the run's split")
    if cache is None or out is None:
        raise TumorFMError("give a CACHE and --out RUN, or --resume RUN")
    run, cache = Path(out), Path(cache)
    if has_state(run):
        raise TumorFMError(
            f"{run}: already holds a run; continue it with --resume {run} or choose another --out"
        )
    if (run / "settings.json").is_file():  # a run that ended before its first epoch, or not ours
        try:
            ours = "pool_digest" in json.loads((run / "settings.json").read_text())
        except (ValueError, TypeError):
            ours = False
        if not ours:
            raise TumorFMError(f"{run}: holds another settings.json; choose another --out")
        for leftover in ("settings.json", "split.json", "log.jsonl", "curves.csv"):
            (run / leftover).unlink(missing_ok=True)
    pool, config = read_pool(cache), config or PretrainConfig()
    return run, cache, config, pool, _split(cache, pool, config)


def pretrain(
    cache: str | Path | None = None,
    out: str | Path | None = None,
    config: PretrainConfig | None = None,
    resume: str | Path | None = None,
    stop_after_epoch: int | None = None,
    progress: bool = True,
) -> dict:
    """Train on a preprocessed pool; returns the last epoch's log row."""
    run, cache, config, pool, split = _start(
        cache and Path(cache), out and Path(out), config, resume and Path(resume)
    )
    processes = dist.setup(config.device)
    classes, regions = pool["classes"], pool["class_regions"]
    train_cases, train_weights = split_part(cache, pool, split, "train")
    val_cases, val_weights = split_part(cache, pool, split, "val")
    scan_channels = train_cases[0].image().shape[0]
    in_channels, out_classes = scan_channels, classes  # the network's
    if config.promptable:  # the scan's channels, then the prompts'; one prompted object
        in_channels, out_classes = scan_channels + len(PROMPT_CHANNELS), prompted_classes(classes)
    if config.init_from is None:  # a bundle's architecture is its own: not estimated here
        _check_memory(config, in_channels, len(out_classes), processes)
    common = dict(
        classes=classes,
        class_regions=regions,
        patch_size=config.patch_size,
        batch_size=config.batch_size,
        rank=processes.rank,
        world_size=processes.world_size,
        placement=config.placement,
    )
    synthesis = online_specs(cache, pool)  # training patches only: validation stays real
    batches = PatchBatches(
        train_cases, train_weights, seed=config.seed, augment=True, synthesis=synthesis, **common
    )
    val = (
        PatchBatches(val_cases, val_weights, seed=config.seed + 1, augment=False, **common)
        if val_cases
        else None
    )
    torch.manual_seed(config.seed)
    model, init = build_model(config, in_channels, out_classes)
    model = model.to(processes.device)
    outputs = len(model.aux_heads) + 1
    start_epoch, best, optimizer_state = 0, -math.inf, None
    if processes.world_size > 1 and config.warmup_epochs:
        raise TumorFMError("a warm-up (heads first) runs in one process; drop it under torchrun")
    phase = _set_phase(model, config, start_epoch, None)
    trainable, total = count_trainable(model)
    if processes.main and progress:
        # stderr, beside the progress bars: stdout carries the result row alone
        print(f"mode {phase}: {trainable:,} of {total:,} parameters train", file=sys.stderr)
    device = processes.device
    autocast, precision = mixed_precision(config.precision, device)
    teacher, features = _teacher(config, model, out_classes, in_channels, processes, autocast)
    if resume is not None:
        meta, weights, optimizer_state, rng = load_state(run)
        if features is not None:
            features.load(weights)
        model.load_state_dict(weights)
        restore_rng(rng)
        start_epoch, best = meta["epoch"] + 1, meta["best"]
    model = dist.wrap(model, processes, config.fsdp)  # before the optimiser: FSDP swaps params
    parameters = [*model.parameters(), *(features.parameters() if features else [])]
    optimizer = make_optimizer(
        parameters, config.optimizer, config.lr, config.weight_decay, config.momentum
    )
    if optimizer_state is not None:
        dist.load_optimizer_state(model, optimizer, optimizer_state, config.fsdp)
    loss_fn = PartialLabelLoss(deep_supervision_outputs=outputs)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    if resume is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    if processes.main and resume is None:
        run.mkdir(parents=True, exist_ok=True)
        write_json(run / "split.json", split)
        write_json(
            run / "settings.json",
            {
                "config": asdict(config),
                "cache": str(cache.resolve()),
                "pool_digest": pool_digest(pool),
                "tumorfm_version": tumorfm.__version__,
                "torch_version": torch.__version__,
                "world_size": processes.world_size,
                "precision": precision,
                "in_channels": in_channels,
                "classes": out_classes,
                "init": init,
                "trainable_parameters": trainable,
                "parameters": total,
            },
        )
    dist.barrier(processes)
    logs = RunLogs(run, processes.main)
    if resume is not None:
        logs.rewind(start_epoch - 1)
    iterations = config.iterations_per_epoch
    loader = iter(
        make_loader(
            batches,
            start_epoch * iterations,
            (config.epochs - start_epoch) * iterations,
            config.workers,
        )
    )
    bar = tqdm(
        total=config.epochs * iterations,
        initial=start_epoch * iterations,
        unit="it",
        desc=f"pretrain {config.model}",
        disable=None if progress and processes.main else True,
    )
    modalities = train_cases[0].properties.get("modalities", ["unknown"] * scan_channels)
    lesions = pool.get("lesions")  # the pool's tumour classes (absent in an older cache)
    bundle_info = dict(
        classes=out_classes,
        modalities=modalities + (list(PROMPT_CHANNELS) if config.promptable else []),
        preset=config.model,
        paint_order=paint_order(out_classes, pool.get("parents", {})),
        lesions=None if lesions is None else [c for c in lesions if c in out_classes],
        plan={
            "datasets": {
                d["name"]: json.loads((cache / d["name"] / "plan.json").read_text())
                for d in pool["datasets"]
            }
        },
        extra={
            "pool_digest": pool_digest(pool),
            "pool": pool["name"],
            "parents": pool.get("parents", {}),
            "annotated": {d["name"]: learnt_classes(d) for d in pool["datasets"]},
            **(
                {"prompt_channels": list(PROMPT_CHANNELS), "prompt_classes": classes}
                if config.promptable
                else {}
            ),
        },
    )
    if config.promptable:  # prompts come from the network's own answers: in this process
        spacings = {
            name: tuple(plan["target_spacing_zyx"])
            for name, plan in bundle_info["plan"]["datasets"].items()
        }
        prompter = Prompter(model, autocast, processes.device, spacings, config.seed)
        loader = prompter.stream(loader, start_epoch * iterations)
        val = val and PromptedBatches(val, prompter)

    def loss(logits, batch: dict) -> torch.Tensor:
        return loss_fn(logits, batch["target"].to(device), batch["annotated"].to(device)).loss

    if teacher is not None:  # distillation (tumorfm.train.teacher): the teacher's outputs too
        loss = distilled(loss, teacher, config.kd_temperature, config.kd_alpha, features)
        bundle_info["extra"]["teacher"] = {
            "bundle": config.teacher,
            "parameters": teacher.parameters,
            "temperature": config.kd_temperature,
            "alpha": config.kd_alpha,
            "features": features.pairs if features is not None else None,
        }
    stepper = Stepper(
        model,
        optimizer,
        loss,
        device,
        autocast,
        scaler,
        config.grad_clip,
    )
    row: dict = {}
    for epoch in range(start_epoch, config.epochs):
        phase = _set_phase(dist.unwrap(model), config, epoch, phase)
        stepper.set_lr(poly_lr(config, epoch))
        trained = train_epoch(stepper, loader, iterations, bar)
        loss = dist.mean_over_processes(trained.pop("train_loss"), processes)
        row = {
            "epoch": epoch,
            "step": (epoch + 1) * iterations,
            "train_loss": loss,
            "lr": optimizer.param_groups[0]["lr"],
            **trained,  # seconds, iterations per second, data wait share
        }
        improved = False
        if val is not None and ((epoch + 1) % config.val_every == 0 or epoch == config.epochs - 1):
            scores = validate(model, val, config.val_batches, out_classes, processes, autocast)
            row.update(val_dice=scores["dice"], val_mean_dice=scores["mean_dice"])
            improved = scores["mean_dice"] > best
            best = max(best, scores["mean_dice"])
        weights = dist.full_state_dict(model, config.fsdp)
        optimizer_state = dist.optimizer_state(model, optimizer, config.fsdp)
        if processes.main:
            meta = {"epoch": epoch, "step": row["step"], "best": best}
            kept = weights | (features.state() if features is not None else {})
            state = (kept, optimizer_state, meta, scaler)
            bundled = _with(dist.unwrap(model), weights)
            save_epoch(run, bundled, state, row, logs, bundle_info, improved)
        dist.barrier(processes)
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            break
    bar.close()
    logs.close()
    dist.teardown(processes)
    return row


def _teacher(config: PretrainConfig, model, classes, in_channels, processes, autocast):
    """The teacher of a distillation run and, with kd_features, the adapters that match the
    student's stages to its (tumorfm.train.features); (None, None) for any other run."""
    if not config.teacher:
        return None, None
    teacher = Teacher(
        config.teacher, classes, in_channels, config.patch_size, processes.device, autocast
    )
    if not config.kd_features:
        return teacher, None
    if processes.world_size > 1:  # the adapters are not synchronised across processes
        raise TumorFMError("--features distils in one process; drop it under torchrun")
    try:
        features = FeatureDistillation(model, teacher.model)
    except ValueError as error:
        raise TumorFMError(f"--features with --teacher {config.teacher}: {error}") from None
    return teacher, features.to(processes.device)


def _check_memory(config: PretrainConfig, in_channels: int, classes: int, processes) -> None:
    """Refuse a run that cannot fit before allocating it (the paper's recipe on a laptop grows
    until the machine swaps): weights, gradients and optimiser state in float32, plus the
    activations autograd keeps, counted on the meta device (tumorfm.model.summary)."""
    from tumorfm.model import preset_config
    from tumorfm.model.summary import summarize

    network = preset_config(config.model, in_channels, classes, config.patch_size)
    summary = summarize(network)
    per_sample = summary["activation_bytes_checkpointed" if config.checkpointing else
                         "activation_bytes"]  # fmt: skip
    states = 3 if config.optimizer == "sgd" else 4  # weights, gradients, momentum (+ AdamW's 2nd)
    batch = max(1, config.batch_size // processes.world_size)
    need = summary["parameters"]["total"] * 4 * states + per_sample * batch
    have = _device_memory(processes.device)
    if have and need > 0.9 * have:
        raise TumorFMError(
            f"{config.model} at patch {'x'.join(map(str, config.patch_size))}, batch {batch} "
            f"needs about {need / 2**30:,.0f} GiB, {processes.device} has {have / 2**30:,.0f}: "
            "use --profile cpu, or a smaller --model, --patch or --batch (or --checkpointing)"
        )


def _device_memory(device: torch.device) -> int | None:
    """Bytes of memory of the device (RAM for the CPU), None where unknown."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "cpu" and hasattr(os, "sysconf"):
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            return None
    return None


def _with(model: torch.nn.Module, weights: dict) -> torch.nn.Module:
    """The model object to bundle: itself, unless FSDP sharded it (then a CPU copy)."""
    if all(not hasattr(p, "full_tensor") for p in model.parameters()):
        return model
    from tumorfm.model import TSFM

    copy = TSFM(replace(model.config))
    copy.load_state_dict(weights)
    return copy
