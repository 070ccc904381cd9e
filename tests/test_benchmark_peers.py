"""How the benchmarks run their peers: the plan and patch each arm takes, SwinUNETR's
padding, nnU-Net's prediction command, the peers' cache."""

from __future__ import annotations

import shutil
from argparse import Namespace
from pathlib import Path

import pytest


def test_accuracy_keeps_the_glioblastoma_slabs_at_full_resolution_with_a_patch_they_hold():
    from benchmarks.accuracy import plan_of

    lowres = Namespace(config="lowres", patch=[48, 96, 96])
    assert plan_of(lowres, "sarcoma_ct") == ("lowres", [48, 96, 96])
    config, patch = plan_of(lowres, "brain_mr")  # 24 slices: a 48-slice patch is refused
    assert config == "fullres" and patch[0] <= 2 * 20 and all(p % 32 == 0 for p in patch)
    fullres = Namespace(config="fullres", patch=[32, 64, 64])
    assert plan_of(fullres, "brain_mr") == ("fullres", [32, 64, 64])


def test_swinunetr_takes_every_plans_patch_padded_inside_and_cropped_back():
    """SwinUNETR needs sides of multiples of 32; the sarcomas' lowres patch is 48 deep."""
    import torch
    from monai.networks.nets import SwinUNETR

    from benchmarks.swinunetr import network

    model = network(1, 2, 12).eval()
    x = torch.randn(1, 1, 33, 32, 40)  # pads 31 (15 before, 16 after), 0, 24 (12, 12)
    with torch.no_grad():
        logits = model(x)
        padded = SwinUNETR.forward(model, torch.nn.functional.pad(x, [12, 12, 0, 0, 15, 16]))
    assert logits.shape == (1, 2, 33, 32, 40)
    assert torch.equal(logits, padded[:, :, 15:48, :, 12:52])
    with pytest.raises(ValueError, match="divisible"):  # what it did before: refused the patch
        SwinUNETR.forward(model, x)


def test_every_benchmark_predicts_with_nnunet_the_same_way():
    """One command line for the bench trainer's predictions: fold, device and test-time mirroring
    as asked, its final checkpoint, no worker pools."""
    from benchmarks.nnunet_peer import PLANS, TRAINER, predict_command

    plain = predict_command(Path("in"), Path("out"), 101, 2, "cpu")
    assert plain[plain.index("-f") + 1] == "2" and plain[plain.index("-d") + 1] == "101"
    assert "--disable_tta" in plain and plain[plain.index("-chk") + 1] == "checkpoint_final.pth"
    assert {PLANS, TRAINER} <= set(plain) and plain[plain.index("-npp") + 1] == "0"
    mirrored = predict_command(Path("in"), Path("out"), 101, 0, "cuda", mirror=True)
    assert "--disable_tta" not in mirrored and mirrored[mirrored.index("-device") + 1] == "cuda"


def test_the_peers_cache_is_made_once_per_pool_and_again_for_other_data(tmp_path, monkeypatch):
    from benchmarks import accuracy_arms

    made = []

    def fake_run(command, env, log, timeout, what):
        cache = Path(command[command.index("-o") + 1])
        (cache / "sarcoma").mkdir(parents=True, exist_ok=True)
        (cache / "pool.json").write_text("{}")
        made.append(command[2])

    monkeypatch.setattr(accuracy_arms, "run", fake_run)
    data, other = Path(__file__).parent / "data", tmp_path / "other"
    other.mkdir()
    shutil.copytree(data / "Dataset101_SarcomaCT", other / "Dataset101_SarcomaCT")
    args = Namespace(data=data, config="lowres", patch=[48, 96, 96], tumorfm="tumorfm",
                     timeout=60)  # fmt: skip
    cache = accuracy_arms.prepared(args, tmp_path / "work", "sarcoma_ct")
    assert accuracy_arms.prepared(args, tmp_path / "work", "sarcoma_ct") == cache
    assert len(made) == 1  # the same pool: its cache is kept
    args.data = other  # another dataset folder is another pool: preprocessed again
    assert accuracy_arms.prepared(args, tmp_path / "work", "sarcoma_ct") == cache
    assert len(made) == 2 and str(other) in (cache.with_suffix(".yaml")).read_text()
