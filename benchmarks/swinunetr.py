"""MONAI's SwinUNETR as a peer: trained and run on exactly tumorfm's data, so only the network and
its recipe differ (used by benchmarks/accuracy.py; runs in .venv-bench, which has MONAI).

    python -m benchmarks.swinunetr train CACHE --split SPLIT -o RUN --iterations N --patch Z Y X
    python -m benchmarks.swinunetr predict RUN --cache CACHE -i IMAGES -o PREDICTIONS

Training draws the patches tumorfm's trainer draws (a cache preprocessed as `tumorfm finetune`
preprocesses, accuracy_arms.prepared; the same split, 1/3 foreground oversampling and nnU-Net's
augmentation through tumorfm's loader) and fits MONAI's SwinUNETR with MONAI's DiceCELoss (one
sigmoid channel per class, as tumorfm's head) and AdamW, lr 1e-3 with poly decay (MONAI's tutorials
use 1e-4 for 30,000 iterations; a short budget needs the larger step), fp32, gradient clipping at
12. Prediction reuses tumorfm's Predictor (crop, normalise, resample, Gaussian sliding window,
resample back into the scan's geometry) with the network swapped, so pre- and post-processing are
identical to tumorfm's.
SwinUNETR takes only sides that are multiples of 32 (five halvings): a patch it cannot take (the
sarcomas' 48x96x96) is zero-padded inside the network to the next one and its logits cropped back,
so it sees the patch every model sees; the padding's compute is its own cost.
Training saves its state every SAVE_EVERY iterations (tumorfm.checkpoint) and a run of the same
settings continues from it with the same batches, optimiser state and schedule (SwinUNETR's own
arithmetic is not bit-reproducible on a CPU): a session that ends midway loses minutes, not the
hour a training takes here.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
from monai.losses import DiceCELoss
from monai.networks.nets import SwinUNETR
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from tumorfm.checkpoint import STATE, has_state, load_state, restore_rng, save_state
from tumorfm.data.cache import read_pool, split_part
from tumorfm.data.plan import Plan
from tumorfm.files import previous
from tumorfm.infer.predict import predict_iter
from tumorfm.infer.predictor import PredictOptions, Predictor
from tumorfm.train.loader import PatchBatches, make_loader
from tumorfm.train.loop import Stepper, make_optimizer
from tumorfm.train.split import read_split

from .common import parser_for

SAVE_EVERY = 25  # iterations between saved states: 4-8 minutes on a 2-core CPU


class PaddedSwinUNETR(SwinUNETR):
    """SwinUNETR on any patch: zero-padded to sides of multiples of 32, its logits cropped back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        pads = [(-side) % 32 for side in size]  # per axis z, y, x
        if not any(pads):
            return super().forward(x)
        before = [pad // 2 for pad in pads]
        flat = [p for pad, b in zip(reversed(pads), reversed(before)) for p in (b, pad - b)]
        logits = super().forward(torch.nn.functional.pad(x, flat))
        return logits[(..., *(slice(b, b + side) for b, side in zip(before, size)))]


def network(in_channels: int, classes: int, feature_size: int) -> SwinUNETR:
    return PaddedSwinUNETR(
        in_channels=in_channels, out_channels=classes, feature_size=feature_size, spatial_dims=3
    )


def train(args) -> None:
    pool = read_pool(args.cache)
    split = read_split(args.split, args.cache, pool, 0, 0.2, args.seed)
    cases, weights = split_part(args.cache, pool, split, "train")
    batches = PatchBatches(
        cases,
        weights,
        classes=pool["classes"],
        class_regions=pool["class_regions"],
        patch_size=tuple(args.patch),
        batch_size=args.batch,
        seed=args.seed,
        augment=True,
    )
    in_channels = cases[0].image().shape[0]
    torch.manual_seed(args.seed)
    model = network(in_channels, len(pool["classes"]), args.feature_size)
    loss_fn = DiceCELoss(sigmoid=True)
    optimizer = make_optimizer(model.parameters(), "adamw", args.lr, 1e-5)
    stepper = Stepper(
        model, optimizer, lambda logits, batch: loss_fn(logits, batch["target"].float())
    )
    run = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    run = {k: v for k, v in run.items() if k not in ("out", "workers", "command")}
    start, before, losses = _continued(args.out, run, model, optimizer)
    loader = iter(make_loader(batches, start, args.iterations - start, args.workers))
    started = time.perf_counter()
    steps = range(start, args.iterations)
    for step in tqdm(steps, "train SwinUNETR", args.iterations, initial=start, unit="it"):
        stepper.set_lr(args.lr * (1 - step / args.iterations) ** 0.9)
        losses.append(stepper.step(next(loader)))
        if (step + 1) % SAVE_EVERY == 0 and step + 1 < args.iterations:
            seconds = before + time.perf_counter() - started
            meta = {"run": run, "step": step + 1, "seconds": seconds, "losses": losses[-10:]}
            save_state(args.out, model.state_dict(), optimizer.state_dict(), meta)
    seconds = before + time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(args.out / "model.safetensors"))
    info = {
        "network": "monai.networks.nets.SwinUNETR",
        "feature_size": args.feature_size,
        "in_channels": in_channels,
        "classes": pool["classes"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "patch": list(args.patch),
        "batch": args.batch,
        "iterations": args.iterations,
        "lr": args.lr,
        "loss": "DiceCELoss(sigmoid=True)",
        "seconds": round(seconds, 1),  # the training loop's, over every session
        "continued": start > 0,
        "seconds_per_iteration": round(seconds / args.iterations, 3),
        "last_losses": losses[-10:],
        "split": str(args.split),
    }
    (args.out / "settings.json").write_text(json.dumps(info, indent=1))
    _drop_state(args.out)  # done: the weights are the run
    print(json.dumps({k: info[k] for k in ("parameters", "iterations", "seconds")}))


def _drop_state(out: Path) -> None:
    for folder in (out / STATE, previous(out / STATE)):
        shutil.rmtree(folder, ignore_errors=True)


def _continued(out: Path, run: dict, model, optimizer) -> tuple[int, float, list[float]]:
    """(step, seconds so far, last losses) of a saved state of the same settings, loaded into
    `model` and `optimizer`; (0, 0.0, []) when there is none (another's is set aside)."""
    if not has_state(out):
        return 0, 0.0, []
    meta, weights, optimizer_state, rng = load_state(out)
    if meta["run"] != run:
        _drop_state(out)
        return 0, 0.0, []
    model.load_state_dict(weights)
    optimizer.load_state_dict(optimizer_state)
    restore_rng(rng)
    print(f"{out}: SwinUNETR continues at iteration {meta['step']}", flush=True)
    return meta["step"], meta["seconds"], meta["losses"]


def predict(args) -> None:
    """The held-out scans through tumorfm's Predictor with SwinUNETR as its network, preprocessed
    by the plan of the cache it trained on (cache/<dataset>/plan.json)."""
    info = json.loads((args.run / "settings.json").read_text())
    pool = read_pool(args.cache)
    if pool["classes"] != info["classes"] or len(pool["datasets"]) != 1:
        raise SystemExit(f"{args.cache}: not the one-dataset cache {args.run} trained on")
    dataset = pool["datasets"][0]["name"]
    plan = Plan.from_dict(json.loads((args.cache / dataset / "plan.json").read_text()))
    model = network(info["in_channels"], len(info["classes"]), info["feature_size"])
    model.load_state_dict(load_file(str(args.run / "model.safetensors")))
    options = PredictOptions(mirror=False, precision="fp32")
    predictor = Predictor(model, plan, info["classes"], options, patch_size=tuple(info["patch"]),
                          plan_name=dataset, source=str(args.run))  # fmt: skip
    for _ in predict_iter(args.input, predictor, args.out):
        pass


def main() -> None:
    parser = parser_for(__spec__.name, __doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    fit = commands.add_parser("train")
    fit.add_argument("cache", type=Path)
    fit.add_argument("--split", type=Path, required=True)
    fit.add_argument("-o", "--out", type=Path, required=True)
    fit.add_argument("--iterations", type=int, default=400)
    fit.add_argument("--patch", type=int, nargs=3, default=[32, 64, 64])
    fit.add_argument("--batch", type=int, default=2)
    fit.add_argument("--feature-size", type=int, default=12, help="a multiple of 12")
    fit.add_argument("--lr", type=float, default=1e-3)
    fit.add_argument("--workers", type=int, default=2)
    fit.add_argument("--seed", type=int, default=0)
    run = commands.add_parser("predict")
    run.add_argument("run", type=Path)
    run.add_argument("--cache", type=Path, required=True, help="the cache it trained on: its plan")
    run.add_argument("-i", "--input", type=Path, required=True)
    run.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args()
    train(args) if args.command == "train" else predict(args)


if __name__ == "__main__":
    main()
