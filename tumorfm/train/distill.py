"""`tumorfm distill`: a small, fast student that learns what a big teacher bundle knows (issue 20).

The survey's route to the clinic (MobileSAM, TinySAM in 2D; logit distillation for 3D
segmentation, Qin et al., TMI 2021): the student, any preset, trains on the teacher's own
dataset plan with the usual pieces (sampling, augmentation, logging, exact resume, DDP; the
trainer is not copied) and one change in the loss: on every patch it also matches the teacher's
sigmoid outputs, both softened by a temperature (tumorfm.train.teacher), and optionally its
stages' features through 1x1x1 adapters (tumorfm.train.features). The result is an
ordinary bundle for `predict`; its config.json and the run's settings.json name the teacher.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tumorfm.errors import TumorFMError
from tumorfm.model.bundle import bundle_folder, read_bundle_config
from tumorfm.train.config import make_config
from tumorfm.train.teacher import check_teacher


def teacher_labelled(
    unlabelled: Path, teacher: Path, labels: dict[int, str], out: Path, plan: str | None, progress
) -> Path:
    """OUT/teacher-labelled: the scans of `unlabelled` with the teacher's label maps on the
    dataset's label values, as an nnU-Net raw dataset (how the many scans a hospital has
    without masks still teach the student). The teacher predicts as `predict --fast` does."""
    from tqdm import tqdm

    from tumorfm.data.io import write_volume
    from tumorfm.files import write_json
    from tumorfm.infer.inputs import list_inputs, load_scan
    from tumorfm.infer.predictor import PredictOptions, Predictor

    scans = list_inputs(unlabelled)
    if not scans:
        raise TumorFMError(f"--unlabelled {unlabelled}: no scans in this folder")
    predictor = Predictor.from_bundle(teacher, PredictOptions(plan=plan, fast=True))
    folder = out / "teacher-labelled"
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    values = {name: value for value, name in labels.items() if value}
    for scan in tqdm(scans, desc="teacher labels", unit="scan", disable=None if progress else True):
        image, geometry = load_scan(scan, predictor.in_channels)
        found = predictor(image, geometry, scan.case_id)
        label = np.zeros(found.label.shape, np.uint8)
        for name, value in values.items():
            label[found.label == found.labels[name]] = value
        for channel, array in enumerate(image):
            write_volume(
                array, geometry, folder / "imagesTr" / f"{scan.case_id}_{channel:04d}.nii.gz"
            )
        write_volume(label, geometry, folder / "labelsTr" / f"{scan.case_id}.nii.gz")
    modalities = read_bundle_config(teacher).get("modalities") or []
    write_json(
        folder / "dataset.json",
        {
            "name": "teacher-labelled",
            "channel_names": {str(i): m for i, m in enumerate(modalities)},
            "labels": {"background": 0, **values},
            "numTraining": len(scans),
            "file_ending": ".nii.gz",
            "labelled_by": str(teacher),
        },
    )
    return folder


def distill(
    dataset: str | Path,
    teacher: str | Path,
    student: str,
    out: str | Path,
    temperature: float = 2.0,
    alpha: float = 0.5,
    features: bool = False,
    epochs: int = 10,
    mapping: dict[str, str] | None = None,
    cache: str | Path | None = None,
    workers: int = 2,
    progress: bool = True,
    plan_config: str | None = None,
    unlabelled: str | Path | None = None,
    teacher_plan: str | None = None,
    **settings,
) -> dict:
    """Train the preset `student` from scratch on `dataset`, taught by the bundle `teacher`,
    into the run folder `out` (bundles OUT/best, OUT/last); returns the last epoch's log row.
    The dataset is planned as the teacher's was; its classes (renamed by `mapping`) must be
    classes of the teacher. Scans in `unlabelled` join the pool as a second dataset labelled by
    the teacher (with its plan `teacher_plan` when it has several). With `features`, the
    student's stages also learn the teacher's (tumorfm.train.features). `settings` are
    PretrainConfig fields (profile defaults to "cpu")."""
    from tumorfm.data.formats import read_dataset
    from tumorfm.files import ensure_writable
    from tumorfm.train.finetune import dataset_classes, new_run_plan, prepare_cache
    from tumorfm.train.trainer import pretrain

    dataset, teacher, out = Path(dataset), bundle_folder(teacher), Path(out)
    meta = read_bundle_config(teacher)
    labels = dataset_classes(dataset, meta["classes"], mapping or {}, new_head=False)
    channels = len(read_dataset(dataset).modalities)
    classes = [name for value, name in labels.items() if value]
    check_teacher(teacher, meta["classes"], meta.get("modalities") or [], classes, channels)
    plan_config = new_run_plan(out, meta, plan_config, settings)
    profile = settings.pop("profile", "cpu")
    config = make_config(  # before anything is written: a bad setting leaves no folder behind
        profile,
        model=student,
        epochs=epochs,
        teacher=str(teacher),
        kd_temperature=temperature,
        kd_alpha=alpha,
        kd_features=features,
        workers=min(workers, 2),
        **settings,
    )
    more = []
    if unlabelled is not None:
        ensure_writable(out)
        more.append(
            teacher_labelled(Path(unlabelled), teacher, labels, out, teacher_plan, progress)
        )
    cache = prepare_cache(
        dataset, out, labels, meta, plan_config, config, None, cache, workers, progress, more
    )
    return pretrain(cache, out, config, progress=progress)


__all__ = ["distill", "teacher_labelled"]
