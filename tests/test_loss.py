"""The partial-label loss: masking, hand-computed values, deep supervision, and DDP equivalence."""

import math
import socket
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from tumorfm.train.loss import (
    PartialLabelLoss,
    deep_supervision_weights,
    downsample_target,
    partial_label_loss,
)


def _random_problem(b=3, k=4, grid=(3, 4, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, k, *grid, generator=g, dtype=torch.float64)
    target = (torch.rand(b, k, *grid, generator=g) > 0.6).to(torch.uint8)
    annotated = torch.tensor(
        [[True, False, True, False], [False, False, False, False], [True, True, True, True]]
    )[:b, :k]
    return logits.requires_grad_(), target, annotated


def test_unannotated_classes_get_exactly_zero_gradient():
    logits, target, annotated = _random_problem()
    partial_label_loss(logits, target, annotated).loss.backward()
    for b in range(annotated.shape[0]):
        for c in range(annotated.shape[1]):
            grad = logits.grad[b, c]
            if annotated[b, c]:
                assert (grad != 0).all(), (b, c)
            else:
                assert (grad == 0).all(), (b, c)


def test_unannotated_logits_may_be_nan_or_inf():
    logits, target, annotated = _random_problem()
    clean = partial_label_loss(logits, target, annotated)
    dirty_logits = logits.detach().clone()
    dirty_logits[1] = float("nan")  # sample 1 annotates nothing
    dirty_logits[0, 1] = float("inf")
    dirty_logits[0, 3] = -float("inf")
    dirty_logits.requires_grad_()
    dirty = partial_label_loss(dirty_logits, target, annotated)
    dirty.loss.backward()
    assert dirty.loss.item() == clean.loss.item()
    assert torch.isfinite(dirty_logits.grad).all()
    assert (dirty_logits.grad[1] == 0).all() and (dirty_logits.grad[0, 1] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_value_computed_by_hand(dtype):
    # B=2, K=3, 2 voxels. Sample 1 does not annotate class 1 (its logits are way off on purpose)
    # and nobody annotates class 2: it must not enter the mean Dice.
    values = [[[2.0, -1.0], [0.5, 1.5], [4.0, 4.0]], [[-0.5, 3.0], [7.0, -7.0], [-4.0, 4.0]]]
    labels = [[[1, 0], [0, 1], [0, 0]], [[1, 1], [1, 0], [1, 0]]]
    annotated = torch.tensor([[True, True, False], [True, False, False]])
    logits = torch.tensor(values, dtype=dtype).view(2, 3, 1, 1, 2)
    target = torch.tensor(labels, dtype=torch.uint8).view(2, 3, 1, 1, 2)
    out = partial_label_loss(logits, target, annotated)

    def sig(v):
        return 1 / (1 + math.exp(-v))

    pairs = {0: [(0, 0), (1, 0)], 1: [(0, 1)]}  # class -> annotating (sample, class)
    entries = [
        (values[b][c][i], labels[b][c][i]) for ps in pairs.values() for b, c in ps for i in (0, 1)
    ]
    bce = sum(-(y * math.log(sig(v)) + (1 - y) * math.log(1 - sig(v))) for v, y in entries) / 6
    dices, tps, fps, fns = [], [], [], []
    for c, ps in pairs.items():
        vy = [(values[b][c][i], labels[b][c][i]) for b, _ in ps for i in (0, 1)]
        tp = sum(sig(v) * y for v, y in vy)
        fp = sum(sig(v) * (1 - y) for v, y in vy)
        fn = sum((1 - sig(v)) * y for v, y in vy)
        dices.append((2 * tp + 1e-5) / (2 * tp + fp + fn + 1e-5))
        tps, fps, fns = tps + [tp], fps + [fp], fns + [fn]
    mean_dice = sum(dices) / 2

    assert out.bce.item() == pytest.approx(bce, abs=1e-6)
    assert out.dice.item() == pytest.approx(mean_dice, abs=1e-6)
    assert out.loss.item() == pytest.approx(bce + 1 - mean_dice, abs=1e-6)
    for got, want in [(out.tp, tps), (out.fp, fps), (out.fn, fns)]:
        assert got.tolist() == pytest.approx(want + [0.0], abs=1e-6)


def test_nothing_annotated_gives_zero_loss_and_gradient():
    logits, target, _ = _random_problem()
    out = partial_label_loss(logits, target, torch.zeros(3, 4, dtype=torch.bool))
    out.loss.backward()
    assert out.loss.item() == 0 and out.bce.item() == 0 and out.dice.item() == 0
    assert torch.isfinite(torch.cat([out.tp, out.fp, out.fn])).all()
    assert (logits.grad == 0).all()


def test_perfect_prediction():
    _, target, annotated = _random_problem()
    target[2, 3] = 0  # an annotated class absent from the image: predicting nothing is right
    logits = 30.0 * (2 * target.double() - 1)
    logits[1] = -30.0  # unannotated: wrong on purpose, must not count
    out = partial_label_loss(logits, target.float(), annotated)
    assert out.bce.item() < 1e-9
    assert out.dice.item() == pytest.approx(1, abs=1e-6)
    assert out.loss.item() == pytest.approx(0, abs=1e-6)


def test_shape_mismatch_is_an_error():
    logits, target, annotated = _random_problem()
    with pytest.raises(ValueError, match="must be"):
        partial_label_loss(logits, target[:, :3], annotated)
    with pytest.raises(ValueError, match="must be"):
        partial_label_loss(logits, target, annotated[:2])


def test_deep_supervision_weights():
    assert deep_supervision_weights(1) == [1.0]
    assert deep_supervision_weights(1, zero_coarsest=True) == [1.0]
    assert deep_supervision_weights(3) == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    assert deep_supervision_weights(3, zero_coarsest=True) == pytest.approx([2 / 3, 1 / 3, 0])
    assert PartialLabelLoss(4).weights == pytest.approx([8 / 15, 4 / 15, 2 / 15, 1 / 15])


def test_target_downsampling_keeps_the_strided_voxels():
    target = (torch.rand(2, 3, 4, 6, 8) > 0.5).to(torch.uint8)
    assert downsample_target(target, (4, 6, 8)) is target
    torch.testing.assert_close(
        downsample_target(target, (2, 3, 4)), target[..., ::2, ::2, ::2].float()
    )
    torch.testing.assert_close(
        downsample_target(target, (4, 3, 2)), target[..., :, ::2, ::4].float()
    )


@pytest.mark.parametrize("zero_coarsest", [False, True])
def test_deep_supervision_loss_is_the_weighted_sum(zero_coarsest):
    _, target, annotated = _random_problem(grid=(4, 8, 8))
    g = torch.Generator().manual_seed(1)
    shapes = [(4, 8, 8), (2, 4, 4), (1, 2, 2)]
    outputs = [
        torch.randn(3, 4, *s, generator=g, dtype=torch.float64).requires_grad_() for s in shapes
    ]
    out = PartialLabelLoss(3, zero_coarsest=zero_coarsest)(outputs, target, annotated)
    out.loss.backward()

    weights = [4 / 7, 2 / 7, 1 / 7] if not zero_coarsest else [2 / 3, 1 / 3, 0]
    targets = [target, target[..., ::2, ::2, ::2], target[..., ::4, ::4, ::4]]
    parts = [partial_label_loss(o.detach(), t, annotated) for o, t in zip(outputs, targets)]
    assert out.loss.item() == pytest.approx(sum(w * p.loss.item() for w, p in zip(weights, parts)))
    assert out.bce == parts[0].bce and out.dice == parts[0].dice  # logged: full resolution
    torch.testing.assert_close(out.tp, parts[0].tp)
    assert all(o.grad is not None for o in outputs)
    assert (outputs[2].grad == 0).all() == zero_coarsest

    single = PartialLabelLoss(3)(outputs[0].detach(), target, annotated)  # eval mode: one tensor
    assert single.loss.item() == pytest.approx(parts[0].loss.item())
    with pytest.raises(ValueError, match="expected 3"):
        PartialLabelLoss(3)(outputs[:2], target, annotated)


# --- distributed: 2 gloo ranks, each with half of the global batch, must match one process ---


class _TwoHeads(nn.Module):
    """A 1x1x1 conv at full resolution and another at half resolution (deep supervision)."""

    def __init__(self, channels: int, classes: int):
        super().__init__()
        self.full, self.coarse = nn.Conv3d(channels, classes, 1), nn.Conv3d(channels, classes, 1)

    def forward(self, x):
        return [self.full(x), self.coarse(F.avg_pool3d(x, 2))]


def _ddp_problem():
    torch.manual_seed(0)
    model = _TwoHeads(2, 3).double()
    x = torch.randn(4, 2, 4, 4, 4, dtype=torch.float64)
    target = (torch.rand(4, 3, 4, 4, 4) > 0.5).to(torch.uint8)
    # rank 0: samples 0-1, rank 1: samples 2-3. Class 2 is annotated on rank 0 only, class 1 on
    # rank 1 only, sample 0 annotates nothing.
    annotated = torch.tensor([[0, 0, 0], [1, 0, 1], [1, 1, 0], [0, 1, 0]], dtype=torch.bool)
    return model, x, target, annotated


def _ddp_worker(rank, world, port, folder):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    try:
        model, x, target, annotated = _ddp_problem()
        ddp = nn.parallel.DistributedDataParallel(model)
        rows = slice(rank * 2, rank * 2 + 2)
        results = {}
        for distributed in (None, False):  # None: detected; False: each rank alone (wrong)
            model.zero_grad()
            loss = PartialLabelLoss(2, distributed=distributed)
            out = loss(ddp(x[rows]), target[rows], annotated[rows])
            out.loss.backward()
            mean_loss = out.loss.detach().clone()
            dist.all_reduce(mean_loss)
            results[distributed] = {
                "loss": mean_loss / world,
                "bce": out.bce,
                "dice": out.dice,
                "tp": out.tp,
                "grads": [p.grad.clone() for p in model.parameters()],
            }
        torch.save(results, folder / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_gradients_equal_the_single_process_gradients(tmp_path):
    world = 2
    context = mp.start_processes(
        _ddp_worker,
        args=(world, _free_port(), tmp_path),
        nprocs=world,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + 120
    try:
        while not context.join(timeout=1):  # raises if a rank failed, with its traceback
            assert time.monotonic() < deadline, "the distributed ranks timed out"
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()

    model, x, target, annotated = _ddp_problem()
    out = PartialLabelLoss(2)(model(x), target, annotated)
    out.loss.backward()
    grads = [p.grad for p in model.parameters()]
    for rank in range(world):
        ranks = torch.load(tmp_path / f"rank{rank}.pt")
        got = ranks[None]
        assert got["loss"].item() == pytest.approx(out.loss.item(), abs=1e-6)
        assert got["bce"].item() == pytest.approx(out.bce.item(), abs=1e-6)
        assert got["dice"].item() == pytest.approx(out.dice.item(), abs=1e-6)
        torch.testing.assert_close(got["tp"], out.tp, atol=1e-6, rtol=0)
        for mine, single in zip(got["grads"], grads):
            torch.testing.assert_close(mine, single, atol=1e-6, rtol=0)
        # the check has teeth: per-rank losses averaged by DDP give other gradients
        alone = ranks[False]["grads"]
        assert any((a - s).abs().max() > 1e-3 for a, s in zip(alone, grads))
