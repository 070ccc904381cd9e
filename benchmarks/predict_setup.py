"""The prediction benchmark's inputs (benchmarks/predict.py): the two CT scans, and the two
networks with random weights, planned alike: nnU-Net's PlainConvUNet in a fake results folder and
tumorfm's tsfm-small in a bundle, at the same spacing, patch and CT normalisation."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .common import BIN, DATA
from .nnunet_peer import PLANS, bench_plans, gmacs

LUNG = DATA / "cases" / "lung1_image.nrrd"
DATASET_ID, DATASET = 990, "Dataset990_PredictBench"
TSFM = "tsfm-small"
SYNTHETIC_SPACING_XYZ = (0.78, 0.78, 2.5)


def prepare_inputs(work: Path, quick: bool) -> dict:
    """A raw nnU-Net dataset of the two scans, for the fingerprint (labels: lung1's tumour, the
    phantom's liver and tumour as one class), and one input folder per scan holding the same
    NIfTI (--quick: its centre crop, 24 (lung1) or 40 slices of 192 x 192 voxels)."""
    from tumorfm.data.phantom import DEFAULT_SITES, make_case

    raw = work / "nnUNet_raw" / DATASET
    images, labels = raw / "imagesTr", raw / "labelsTr"
    site = dataclasses.replace(DEFAULT_SITES[0], spacing=SYNTHETIC_SPACING_XYZ)
    if not (labels / "synthetic.nii.gz").exists():
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(sitk.ReadImage(str(LUNG)), str(images / "lung1_0000.nii.gz"))
        label = sitk.ReadImage(str(LUNG).replace("_image", "_label")) > 0
        sitk.WriteImage(sitk.Cast(label, sitk.sitkUInt8), str(labels / "lung1.nii.gz"))
        array, label_array, geometry = make_case(site, (100, 512, 512), seed=0)
        for data, path in (
            (array, images / "synthetic_0000.nii.gz"),
            ((label_array > 0).astype(np.uint8), labels / "synthetic.nii.gz"),
        ):
            sitk.WriteImage(geometry.apply_to(sitk.GetImageFromArray(data)), str(path))
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "tumour": 1},
        "numTraining": 2, "file_ending": ".nii.gz",
        "description": "tumorfm benchmarks/predict.py: lung1 and a synthetic phantom CT",
    }, indent=2))  # fmt: skip
    inputs = {}
    sources = {"lung1": str(LUNG), "synthetic": f"make_case({site.name}, (100, 512, 512), "
               f"seed=0), spacing {SYNTHETIC_SPACING_XYZ} mm (x, y, z)"}  # fmt: skip
    for name, z in (("lung1", 24), ("synthetic", 40)):
        folder = work / ("inputs_quick" if quick else "inputs") / name
        folder.mkdir(parents=True, exist_ok=True)
        image = sitk.ReadImage(str(images / f"{name}_0000.nii.gz"))
        if quick:  # SimpleITK's slicing moves the origin: the crop stays where it was
            lo = [(s - c) // 2 for s, c in zip(image.GetSize(), (192, 192, z))]
            image = image[lo[0] : lo[0] + 192, lo[1] : lo[1] + 192, lo[2] : lo[2] + z]
            sitk.WriteImage(image, str(folder / "case_0000.nii.gz"))
        else:
            shutil.copyfile(images / f"{name}_0000.nii.gz", folder / "case_0000.nii.gz")
        inputs[name] = {
            "folder": str(folder),
            "source": sources[name],
            "size_xyz": list(image.GetSize()),
            "spacing_xyz": [round(s, 4) for s in image.GetSpacing()],
        }
    return inputs


def nnunet_env(work: Path, threads: int) -> dict:
    return {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "nnUNet_def_n_proc": str(threads),
        "nnUNet_raw": str(work / "nnUNet_raw"),
        "nnUNet_preprocessed": str(work / "nnUNet_preprocessed"),
        "nnUNet_results": str(work / "nnUNet_results"),
    }


def forward_gmacs(model, patch) -> float:
    """Multiply-adds of one window's forward pass."""
    return round(gmacs(model, 1, patch, backward=False), 1)


def nnunet_model(args, work: Path, target_params: int) -> tuple[dict, dict]:
    """nnU-Net's plans for the two scans, spacing and patch overridden, the network re-planned and
    capped (nnunet_peer.bench_plans), random weights in a fake results folder.

    Returns (plans, network info)."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pre = work / "nnUNet_preprocessed" / DATASET
    env = nnunet_env(work, args.threads)
    if not (pre / "dataset_fingerprint.json").is_file():  # nnU-Net's own fingerprint and plans
        with open(work / "nnunet_plan.log", "w") as log:
            for step in (["extract_fingerprint", "-np", str(args.threads)], ["plan_experiment"]):
                command = [str(BIN / f"nnUNetv2_{step[0]}"), "-d", str(DATASET_ID), *step[1:]]
                subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    forward = plans["transpose_forward"]
    plans["configurations"]["3d_fullres"]["spacing"] = [args.spacing[i] for i in forward]
    plans, theirs = bench_plans(plans, args.patch, 2, 2, target_params)
    theirs.pop("forward_backward_gmacs")  # a training iteration's, at batch 2
    theirs["network"] = "PlainConvUNet (nnU-Net default), features capped for the parameter count"
    manager = PlansManager(plans)
    config = manager.get_configuration("3d_fullres")

    def build():
        return nnUNetTrainer.build_network_architecture(manager, config, 1, 2, False)

    with torch.device("meta"):
        theirs["forward_gmacs_per_window"] = forward_gmacs(build(), config.patch_size)
    network = build()
    theirs["params"] = sum(p.numel() for p in network.parameters())
    folder = work / "nnUNet_results" / DATASET / f"nnUNetTrainer__{PLANS}__3d_fullres"
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "fold_0").mkdir(parents=True)
    for name, content in (
        ("plans.json", plans),
        ("dataset.json", json.loads((pre / "dataset.json").read_text())),
        ("dataset_fingerprint.json", json.loads((pre / "dataset_fingerprint.json").read_text())),
    ):
        (folder / name).write_text(json.dumps(content, indent=2))
    checkpoint = {  # what nnUNetPredictor.initialize_from_trained_model_folder reads
        "network_weights": network.state_dict(),
        "trainer_name": "nnUNetTrainer",
        "init_args": {"configuration": "3d_fullres", "fold": 0},
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")
    return plans, theirs


def tumorfm_bundle(args, work: Path, nnunet_plans: dict) -> tuple[Path, dict]:
    """tsfm-small with random weights and a plan equal to nnU-Net's in spacing, patch and CT
    normalisation, saved with save_bundle."""
    import torch

    from tumorfm.data import plan as planning
    from tumorfm.model import create_model
    from tumorfm.model.bundle import save_bundle

    stats = nnunet_plans["foreground_intensity_properties_per_channel"]["0"]
    spacing, patch = tuple(args.spacing), tuple(args.patch)
    num_pool, strides, kernels, _, divisor = planning.pool_and_conv_props(spacing, patch)
    full = nnunet_plans["configurations"]["3d_fullres"]
    backward = nnunet_plans["transpose_backward"]
    plan = planning.Plan(
        target_spacing_zyx=spacing,
        median_shape_after_resampling=tuple(full["median_image_size_in_voxels"][i]
                                            for i in backward),
        patch_size=patch, batch_size=2, num_pool_per_axis=num_pool, pool_op_kernel_sizes=strides,
        conv_kernel_sizes=kernels, features_per_stage=planning.features_per_stage(len(strides)),
        shape_must_be_divisible_by=divisor, normalization_schemes=["ct"], use_mask_for_norm=[False],
        intensity_properties=[{k: stats[k] for k in ("mean", "std", "percentile_00_5",
                                                     "percentile_99_5")}],
        transpose_forward=tuple(nnunet_plans["transpose_forward"]),
        transpose_backward=tuple(backward),
        target_lowres_axis=planning.determine_separate_z(spacing, spacing),
    )  # fmt: skip
    torch.manual_seed(0)
    model = create_model(TSFM, 1, 1, patch).eval()
    folder = work / "bundle"
    save_bundle(folder, model, ["tumour"], ["CT"], preset=TSFM,
                plan={"datasets": {"bench": plan.to_dict()}})  # fmt: skip
    with torch.device("meta"):
        macs = forward_gmacs(create_model(TSFM, 1, 1, patch), patch)
    ours = {
        "network": f"{TSFM} (tumorfm)",
        "params": sum(p.numel() for p in model.parameters()),
        "forward_gmacs_per_window": macs,
        "strides": [list(s) for s in model.config.strides],
    }
    return folder, ours
