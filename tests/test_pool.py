import math
from pathlib import Path

import pytest
import yaml
from conftest import BRAIN, SARCOMA, assert_one_line_error, run_cli

from tumorfm.data.pool import load_pool
from tumorfm.errors import TumorFMError

CONFIGS = Path(__file__).parents[1] / "configs" / "pools"


def _pool(tmp_path, datasets, **extra) -> Path:
    path = tmp_path / "pool.yaml"
    path.write_text(yaml.safe_dump({"name": "test", "datasets": datasets, **extra}))
    return path


def _real(tmp_path, **extra) -> Path:
    return _pool(
        tmp_path,
        [
            {"name": "sarcoma", "path": str(SARCOMA), "labels": {1: "soft_tissue_sarcoma"}},
            {"name": "brain", "path": str(BRAIN), "labels": {1: "brain_tumour"}},
        ],
        **extra,
    )


def test_real_pool_classes_annotations_and_sampling(tmp_path):
    pool = load_pool(_real(tmp_path))
    assert pool.classes == ["soft_tissue_sarcoma", "brain_tumour"]
    sarcoma, brain = pool.datasets
    assert (sarcoma.num_cases, brain.num_cases) == (3, 2)
    assert sarcoma.annotated == ["soft_tissue_sarcoma"] and brain.modalities == ["T1"]
    assert pool.global_label(brain) == {1: 2}
    # each case drawn with probability proportional to 1/sqrt(n) of its dataset
    ratio = pool.case_probability(sarcoma) / pool.case_probability(brain)
    assert ratio == pytest.approx(math.sqrt(2) / math.sqrt(3))
    total = sum(pool.case_probability(d) * d.num_cases for d in pool.datasets)
    assert total == pytest.approx(1.0)


def test_case_weight_override(tmp_path):
    path = _pool(
        tmp_path,
        [
            {
                "name": "sarcoma",
                "path": str(SARCOMA),
                "labels": {1: "soft_tissue_sarcoma"},
                "case_weight": 2.0,
            },
            {
                "name": "brain",
                "path": str(BRAIN),
                "labels": {1: "brain_tumour"},
                "case_weight": 1.0,
            },
        ],
    )
    pool = load_pool(path)
    assert pool.case_probability(pool.datasets[0]) == pytest.approx(2 / (3 * 2 + 2 * 1))


def test_paper_pool_is_valid_without_data():
    pool = load_pool(CONFIGS / "paper-10.yaml", check_paths=False)
    assert len(pool.datasets) == 10
    assert sum(d.num_cases for d in pool.datasets) == 2778
    kits = pool.dataset("kits21")
    assert kits.annotated == ["kidney", "kidney_tumour", "kidney_cyst"]
    owners = [d.name for d in pool.datasets if "liver" in d.annotated]
    assert owners == ["msd_liver", "amos22", "btcv", "totalseg_part1"]
    assert len(pool.classes) == len(set(pool.classes)) == 31


def test_real_mini_pool_loads_in_the_layout_it_expects(tmp_path):
    """The shipped real-mini.yaml placed as in a clone: repo beside ../shared, phantoms written."""
    from tumorfm.data.phantom import DEFAULT_SITES, write_phantom_pool

    pools = tmp_path / "repo" / "configs" / "pools"
    pools.mkdir(parents=True)
    (pools / "real-mini.yaml").write_text((CONFIGS / "real-mini.yaml").read_text())
    (tmp_path / "shared" / "data").mkdir(parents=True)
    for real in (SARCOMA, BRAIN):
        (tmp_path / "shared" / "data" / real.name).symlink_to(real)
    write_phantom_pool(tmp_path / "repo" / "phantoms", cases_per_site=2, shape_zyx=(16, 24, 24))
    pool = load_pool(pools / "real-mini.yaml")
    assert [d.num_cases for d in pool.datasets] == [3, 2] + [2] * len(DEFAULT_SITES)
    assert "soft_tissue_sarcoma" in pool.classes and "liver_tumour" in pool.classes
    multi = pool.dataset("phantom_multi_organ")
    assert "liver" in multi.annotated and "liver_tumour" not in multi.annotated


@pytest.mark.parametrize(
    "datasets, extra, problem",
    [
        (
            [{"name": "gone", "path": "/nowhere/Dataset1", "labels": {1: "x"}}],
            {},
            "dataset 'gone': path /nowhere/Dataset1 not found",
        ),
        (
            [{"name": "sarcoma", "path": str(SARCOMA), "labels": {2: "sarcoma"}}],
            {},
            "label value(s) 1 (sarcoma) of",
        ),
        (
            [{"name": "sarcoma", "path": str(SARCOMA), "labels": {1: "a", 2: "a"}}],
            {},
            "global class 'a' is mapped twice",
        ),
        ([{"name": "sarcoma", "path": str(SARCOMA), "labels": {}}], {}, "annotates no class"),
        (
            [{"name": "sarcoma", "path": str(SARCOMA), "labels": {1: "Sarcoma Tumour"}}],
            {},
            "lower snake_case",
        ),
        (
            [{"name": "sarcoma", "path": str(SARCOMA), "labels": {1: "sarcoma"}, "labelz": {}}],
            {},
            "labelz",
        ),
        (
            [{"name": "sarcoma", "path": str(SARCOMA), "labels": {1: "sarcoma"}}],
            {"classes": ["sarcomaa"]},
            "'sarcoma' is mapped by a dataset but missing from 'classes'",
        ),
        (
            [
                {"name": "s", "path": str(SARCOMA), "labels": {1: "a"}},
                {"name": "s", "path": str(BRAIN), "labels": {1: "b"}},
            ],
            {},
            "'s' is used twice",
        ),
        (
            [
                {
                    "name": "sarcoma",
                    "path": str(SARCOMA),
                    "labels": {1: "sarcoma"},
                    "case_weight": -1,
                }
            ],
            {},
            "case_weight",
        ),
        (
            [{"name": "sarcoma", "path": str(SARCOMA), "labels": {1: "s"}, "config": "3d_lowres"}],
            {},
            "config",
        ),
    ],
)
def test_bad_pool_files(tmp_path, datasets, extra, problem):
    path = _pool(tmp_path, datasets, **extra)
    with pytest.raises(TumorFMError) as caught:
        load_pool(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and problem in message


def test_dataset_without_labelled_cases(tmp_path, sarcoma):
    for label in (sarcoma / "labelsTr").iterdir():
        label.unlink()
    path = _pool(tmp_path, [{"name": "s", "path": str(sarcoma), "labels": {1: "sarcoma"}}])
    with pytest.raises(TumorFMError, match="no labelled case"):
        load_pool(path)


def test_cli_pool_show(tmp_path):
    result = run_cli("pool", "show", _real(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "soft_tissue_sarcoma" in result.stdout and "1->brain_tumour" in result.stdout
    paper = run_cli("pool", "show", CONFIGS / "paper-10.yaml", "--no-check-paths")
    assert paper.returncode == 0 and "2778 cases" in paper.stdout
    synthesis = {"organ_hu": [-20, 100], "tumour": "soft_tissue_sarcoma", "probability": 0.3}
    entry = {"name": "sarcoma", "path": str(SARCOMA), "labels": {1: "soft_tissue_sarcoma"}}
    shown = run_cli("pool", "show", _pool(tmp_path, [{**entry, "synthesis": synthesis}]))
    row = next(line for line in shown.stdout.splitlines() if "soft_tissue_sarcoma  " in line)
    assert row.endswith("sarcoma, sarcoma (synthetic, 0.3 of samples)"), row


def test_cli_pool_errors_are_one_line(tmp_path):
    bad = _pool(tmp_path, [{"name": "s", "path": str(SARCOMA), "labels": {1: "a", 5: "b"}}])
    assert_one_line_error(run_cli("pool", "show", bad), str(bad), "[5] are not declared")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\ndatasets: [\n")
    assert_one_line_error(run_cli("pool", "show", broken), "not valid YAML")
    assert_one_line_error(run_cli("pool", "show", tmp_path / "none.yaml"), "pool file not found")


def test_parents_make_regions(tmp_path):
    pool = load_pool(CONFIGS / "paper-10.yaml", check_paths=False)
    regions = pool.class_regions()
    liver, tumour = pool.classes.index("liver"), pool.classes.index("liver_tumour")
    assert regions[liver] == [liver + 1, tumour + 1] and regions[tumour] == [tumour + 1]
    kidney = pool.classes.index("kidney")
    assert len(regions[kidney]) == 3  # kidney, its tumours and its cysts


@pytest.mark.parametrize(
    "parents, problem",
    [
        ({"a": "nope"}, "'nope' is not a global class"),
        ({"a": "b", "b": "a"}, "is its own ancestor"),
    ],
)
def test_bad_parents(tmp_path, parents, problem):
    path = _pool(
        tmp_path,
        [
            {"name": "s", "path": str(SARCOMA), "labels": {1: "a"}},
            {"name": "b", "path": str(BRAIN), "labels": {1: "b"}},
        ],
        parents=parents,
    )
    with pytest.raises(TumorFMError, match=problem):
        load_pool(path)
