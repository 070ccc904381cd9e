"""Split files: nnU-Net's splits_final.json, a plain train/val pair or tumorfm's split.json decide
which cases train and validate; unlisted cases stay out; mistakes are one-line errors."""

import json

import pytest
from conftest import assert_one_line_error, run_cli
from test_train import CLI_TINY, TINY

from tumorfm.data.cache import cached_cases
from tumorfm.data.phantom import DEFAULT_SITES, write_phantom_pool
from tumorfm.data.pool import load_pool
from tumorfm.data.preprocess import preprocess_pool
from tumorfm.errors import TumorFMError
from tumorfm.train.config import make_config
from tumorfm.train.split import read_split, split_cases
from tumorfm.train.trainer import pretrain
from tumorfm.workflows.demo import write_pool_file


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Two phantom sites of four cases each, preprocessed."""
    root = tmp_path_factory.mktemp("split")
    folders = write_phantom_pool(
        root / "raw", cases_per_site=4, shape_zyx=(20, 40, 40), sites=DEFAULT_SITES[:2]
    )
    preprocess_pool(
        load_pool(write_pool_file(folders, root / "pool.yaml")), root / "cache", progress=False
    )
    return root / "cache"


def _ids(cache):
    pool = json.loads((cache / "pool.json").read_text())
    return pool, {
        d["name"]: sorted(c.case_id for c in cached_cases(cache, d["name"]))
        for d in pool["datasets"]
    }


def test_nnunet_splits_final_picks_the_fold_and_leaves_unlisted_cases_out(cache, tmp_path):
    pool, ids = _ids(cache)
    first, second = list(ids)
    a = ids[first]
    folds = [{"train": a[:3], "val": a[3:]}, {"train": a[:2], "val": a[2:3]}]  # a[3]: a test case
    path = tmp_path / "splits_final.json"
    path.write_text(json.dumps(folds))
    split = read_split(path, cache, pool, fold=1, val_fraction=0.2, seed=0)
    assert split[first] == {"train": a[:2], "val": a[2:3]}
    assert split[second] == split_cases(cache, pool, 0.2, 0)[second]  # not listed: automatic


def test_tumorfm_split_json_names_its_datasets(cache, tmp_path):
    pool, ids = _ids(cache)
    wanted = {name: {"train": cases[1:], "val": cases[:1]} for name, cases in ids.items()}
    path = tmp_path / "split.json"
    path.write_text(json.dumps(wanted))
    assert read_split(path, cache, pool, 0, 0.2, 0) == wanted


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("{not json", "not valid JSON"),
        ('{"train": ["a"], "train": ["b"], "val": []}', "key 'train' appears twice"),
        ('[{"train": ["x"], "val": []}]', "fold 3 asked, the file has 1"),
        ('{"train": ["no_such_case"], "val": []}', "case 'no_such_case' is not in the cache"),
        ('{"nowhere": {"train": [], "val": []}}', "dataset 'nowhere' is not in the pool"),
        ('{"train": "liver", "val": []}', "expected nnU-Net's splits_final.json"),
    ],
)
def test_bad_split_files_are_refused_naming_the_file(cache, tmp_path, content, fragment):
    pool, _ = _ids(cache)
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(TumorFMError, match="bad.json") as error:
        read_split(path, cache, pool, fold=3 if "fold" in fragment else 0, val_fraction=0.2, seed=0)
    assert fragment in str(error.value)


def test_a_case_in_both_parts_or_no_training_case_is_refused(cache, tmp_path):
    pool, ids = _ids(cache)
    a = next(iter(ids.values()))
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"train": a[:2], "val": a[1:3]}))
    with pytest.raises(TumorFMError, match=f"case '{a[1]}' is in both train and val"):
        read_split(path, cache, pool, 0, 0.2, 0)
    path.write_text(json.dumps({"train": [], "val": a[:1]}))
    with pytest.raises(TumorFMError, match="no training case"):
        read_split(path, cache, pool, 0, 0.2, 0)


def test_pretrain_follows_the_split_file_and_records_it(cache, tmp_path):
    pool, ids = _ids(cache)
    first = next(iter(ids))
    a = ids[first]
    path = tmp_path / "splits_final.json"
    path.write_text(json.dumps([{"train": a[:2], "val": a[2:3]}]))
    config = make_config("cpu", epochs=1, split_file=str(path), **TINY)
    pretrain(cache, tmp_path / "run", config, progress=False)
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert split[first] == {"train": a[:2], "val": a[2:3]}
    settings = json.loads((tmp_path / "run" / "settings.json").read_text())
    assert settings["config"]["split_file"] == str(path)


def test_cli_split_mistakes_are_one_line_errors(cache, tmp_path):
    missing = run_cli(
        "pretrain", cache, "-o", tmp_path / "a", *CLI_TINY, "--split", tmp_path / "missing.json"
    )
    assert_one_line_error(missing, "missing.json", "no such split file")
    bad = tmp_path / "bad.json"
    bad.write_text('{"train": ["STS_999"], "val": []}')
    result = run_cli("pretrain", cache, "-o", tmp_path / "b", *CLI_TINY, "--split", bad)
    assert_one_line_error(result, "bad.json", "case 'STS_999' is not in the cache")
    assert not (tmp_path / "b" / "settings.json").exists()
