"""Training with simulated interaction (issue 19): the prompted batches, a promptable network that
starts as the automatic one, and `finetune --promptable` giving a bundle a Session refines with."""

import json

import pytest
import torch
from conftest import SARCOMA, run_cli
from safetensors.torch import load_file

from tumorfm.data.io import read_volume
from tumorfm.interactive import PROMPT_CHANNELS, Session
from tumorfm.interactive.training import Prompter
from tumorfm.model import create_model
from tumorfm.model.bundle import save_bundle
from tumorfm.train.config import PretrainConfig, make_config
from tumorfm.train.trainer import pretrain
from tumorfm.train.transfer import build_model

QUICK = ["--epochs", "1", "--iterations", "2", "--patch", "16", "32", "32", "--workers", "1",
         "--precision", "fp32"]  # fmt: skip


class _Nothing(torch.nn.Module):
    """A network that finds nothing: every answer is all background."""

    def forward(self, x):
        return torch.full((x.shape[0], 1, *x.shape[2:]), -5.0)


def _batch() -> dict:
    target = torch.zeros(2, 3, 16, 24, 24)
    target[0, 1, 4:10, 6:14, 6:14] = 1  # sample 0 holds class 1
    target[1, 2, 8:12, 2:8, 10:20] = 1  # sample 1 holds class 2 (class 1 is annotated, absent)
    annotated = torch.tensor([[True, True, False], [False, True, True]])
    image = torch.randn(2, 1, 16, 24, 24)
    return {"image": image, "target": target, "annotated": annotated, "dataset": ["d", "d"]}


def test_a_prompted_batch_holds_one_present_object_and_its_prompts():
    prompter = Prompter(
        _Nothing(), torch.autocast("cpu", enabled=False), "cpu", {"d": (1, 1, 1)}, 0
    )
    batch = _batch()
    out = prompter(batch, step=3)
    assert out["image"].shape == (2, 1 + len(PROMPT_CHANNELS), 16, 24, 24)
    assert torch.equal(out["image"][:, :1], batch["image"])
    assert out["target"].shape == (2, 1, 16, 24, 24) and out["annotated"].all()
    assert torch.equal(out["target"][0, 0], batch["target"][0, 1])  # the class present
    assert torch.equal(out["target"][1, 0], batch["target"][1, 2])
    again = prompter(_batch() | {"image": batch["image"]}, step=3)
    assert torch.equal(out["image"], again["image"])  # same seed and step, same prompts
    positive = out["image"][:, 2] + out["image"][:, 4]  # points and boxes
    for i in range(2):  # whatever the first prompt, a corrective click lands on the object
        inside = out["target"][i, 0] > 0
        if positive[i].any():
            assert (positive[i] > 0)[inside].any()
    steps = [prompter(_batch() | {"image": batch["image"]}, step=s)["image"] for s in range(6)]
    assert any(not torch.equal(steps[0], s) for s in steps[1:])  # prompts vary with the step


def test_a_promptable_network_starts_as_the_automatic_one(tmp_path):
    torch.manual_seed(0)
    automatic = create_model("tsfm-tiny", 1, 1, (16, 32, 32)).eval()
    bundle = save_bundle(tmp_path / "b", automatic, ["tumour"], ["CT"], "tsfm-tiny")
    config = make_config("cpu", init_from=str(bundle), promptable=True, patch_size=(16, 32, 32))
    model, init = build_model(config, 1 + len(PROMPT_CHANNELS), ["tumour"])
    stem = model.stem.weight
    assert torch.equal(stem[:, :1], automatic.stem.weight) and not stem[:, 1:].any()
    assert "5 prompt channels at zero" in init["notes"][0]
    image = torch.randn(1, 1, 16, 32, 32)
    with torch.no_grad():
        prompted = torch.cat([image, torch.zeros(1, len(PROMPT_CHANNELS), 16, 32, 32)], 1)
        assert torch.allclose(model.eval()(prompted), automatic(image), atol=1e-5)


@pytest.fixture(scope="module")
def promptable(tmp_path_factory):
    """`tumorfm finetune --promptable` from a tiny automatic bundle on the real sarcomas."""
    torch.manual_seed(0)
    model = create_model("tsfm-tiny", 1, 2, (16, 32, 32), deep_supervision=True)
    root = tmp_path_factory.mktemp("promptable")
    bundle = save_bundle(root / "auto", model, ["liver", "sarcoma"], ["CT"], "tsfm-tiny")
    result = run_cli("finetune", SARCOMA, "--from", bundle, "-o", root / "run", "--promptable",
                     *QUICK)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return root / "run"


def test_finetune_promptable_gives_a_bundle_that_refines(promptable):
    config = json.loads((promptable / "last" / "config.json").read_text())
    assert config["extra"]["prompt_channels"] == list(PROMPT_CHANNELS)
    assert config["classes"] == ["sarcoma"] and config["model"]["in_channels"] == 6
    assert config["modalities"][1:] == list(PROMPT_CHANNELS)
    settings = json.loads((promptable / "settings.json").read_text())
    assert settings["config"]["promptable"] and settings["init"]["classes_from_pretrained"]
    scan = read_volume(SARCOMA / "imagesTr" / "STS_019_0000.nii.gz")
    session = Session.from_bundle(promptable / "last", device="cpu")
    session.set_image(scan.array, scan.geometry)
    session.add_point((23, 60, 60))
    assert session.mask.shape == scan.array.shape and session.seconds > 0


def test_a_promptable_run_resumes_exactly(promptable, tmp_path):
    """Prompts come from the network's own answers: a run stopped after its first epoch and
    resumed ends with the weights of one that ran through."""
    settings = json.loads((promptable / "settings.json").read_text())
    config = PretrainConfig(**{**settings["config"], "epochs": 2, "val_every": 2})
    cache = promptable / "cache"
    pretrain(cache, tmp_path / "through", config, progress=False)
    pretrain(cache, tmp_path / "stopped", config, stop_after_epoch=0, progress=False)
    pretrain(resume=tmp_path / "stopped", progress=False)
    through = load_file(str(tmp_path / "through" / "last" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "stopped" / "last" / "model.safetensors"))
    assert through.keys() == resumed.keys()
    assert all(torch.equal(through[k], resumed[k]) for k in through)
