"""Knowledge distillation (issue 20): the teacher's term, the teacher's channels, and a real run
through the trainer on the real sarcoma CTs."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import SARCOMA, assert_one_line_error, run_cli

from tumorfm.data.io import read_volume
from tumorfm.errors import TumorFMError
from tumorfm.model import TSFM, preset_config
from tumorfm.model.bundle import load_bundle
from tumorfm.train.config import PretrainConfig
from tumorfm.train.distill import distill
from tumorfm.train.features import ADAPTERS, FeatureDistillation, stage_pairs, stage_strides
from tumorfm.train.teacher import Teacher, check_teacher, distilled, kd_loss, teacher_dice_loss
from tumorfm.train.trainer import pretrain

SHIPPED = "tsfm-real-lowres"  # its classes: soft_tissue_sarcoma, brain_tumour; CT in


def test_kd_loss_is_least_where_the_student_says_what_the_teacher_says():
    torch.manual_seed(0)
    teacher = torch.randn(2, 3, 4, 4, 4) * 3
    for temperature in (1.0, 4.0):
        student = teacher.clone().requires_grad_(True)
        kd_loss(student, teacher, temperature).backward()
        assert student.grad.abs().max() < 1e-7  # a minimum: sigmoid(s/T) = sigmoid(t/T)
        other = torch.zeros_like(teacher).requires_grad_(True)
        assert kd_loss(other, teacher, temperature) > kd_loss(teacher, teacher, temperature)


def test_temperature_squared_keeps_the_gradient_in_scale():
    """Hinton's T^2: for small logits the gradient of the softened term tends to (s - t) / 4
    over the voxel count, whatever T; without T^2 it would shrink as 1 / T^2."""
    torch.manual_seed(1)
    teacher = torch.randn(1, 1, 8, 8, 8) * 0.01
    grads = []
    for temperature in (2.0, 8.0):
        student = torch.zeros_like(teacher).requires_grad_(True)
        kd_loss(student, teacher, temperature).backward()
        grads.append(float(student.grad.norm()))
    assert grads[1] == pytest.approx(grads[0], rel=0.05)


def test_dice_with_the_teachers_mask():
    """Near 0 where the student says confidently what the teacher says, near 1 where it says the
    opposite; its gradient pulls a student that misses the teacher's tumour towards it, and
    a student that adds a false one away from it."""
    teacher = torch.full((1, 1, 16, 16, 16), -6.0)
    teacher[..., 7:9, 7:9, 7:9] = 6.0
    tumour = (slice(None), slice(None), slice(7, 9), slice(7, 9), slice(7, 9))
    assert teacher_dice_loss(2 * teacher, teacher) < 0.01
    assert teacher_dice_loss(-2 * teacher, teacher) > 0.99
    student = torch.zeros_like(teacher).requires_grad_(True)
    teacher_dice_loss(student, teacher).backward()
    assert (student.grad[tumour] < 0).all()  # descent raises the tumour's logits
    outside = student.grad.clone()
    outside[tumour] = 0
    assert (outside >= 0).all() and outside.sum() > 0  # and lowers the others


def test_alpha_mixes_the_teacher_and_the_labels():
    torch.manual_seed(2)
    image, student = torch.randn(1, 1, 4, 4, 4), torch.randn(1, 2, 4, 4, 4)
    teacher_logits = torch.randn(1, 2, 4, 4, 4)

    class Fixed:
        def __call__(self, image):
            return teacher_logits

    def labels(outputs, batch):
        return torch.tensor(5.0)

    batch = {"image": image}
    taught = kd_loss(student, teacher_logits, 2.0) + teacher_dice_loss(student, teacher_logits)
    assert distilled(labels, Fixed(), 2.0, 1.0)(student, batch) == pytest.approx(float(taught))
    assert distilled(labels, Fixed(), 2.0, 0.0)(student, batch) == pytest.approx(5.0)
    half = distilled(labels, Fixed(), 2.0, 0.5)([student, student[:, :, ::2]], batch)
    assert half == pytest.approx(0.5 * float(taught) + 2.5)  # deep supervision: full res only


def test_teacher_answers_for_the_students_classes_in_their_order():
    bundle = load_bundle(SHIPPED, patch_size=(16, 32, 32))
    teacher = Teacher(
        SHIPPED, ["brain_tumour"], 1, (16, 32, 32), torch.device("cpu"), torch.no_grad()
    )
    image = torch.randn(1, 1, 16, 32, 32)
    with torch.no_grad():
        full = bundle.model.eval()(image)
    assert teacher(image).shape == (1, 1, 16, 32, 32)
    torch.testing.assert_close(teacher(image), full[:, 1:2])
    assert not any(p.requires_grad for p in teacher.model.parameters())


def test_a_teacher_of_other_inputs_or_classes_is_refused():
    with pytest.raises(TumorFMError, match="takes 3 input channels .* the student's scans have 1"):
        check_teacher(Path("t"), ["tumour"], ["CT", "positive", "negative"], ["tumour"], 1)
    with pytest.raises(TumorFMError, match="does not segment liver .* with --map"):
        check_teacher(Path("t"), ["tumour"], ["CT"], ["tumour", "liver"], 1)


def test_distill_trains_a_student_bundle_that_names_its_teacher(tmp_path):
    """Also with a scan without labels: the teacher labels it and it joins the pool."""
    out, unlabelled = tmp_path / "run", tmp_path / "unlabelled"
    unlabelled.mkdir()
    shutil.copy(SARCOMA / "imagesTr" / "STS_025_0000.nii.gz", unlabelled / "extra.nii.gz")
    result = run_cli(
        "distill", SARCOMA, "--teacher", SHIPPED, "--student", "tsfm-tiny", "-o", out,
        "--map", "sarcoma=soft_tissue_sarcoma", "--epochs", "1", "--iterations", "2",
        "--alpha", "0.7", "--temperature", "3", "--unlabelled", unlabelled, "--plan", "sarcoma_ct",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    labelled = out / "teacher-labelled"
    teacher_label = read_volume(labelled / "labelsTr" / "extra.nii.gz")
    scan = read_volume(unlabelled / "extra.nii.gz")
    assert teacher_label.geometry.close_to(scan.geometry)
    assert set(np.unique(teacher_label.array)) == {0, 1}  # the sarcoma, on the dataset's value
    truth = read_volume(SARCOMA / "labelsTr" / "STS_025.nii.gz").array > 0
    found = teacher_label.array > 0
    assert 2 * (found & truth).sum() / (found.sum() + truth.sum()) > 0.3  # the teacher's answer
    pool = yaml.safe_load((out / "pool.yaml").read_text())
    assert [d["name"] for d in pool["datasets"]] == ["sts_ct", "teacher-labelled"]
    config = json.loads((out / "last" / "config.json").read_text())
    assert config["preset"] == "tsfm-tiny" and config["classes"] == ["soft_tissue_sarcoma"]
    teacher = config["extra"]["teacher"]
    assert teacher["temperature"] == 3.0 and teacher["alpha"] == 0.7
    assert Path(teacher["bundle"]).name == SHIPPED and teacher["parameters"] > 5_000_000
    settings = json.loads((out / "settings.json").read_text())
    assert settings["config"]["teacher"] == teacher["bundle"]
    assert settings["parameters"] < teacher["parameters"] / 5  # the student is the small one
    row = json.loads(result.stdout.splitlines()[0])
    assert row["step"] == 2 and row["train_loss"] > 0


def test_stages_pair_by_resolution_whatever_the_widths():
    patch = (16, 32, 32)
    student = preset_config("tsfm-tiny", 1, 1, patch)
    teacher = load_bundle(SHIPPED, patch_size=patch).model.config
    ours, theirs = stage_strides(student), stage_strides(teacher)
    pairs = stage_pairs(student, teacher)
    assert "bottleneck" in pairs and len(pairs) >= 3
    for s, t in pairs.items():
        assert ours[s][0] == theirs[t][0]  # the same grid
    assert any(ours[s][1] != theirs[t][1] for s, t in pairs.items())  # adapters bridge widths
    finest = max(n for n in ours if n.startswith("decoder"))
    assert ours[finest][0] == (1, 1, 1)  # the last decoder stage is at full resolution


def test_a_strided_stem_student_pairs_each_stage_with_the_teachers_one_level_finer():
    """tsfm-fast's stages run at half resolution: its last decoder stage (stride 2) learns the
    teacher's stride-2 stage, and no stage of it claims the teacher's full resolution."""
    patch = (16, 32, 32)
    student = preset_config("tsfm-fast", 1, 1, patch)
    teacher = load_bundle(SHIPPED, patch_size=patch).model.config
    ours, theirs = stage_strides(student), stage_strides(teacher)
    pairs = stage_pairs(student, teacher)
    finest = max(n for n in ours if n.startswith("decoder"))
    assert ours[finest][0] == (2, 2, 2) and theirs[pairs[finest]][0] == (2, 2, 2)
    assert len(pairs) >= 2 and all(theirs[t][0] != (1, 1, 1) for t in pairs.values())


def test_feature_term_is_zero_for_a_copy_through_identity_adapters_and_trains_both():
    torch.manual_seed(3)
    config = preset_config("tsfm-tiny", 1, 1, (16, 32, 32))
    teacher, student = TSFM(config).eval(), TSFM(config).eval()
    student.load_state_dict(teacher.state_dict())
    features = FeatureDistillation(student, teacher)
    image = torch.randn(1, 1, 16, 32, 32)
    with torch.no_grad():
        for adapter in features.adapters.values():
            adapter.weight.copy_(torch.eye(adapter.weight.shape[0])[..., None, None, None])
            adapter.bias.zero_()
        student(image), teacher(image)
        assert float(features.loss()) < 1e-10
    for p in student.parameters():  # a different student: the term grows, its gradient flows
        p.data.add_(0.05 * torch.randn_like(p))
    student(image)
    with torch.no_grad():
        teacher(image)
    loss = features.loss()
    loss.backward()
    assert float(loss.detach()) > 1e-4
    assert all(a.weight.grad.abs().sum() > 0 for a in features.adapters.values())
    assert student.stem.weight.grad.abs().sum() > 0
    assert features.student.outputs == {}  # taken: nothing outlives the step


def test_feature_distillation_resumes_exactly_and_keeps_its_adapters_out_of_the_bundle(tmp_path):
    """Stopped after its first epoch and resumed, a --features run ends with the weights of
    the run that was never stopped: the adapters and their momentum are in the resume state."""
    from safetensors.torch import load_file

    whole, part = tmp_path / "whole", tmp_path / "part"
    common = dict(features=True, epochs=2, mapping={"sarcoma": "soft_tissue_sarcoma"},
                  progress=False, iterations_per_epoch=2, patch_size=(16, 32, 32),
                  val_every=9)  # fmt: skip
    distill(SARCOMA, SHIPPED, "tsfm-tiny", whole, **common)
    settings = json.loads((whole / "settings.json").read_text())
    assert settings["config"]["kd_features"] is True
    pretrain(settings["cache"], part, PretrainConfig(**settings["config"]), stop_after_epoch=0,
             progress=False)  # fmt: skip
    state = load_file(str(part / "state" / "model.safetensors"))
    assert any(k.startswith(ADAPTERS) for k in state)
    pretrain(resume=part, progress=False)
    ends = [load_file(str(run / "last" / "model.safetensors")) for run in (whole, part)]
    assert not any(k.startswith(ADAPTERS) for k in ends[0])  # the bundle is the student alone
    assert ends[0].keys() == ends[1].keys()
    for key in ends[0]:
        torch.testing.assert_close(ends[0][key], ends[1][key], rtol=0, atol=0)
    config = json.loads((whole / "last" / "config.json").read_text())
    assert config["extra"]["teacher"]["features"]["bottleneck"] == "bottleneck"
    assert load_bundle(whole / "last").preset == "tsfm-tiny"


@pytest.mark.parametrize(
    "options, problem",
    [
        (["--alpha", "0", "--features"], "--features with alpha 0"),
        (["--temperature", "0"], "temperature 0.0: must be a positive number"),
        (["--temperature", "nan"], "temperature nan"),
        (["--alpha", "1.5"], "alpha 1.5: the teacher's weight goes from 0 to 1"),
        (["--student", "tsfm-huge"], "unknown model 'tsfm-huge'"),
    ],
)
def test_distill_settings_out_of_range_are_refused_before_any_work(tmp_path, options, problem):
    out = tmp_path / "run"
    base = ["--teacher", SHIPPED, "--student", "tsfm-tiny", "-o", out,
            "--map", "sarcoma=soft_tissue_sarcoma"]  # fmt: skip
    result = run_cli("distill", SARCOMA, *base, *options)
    assert_one_line_error(result, problem)
    assert not out.exists()


def test_a_teacher_that_is_no_bundle_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_cli("distill", SARCOMA, "--teacher", tmp_path / "empty", "--student",
                     "tsfm-tiny", "-o", tmp_path / "run")  # fmt: skip
    assert_one_line_error(result, str(tmp_path / "empty"))
    assert not (tmp_path / "run").exists()
