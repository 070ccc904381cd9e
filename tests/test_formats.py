import json

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import BRAIN, SARCOMA

from tumorfm.data.formats import load_channels, load_label, read_dataset
from tumorfm.errors import TumorFMError


def test_nnunet_layout_real_sarcoma():
    dataset = read_dataset(SARCOMA)
    assert dataset.layout == "nnunet" and dataset.problems == []
    assert dataset.modalities == ["CT"]
    assert dataset.labels == {0: "background", 1: "sarcoma"}
    assert [c.case_id for c in dataset.cases] == ["STS_008", "STS_019", "STS_025"]
    case = dataset.cases[0]
    assert case.channels[0].path.name == "STS_008_0000.nii.gz" and case.channels[0].index is None
    image, geometry = load_channels(case)
    label, label_geometry = load_label(case)
    assert image.shape[0] == 1 and image.shape[1:] == label.shape
    assert image.dtype == np.float32 and image.min() < -500  # CT in HU: air or fat present
    assert geometry.close_to(label_geometry)
    assert set(np.unique(label)) == {0, 1}


def test_msd_layout_real_brain():
    dataset = read_dataset(BRAIN)
    assert dataset.layout == "msd" and dataset.problems == []
    assert dataset.modalities == ["T1"] and dataset.labels == {0: "background", 1: "tumour"}
    assert [c.case_id for c in dataset.cases] == ["btp_04_post", "btp_07_post"]
    image, _ = load_channels(dataset.cases[0])
    assert image.shape == (1, 24, 256, 256)


def _write_msd_4d(root, cases=2, channels=2, shape=(6, 8, 10)):
    """A small 4D MSD dataset: several modalities stacked in one file per case."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    training = []
    for i in range(cases):
        data = rng.normal(size=(channels, *shape)).astype(np.float32)
        data[1] += 10 * (1 + i)
        image = sitk.JoinSeries([sitk.GetImageFromArray(c) for c in data])
        image.SetSpacing((1.0, 1.0, 2.0, 1.0))
        sitk.WriteImage(image, str(root / "imagesTr" / f"case_{i}.nii.gz"))
        label = sitk.GetImageFromArray((data[0] > 1).astype(np.uint8))
        label.SetSpacing((1.0, 1.0, 2.0))
        sitk.WriteImage(label, str(root / "labelsTr" / f"case_{i}.nii.gz"))
        training.append(
            {"image": f"./imagesTr/case_{i}.nii.gz", "label": f"./labelsTr/case_{i}.nii.gz"}
        )
    meta = {
        "name": "Four",
        "modality": {str(c): f"MR{c}" for c in range(channels)},
        "labels": {"0": "background", "1": "lesion"},
        "training": training,
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_msd_4d_channels(tmp_path):
    dataset = read_dataset(_write_msd_4d(tmp_path / "Task999_Four"))
    assert dataset.problems == [] and dataset.modalities == ["MR0", "MR1"]
    case = dataset.cases[1]
    assert [c.index for c in case.channels] == [0, 1]
    image, geometry = load_channels(case)
    assert image.shape == (2, 6, 8, 10)
    assert abs(image[1].mean() - 20) < 1 and abs(image[0].mean()) < 1
    assert geometry.spacing == (1.0, 1.0, 2.0)


def test_layout_problems_are_listed_not_raised(sarcoma):
    (sarcoma / "labelsTr" / "STS_019.nii.gz").unlink()
    (sarcoma / "imagesTr" / "STS_025_0000.nii.gz").rename(sarcoma / "imagesTr" / "STS_025.nii.gz")
    dataset = read_dataset(sarcoma)
    text = "\n".join(dataset.problems)
    assert "STS_019_0000.nii.gz: image without label" in text
    assert "STS_025.nii.gz: name does not follow" in text
    assert "STS_025.nii.gz: label without image" in text
    assert [c.case_id for c in dataset.labelled_cases] == ["STS_008"]


@pytest.mark.parametrize(
    "content, problem",
    [
        (None, "missing"),
        ("{not json", "not valid JSON"),
        ('{"name": "x"}', "neither nnU-Net v2"),
        (
            '{"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": [1, 2]}, '
            '"file_ending": ".nii.gz"}',
            "region-based",
        ),
        (
            '{"channel_names": {"1": "CT"}, "labels": {"background": 0}, "file_ending": ".nii.gz"}',
            "without gaps",
        ),
    ],
)
def test_bad_dataset_json(tmp_path, content, problem):
    if content is not None:
        (tmp_path / "dataset.json").write_text(content)
    with pytest.raises(TumorFMError, match=problem):
        read_dataset(tmp_path)
