"""`tumorfm evaluate-model BUNDLE DATASET`: how well a model does on a labelled dataset as it is.

With a pretrained bundle this is the survey's zero-shot evaluation (no tuning; the dataset's
classes are matched to the bundle's by name, or renamed with a mapping); with a fine-tuned bundle
it scores held-out cases. Predictions and scores are written under OUT.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from tumorfm.data.classes import class_name
from tumorfm.data.formats import read_dataset
from tumorfm.errors import TumorFMError
from tumorfm.eval.evaluate import evaluate
from tumorfm.files import ensure_writable, write_json
from tumorfm.infer.inputs import ScanInput
from tumorfm.infer.predict import predict_iter
from tumorfm.infer.predictor import PredictOptions
from tumorfm.model.bundle import bundle_folder, read_bundle_config


def matched_classes(
    labels: dict[int, str], bundle_classes: list[str], mapping: dict[str, str], where: Path
) -> dict[int, str]:
    """Dataset label value -> bundle class, by (mapped) name."""
    names = {
        v: class_name(mapping.get(n, mapping.get(class_name(n), n))) for v, n in labels.items()
    }
    matched = {v: n for v, n in names.items() if v and n in bundle_classes}
    if not matched:
        raise TumorFMError(
            f"{where}: none of its classes ({', '.join(n for v, n in names.items() if v)}) is a "
            f"class of the bundle ({', '.join(bundle_classes)}); map one with --map "
            f"NAME=BUNDLE_CLASS"
        )
    return matched


def evaluate_model(
    bundle: str | Path,
    dataset: str | Path,
    out: str | Path,
    cases: list[str] | None = None,
    mapping: dict[str, str] | None = None,
    options: PredictOptions | None = None,
    workers: int = 1,
    progress: bool = True,
) -> dict:
    """Predict the dataset's labelled cases (or `cases`) with `bundle` and score them."""
    bundle, dataset = bundle_folder(bundle), Path(dataset)
    out = ensure_writable(Path(out))
    raw = read_dataset(dataset)
    meta = read_bundle_config(bundle)
    labelled = {case.case_id: case for case in raw.labelled_cases}
    unknown = sorted(set(cases or []) - set(labelled))
    if unknown or not labelled:
        raise TumorFMError(f"{dataset}: no labelled case {', '.join(unknown)}".rstrip())
    matched = matched_classes(raw.labels, meta["classes"], mapping or {}, dataset)
    options = options or PredictOptions()
    plans = (meta.get("plan") or {}).get("datasets") or {}
    if options.plan is None and class_name(raw.name) in plans and len(plans) > 1:
        options = replace(options, plan=class_name(raw.name))
    options = replace(options, classes=list(dict.fromkeys(matched.values())))
    chosen = cases or sorted(labelled)
    scans = [
        ScanInput(c, list(dict.fromkeys(ch.path for ch in labelled[c].channels))) for c in chosen
    ]
    predictions = out / "predictions"
    failed = [
        f"{scan.case_id}: {result}"
        for scan, result in predict_iter(
            scans, bundle, predictions, options, progress=progress, existing="overwrite"
        )  # its own subfolder, remade on every run
        if isinstance(result, TumorFMError)
    ]
    if failed:
        raise TumorFMError("\n".join(failed))
    # the predicted values named as the dataset names them, so evaluate matches them by name
    values = {raw.labels[v]: meta["classes"].index(n) + 1 for v, n in matched.items()}
    write_json(predictions / "dataset.json", {"labels": {"background": 0, **values}})
    label_folder = Path(labelled[chosen[0]].label).parent
    return evaluate(
        predictions, label_folder, out / "evaluation", workers=workers, progress=progress,
        cases=chosen,
    )  # fmt: skip
