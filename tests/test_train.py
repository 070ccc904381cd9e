"""Pretraining: logs, bundles, exact resume after a kill, DDP equals one process, bad input."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, run_cli
from safetensors.torch import load_file

from tumorfm.data.phantom import DEFAULT_SITES, write_phantom_pool
from tumorfm.data.pool import load_pool
from tumorfm.data.preprocess import preprocess_pool
from tumorfm.model.bundle import load_bundle
from tumorfm.train.config import make_config
from tumorfm.train.trainer import pretrain
from tumorfm.workflows.demo import write_pool_file

TINY = dict(
    patch_size=(16, 32, 32),
    batch_size=2,
    iterations_per_epoch=3,
    val_every=1,
    val_batches=1,
    workers=0,
    precision="fp32",
)
CLI_TINY = [
    "--profile",
    "cpu",
    "--patch",
    "16",
    "32",
    "32",
    "--batch",
    "2",
    "--iterations",
    "3",
    "--workers",
    "0",
    "--precision",
    "fp32",
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A small phantom pool: two tumour sites and the multi-organ site, preprocessed."""
    root = tmp_path_factory.mktemp("train")
    sites = (DEFAULT_SITES[0], DEFAULT_SITES[2], DEFAULT_SITES[3])
    folders = write_phantom_pool(
        root / "raw", cases_per_site=3, shape_zyx=(20, 40, 40), sites=sites
    )
    pool = load_pool(write_pool_file(folders, root / "raw" / "pool.yaml"))
    preprocess_pool(pool, root / "cache", progress=False)
    return root / "cache"


def _weights(run):
    return load_file(str(run / "state" / "model.safetensors"))


def test_pretrain_writes_logs_curves_bundles_and_state(cache, tmp_path):
    config = make_config("cpu", epochs=2, **TINY)
    row = pretrain(cache, tmp_path / "run", config, progress=False)
    run = tmp_path / "run"
    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [0, 1] and row["epoch"] == 1
    assert lines[1]["lr"] < lines[0]["lr"] == pytest.approx(1e-2)  # cpu profile, poly decay
    assert "val_dice" in lines[0] and 0.0 <= lines[1]["val_mean_dice"] <= 1.0
    assert (run / "curves.csv").read_text().startswith("epoch,")
    assert any((run / "tensorboard").iterdir())
    split = json.loads((run / "split.json").read_text())
    assert all(len(part["val"]) == 1 and len(part["train"]) == 2 for part in split.values())
    bundle = load_bundle(run / "last")
    assert bundle.classes == json.loads((cache / "pool.json").read_text())["classes"]
    assert bundle.paint_order.index("liver") < bundle.paint_order.index("liver_tumour")
    assert (run / "best" / "model.safetensors").is_file()
    for key, value in _weights(run).items():
        assert torch.equal(bundle.model.state_dict()[key], value)


def test_killed_run_resumes_to_the_same_weights(cache, tmp_path):
    """Bit-identical: same batches (a function of seed and step), same optimiser and RNG state.
    All three runs are processes with the same thread count (threads change float sums)."""
    epochs = 6
    command = [sys.executable, "-m", "tumorfm", "pretrain"]
    args = ["--epochs", str(epochs), "--val-every", "1", *CLI_TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole = subprocess.run(
        [*command, str(cache), "-o", str(tmp_path / "whole"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [*command, str(cache), "-o", str(killed), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    log, state = killed / "log.jsonl", killed / "state" / "state.json"
    deadline = time.time() + 300
    while not state.is_file() and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert json.loads(state.read_text())["epoch"] < epochs - 1  # killed mid-way
    resumed = subprocess.run(
        [*command, "--resume", str(killed)], env=env, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    lines = [json.loads(line)["epoch"] for line in log.read_text().splitlines()]
    assert lines[-1] == epochs - 1
    first, second = _weights(tmp_path / "whole"), _weights(killed)
    for key in first:
        assert torch.equal(first[key], second[key]), key


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_two_processes_equal_one(cache, tmp_path, sharding):
    """DDP or FSDP on 2 CPU processes (gloo), global batch 2 split 1 + 1, equals one process."""
    args = [str(cache), "--epochs", "2", "--val-every", "1", "--model", "tsfm-tiny", *CLI_TINY]
    single = run_cli("pretrain", *args, "-o", tmp_path / "one")
    assert single.returncode == 0, single.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
        "-m",
        "tumorfm",
        "pretrain",
    ]
    extra = ["--fsdp"] if sharding == "fsdp" else []
    double = subprocess.run(
        [*torchrun, *args, *extra, "-o", str(tmp_path / "two")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert double.returncode == 0, double.stderr[-3000:]
    assert len(double.stdout.strip().splitlines()) == 1  # only the main process reports
    one = [json.loads(x) for x in (tmp_path / "one" / "log.jsonl").read_text().splitlines()]
    two = [json.loads(x) for x in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    for a, b in zip(one, two):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    first, second = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for key in first:
        torch.testing.assert_close(second[key], first[key], rtol=1e-4, atol=1e-5)
    assert load_bundle(tmp_path / "two" / "last").classes
    if sharding == "fsdp":  # the sharded optimiser state loads back (nothing left to train)
        torchrun[6] = str(_free_port())
        again = subprocess.run(
            [*torchrun, "--resume", str(tmp_path / "two")],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert again.returncode == 0, again.stderr[-3000:]


def test_bad_input_is_one_line(cache, tmp_path):
    assert_one_line_error(
        run_cli("pretrain", cache, "-o", tmp_path / "r", "--model", "tsfm-x"),
        "unknown model 'tsfm-x'",
    )
    assert_one_line_error(
        run_cli(
            "pretrain",
            cache,
            "-o",
            tmp_path / "r",
            "--patch",
            "64",
            "256",
            "256",
            "--profile",
            "cpu",
        ),
        "more than twice every case",
    )
    assert_one_line_error(run_cli("pretrain", "--resume", tmp_path), "not a resumable")
    assert_one_line_error(
        run_cli("pretrain", tmp_path, "-o", tmp_path / "r"), "not a tumorfm cache"
    )
    old = tmp_path / "old-cache"
    old.mkdir()
    pool = json.loads((cache / "pool.json").read_text())
    (old / "pool.json").write_text(json.dumps({**pool, "cache_format": 0}))
    assert_one_line_error(run_cli("pretrain", old, "-o", tmp_path / "r"), "another tumorfm version")


def test_existing_run_is_never_overwritten(cache, tmp_path):
    run = tmp_path / "run"
    pretrain(cache, run, make_config("cpu", epochs=1, **TINY), progress=False)
    before = (run / "log.jsonl").read_text()
    assert_one_line_error(run_cli("pretrain", cache, "-o", run, *CLI_TINY), "already holds a run")
    other = tmp_path / "other-pool"
    other.mkdir()
    pool = json.loads((cache / "pool.json").read_text())
    pool["classes"] = pool["classes"][::-1]
    (other / "pool.json").write_text(json.dumps(pool))
    assert_one_line_error(run_cli("pretrain", other, "--resume", run), "another pool")
    assert (run / "log.jsonl").read_text() == before


@pytest.fixture(scope="module")
def finished_run(cache, tmp_path_factory):
    """A run of two epochs stopped after the first, to damage copies of."""
    run = tmp_path_factory.mktemp("finished") / "run"
    config = make_config("cpu", epochs=2, **TINY)
    pretrain(cache, run, config, progress=False, stop_after_epoch=0)
    return run


RUN_FILES = ["settings.json", "split.json", "state/state.json", "state/model.safetensors",
             "state/optimizer.safetensors", "state/rng.safetensors"]  # fmt: skip


@pytest.mark.parametrize("name", RUN_FILES)
def test_every_file_of_a_run_truncated_in_turn_gives_one_line_on_resume(
    finished_run, tmp_path, name
):
    """Fault injection (issue 17): a truncated file of the run folder is named, never a
    traceback, and the damaged run is left as it was."""
    run = Path(shutil.copytree(finished_run, tmp_path / "run"))
    damaged = run / name
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    before = damaged.read_bytes()
    result = run_cli("pretrain", "--resume", run)
    assert_one_line_error(result, name.split("/")[-1])
    assert damaged.read_bytes() == before


def test_a_half_written_log_line_is_dropped_on_resume(finished_run, tmp_path):
    """What a kill during the append leaves: the resumed run goes on and its log parses."""
    run = Path(shutil.copytree(finished_run, tmp_path / "run"))
    with open(run / "log.jsonl", "a") as stream:
        stream.write('{"epoch": 1, "step": 6, "train_lo')
    row = pretrain(resume=run, progress=False)
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert row["epoch"] == 1 and [x["epoch"] for x in lines] == [0, 1]


def test_resume_samples_with_the_runs_own_placement(finished_run, tmp_path, monkeypatch):
    """Exact resume: a run continues with the placement its settings record (one from before the
    setting existed: nnU-Net's centred rule, the default), whatever today's option says."""
    import tumorfm.train.trainer as trainer

    seen, batches = [], trainer.PatchBatches

    def recording(*args, **kwargs):
        seen.append(kwargs["placement"])
        return batches(*args, **kwargs)

    monkeypatch.setattr(trainer, "PatchBatches", recording)
    for placement in ("anywhere", None):
        run = Path(shutil.copytree(finished_run, tmp_path / f"run-{placement}"))
        settings = json.loads((run / "settings.json").read_text())
        assert settings["config"]["placement"] == "centred"  # the default, recorded
        if placement is None:
            del settings["config"]["placement"]
        else:
            settings["config"]["placement"] = placement
        (run / "settings.json").write_text(json.dumps(settings))
        pretrain(resume=run, progress=False)
    assert seen == ["anywhere", "anywhere", "centred", "centred"]  # training and validation


def test_a_run_that_failed_before_its_first_epoch_can_be_started_again(cache, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "settings.json").write_text(json.dumps({"config": {}, "pool_digest": "x"}))
    (run / "split.json").write_text("{}")
    row = pretrain(cache, run, make_config("cpu", epochs=1, **TINY), progress=False)
    assert row["epoch"] == 0 and json.loads((run / "settings.json").read_text())["config"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "settings.json").write_text('{"something": "else"}')
    result = run_cli("pretrain", cache, "-o", other, *CLI_TINY)
    assert_one_line_error(result, "holds another settings.json")


def test_the_paper_recipe_on_a_machine_it_cannot_fit_is_refused_before_it_starts(cache, tmp_path):
    """No --profile: tsfm-1.6b at 112x160x192 would grow until the machine swaps (issue 17)."""
    run = tmp_path / "run"
    result = run_cli("pretrain", cache, "-o", run, "--device", "cpu")
    assert_one_line_error(result, "tsfm-1.6b at patch 112x160x192", "GiB", "--profile cpu")
    assert not (run / "settings.json").exists()
