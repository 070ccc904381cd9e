"""What the transfer and accuracy benchmarks share: the support datasets of their pretraining
pools (the single real cases of ../shared/data/cases as one-case datasets, the phantom sites) and
the parameter count nnU-Net's network is matched to."""

from __future__ import annotations

import json
import os
from pathlib import Path

import SimpleITK as sitk

from .measure import run

PARENTS = {"liver_tumour": "liver", "pancreas_tumour": "pancreas"}  # the phantoms' tumours
# online synthesis in a pretraining pool (issue 15 (c)): procedural liver tumours (the engine's
# defaults) in half of PhantomMultiOrgan's samples, whose livers have none, labelled liver_tumour
SYNTHETIC_LIVER_TUMOURS = {
    "phantom_multi_organ": {"organ": "liver", "tumour": "liver_tumour", "probability": 0.5}
}
SINGLES = {  # case -> (dataset folder, modality, class name of label 1)
    "lung1": ("Dataset811_Lung1", "CT", "lung_tumour"),
    "brain1": ("Dataset812_Brain1", "MR", "brain_tumour"),
    "breast1": ("Dataset813_Breast1", "MR", "breast_lesion"),
}
PHANTOMS = {
    "phantom_liver": ("Dataset901_PhantomLiver", {1: "liver", 2: "liver_tumour"}),
    "phantom_kidney": (
        "Dataset902_PhantomKidney",
        {1: "kidney_left", 2: "kidney_right", 3: "kidney_tumour"},
    ),
    "phantom_pancreas": ("Dataset903_PhantomPancreas", {1: "pancreas", 2: "pancreas_tumour"}),
    "phantom_multi_organ": (
        "Dataset904_PhantomMultiOrgan",
        {
            1: "stomach",
            2: "liver",
            3: "spleen",
            4: "pancreas",
            5: "kidney_left",
            6: "kidney_right",
            7: "aorta",
        },
    ),  # fmt: skip
}


def single_case_dataset(case: str, cases: Path, out: Path) -> dict:
    """One real NRRD case as a one-case nnU-Net raw dataset; its pool entry."""
    folder, modality, label = SINGLES[case]
    root = out / folder
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    image = sitk.ReadImage(str(cases / f"{case}_image.nrrd"))
    mask = sitk.ReadImage(str(cases / f"{case}_label.nrrd"))
    mask = sitk.Cast(mask > 0, sitk.sitkUInt8)
    mask.CopyInformation(image)
    sitk.WriteImage(image, str(root / "imagesTr" / f"{case}_0000.nii.gz"))
    sitk.WriteImage(mask, str(root / "labelsTr" / f"{case}.nii.gz"))
    dataset = {
        "name": case,
        "channel_names": {"0": modality},
        "labels": {"background": 0, label: 1},
        "numTraining": 1,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(dataset, indent=1))
    return {"name": case, "path": str(root), "labels": {1: label}}


def support_datasets(tumorfm: Path, data: Path, work: Path, phantom_cases: int, timeout: float):
    """Pool entries every pretraining here shares: the single real cases and the phantom sites
    (written into `work` on first use)."""
    phantoms = work / "phantoms"
    if not (phantoms / PHANTOMS["phantom_multi_organ"][0] / "dataset.json").is_file():
        command = [str(tumorfm), "phantom", "-o", str(phantoms), "--cases", str(phantom_cases)]
        run(command, dict(os.environ), work / "phantom.log", timeout, "phantoms")
    datasets = [single_case_dataset(c, data / "cases", work / "singles") for c in SINGLES]
    return datasets + [
        {"name": name, "path": str(phantoms / folder), "labels": labels}
        for name, (folder, labels) in PHANTOMS.items()
    ]


def parameter_count(preset: str, patch) -> int:
    """The network's parameters (single output, no deep-supervision heads): nnU-Net's target."""
    import torch

    from tumorfm.model import create_model

    with torch.device("meta"):
        return sum(p.numel() for p in create_model(preset, 1, 1, tuple(patch)).parameters())


def add_plan_and_seeds(parser, seeds_help: str) -> None:
    """The options the transfer and accuracy benchmarks share: patch, plan and seeds."""
    parser.add_argument("--patch", type=int, nargs=3, default=[48, 96, 96], metavar=("Z", "Y", "X"))
    parser.add_argument(
        "--config",
        choices=("fullres", "lowres"),
        default="lowres",
        help="the plan of every model (nnU-Net too: tumorfm's lowres spacing)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help=seeds_help)
