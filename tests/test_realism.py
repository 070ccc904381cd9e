"""The realism measure of benchmarks.synth: features of a tumour's HU and the two-sample AUC."""

import numpy as np

from benchmarks.realism import FEATURES, features, summarise, two_sample


def _blob(rng, shift: float, texture: float) -> tuple[np.ndarray, np.ndarray]:
    image = rng.normal(40, 10, (12, 24, 24))
    mask = np.zeros(image.shape, bool)
    mask[2:10, 6:18, 6:18] = True
    image[mask] += shift + rng.normal(0, texture, mask.sum())
    return image, mask


def test_features_of_a_constant_blob_are_finite_and_its_volume_is_in_ml():
    image, mask = np.zeros((12, 24, 24)), np.zeros((12, 24, 24), bool)
    mask[2:10, 6:18, 6:18] = True
    image[mask] = 30
    found = features(image, mask, (2.0, 1.0, 1.0))
    assert all(np.isfinite(found[f]) for f in FEATURES if f != "glcm_correlation")
    assert found["std"] == 0 and found["skewness"] == 0 and found["p50"] == 30
    assert found["volume_ml"] == mask.sum() * 2.0 / 1000


def test_the_classifier_tells_different_tumours_apart_and_not_alike_ones():
    rng = np.random.default_rng(0)
    cases = [f"case{i}" for i in range(10)]
    real = np.array([[features(*_blob(rng, 30, 15), (1, 1, 1))[f] for f in FEATURES]
                     for _ in cases])  # fmt: skip
    alike = np.array([[features(*_blob(rng, 30, 15), (1, 1, 1))[f] for f in FEATURES]
                      for _ in cases])  # fmt: skip
    brighter = np.array([[features(*_blob(rng, 120, 2), (1, 1, 1))[f] for f in FEATURES]
                         for _ in cases])  # fmt: skip
    different, same = two_sample(real, brighter, cases, 0), two_sample(real, alike, cases, 0)
    assert different["auc"] > 0.95 and different["mean_abs_smd"] > 2
    assert same["auc"] < 0.8 and same["mean_abs_smd"] < 1
    assert different["folds"] == 5 and different["cases"] == 10


def test_summarise_skips_unusable_tumours_and_reports_over_seeds():
    rng = np.random.default_rng(1)
    rows = {}
    for i in range(6):
        real = features(*_blob(rng, 30, 15), (1, 1, 1))
        fake = {str(s): features(*_blob(rng, 90, 2), (1, 1, 1)) for s in (0, 1)}
        rows[f"case{i}"] = {"real": real, "procedural": fake}
    rows["case0"]["procedural"]["1"]["glcm_contrast"] = float("nan")  # no GLCM slice
    found = summarise(rows, "procedural", [0, 1])
    assert found["per_seed"][0]["cases"] == 6 and found["per_seed"][1]["cases"] == 5
    assert found["auc"]["n"] == 2 and found["auc"]["mean"] > 0.9
