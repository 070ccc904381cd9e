"""How the benchmarks' long runs span sessions: a pretraining a session left midway is resumed,
never taken for a finished one nor thrown away."""

from __future__ import annotations

import json
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from benchmarks.common import pretrain_or_resume
from tumorfm.checkpoint import STATE


def _left_midway(out: Path) -> None:
    """What a killed `tumorfm pretrain` leaves after its first epoch: a state, a `last` bundle."""
    (out / STATE).mkdir(parents=True)
    (out / STATE / "state.json").write_text("{}")
    (out / "last").mkdir()
    (out / "last" / "config.json").write_text("{}")
    (out / "log.jsonl").write_text(json.dumps({"epoch": 0, "seconds": 10.0}) + "\n")


def test_a_run_with_a_state_is_resumed_and_one_without_starts_afresh(tmp_path):
    out = tmp_path / "run"
    fresh = ["tumorfm", "pretrain", "cache", "-o", str(out)]
    out.mkdir()
    (out / "stale.txt").write_text("from a run that never saved a state")
    assert pretrain_or_resume(fresh, out) == fresh and not out.exists()
    out.mkdir()
    _left_midway(out)
    assert pretrain_or_resume(fresh, out) == ["tumorfm", "pretrain", "--resume", str(out)]
    assert (out / STATE / "state.json").is_file()  # kept


def test_transfer_resumes_its_pretraining_and_reuses_only_a_finished_one(tmp_path, monkeypatch):
    from benchmarks import transfer

    commands = []

    def fake_run(command, env, log, timeout, what):
        commands.append(command)
        out = tmp_path / "pretrain"
        if "pretrain" in command:  # the epochs the resumed run adds
            lines = [json.dumps({"epoch": e, "seconds": 10.0, "val_dice": {}}) for e in (0, 1)]
            (out / "log.jsonl").write_text("\n".join(lines) + "\n")
            (out / "last" / "model.safetensors").write_bytes(b"weights")
        return {"wall_seconds": 5.0}

    monkeypatch.setattr(transfer, "run", fake_run)
    monkeypatch.setattr(transfer, "pretrain_pool", lambda args, work: work / "pool.yaml")
    (tmp_path / "pool.yaml").write_text("name: p\n")
    args = Namespace(tumorfm="tumorfm", workers=2, config="lowres", patch=[48, 96, 96],
                     model="tsfm-tiny", batch=2, pretrain_epochs=2, iterations=50,
                     device="cpu", timeout=60, fresh=False)  # fmt: skip
    _left_midway(tmp_path / "pretrain")
    result = transfer.pretrain(args, tmp_path)
    assert commands[-1][1:3] == ["pretrain", "--resume"] and result["resumed"]
    assert result["epochs_seconds"] == 20.0 and (tmp_path / "pretrain.json").is_file()
    count = len(commands)
    assert transfer.pretrain(args, tmp_path) == result and len(commands) == count  # reused


def test_nnunet_continues_from_its_latest_checkpoint_unless_told_to_start_over(tmp_path):
    from benchmarks.nnunet_peer import TRAINER_SOURCE, continue_or_restart

    results, command = tmp_path / "fold_0", ["nnUNetv2_train", "101", "3d_fullres", "0"]
    results.mkdir()
    (results / "debug.json").write_text("{}")  # a run killed before its first checkpoint
    assert continue_or_restart(command, results, fresh=False) == command
    assert not results.exists()
    results.mkdir()
    (results / "checkpoint_latest.pth").write_bytes(b"epoch 7")
    assert continue_or_restart(command, results, fresh=False) == [*command, "--c"]
    assert (results / "checkpoint_latest.pth").is_file()
    assert continue_or_restart(command, results, fresh=True) == command  # new plans: start over
    assert not results.exists()
    assert 'os.environ.get("TRAIN_BENCH_SAVE_EVERY"' in TRAINER_SOURCE  # the checkpoints exist


def test_nnunet_training_time_adds_up_its_sessions_counting_a_rerun_epoch_once(tmp_path):
    from benchmarks.nnunet_peer import training_loop

    epochs = [(0, 100.0, [40.0, 60.0]), (1, 30.0, [10.0, 20.0]), (1, 50.0, [20.0, 30.0])]
    (tmp_path / "bench_epochs.jsonl").write_text("".join(
        json.dumps({"epoch": e, "seconds": s, "iteration_seconds": i}) + "\n"
        for e, s, i in epochs
    ))  # fmt: skip
    # epoch 1 was cut off by a session's end and ran again: its second run counts
    expected = {"train_loop_seconds": 150.0, "median_iteration_seconds": 35.0}
    assert training_loop(tmp_path) == expected


def test_nnunet_training_continues_across_sessions_only_with_the_same_settings(
    tmp_path, monkeypatch
):
    from benchmarks import nnunet_peer

    calls = []

    def fake_run(command, env, log, timeout, what):  # nnUNetv2_train: one epoch, then done
        calls.append(command)
        results.mkdir(exist_ok=True)
        epoch = {"epoch": len(calls), "seconds": 10.0, "iteration_seconds": [5.0, 5.0]}
        with open(results / "bench_epochs.jsonl", "a") as stream:
            stream.write(json.dumps(epoch) + "\n")
        (results / "checkpoint_final.pth").write_bytes(b"done")
        return {"wall_seconds": 12.0}

    monkeypatch.setattr(nnunet_peer, "run", fake_run)
    results, record, command = tmp_path / "fold_0", tmp_path / "train.json", ["nnUNetv2_train"]
    results.mkdir()
    (results / "checkpoint_latest.pth").write_bytes(b"epoch 0")  # a former session's, no record
    (results / "bench_epochs.jsonl").write_text(json.dumps(
        {"epoch": 0, "seconds": 30.0, "iteration_seconds": [15.0, 15.0]}) + "\n")  # fmt: skip
    env = {"TRAIN_BENCH_EPOCHS": "2", "PATH": "/bin"}

    def train(env, fresh=False):
        return nnunet_peer.trained_across_sessions(
            command, env, results, record, tmp_path / "log", 60, "train", fresh
        )

    first = train(env)  # continued: both sessions' loops count
    assert calls[-1] == [*command, "--c"] and first["continued"]
    assert first["train_loop_seconds"] == 40.0 and first["wall_seconds"] == 12.0
    assert json.loads(record.read_text())["settings"]["TRAIN_BENCH_SAVE_EVERY"] == "1"
    assert train(env) == first and len(calls) == 1  # finished: kept, not trained again
    other = train({**env, "TRAIN_BENCH_EPOCHS": "4"})  # other settings: starts over
    assert calls[-1] == command and not other["continued"] and other["train_loop_seconds"] == 10.0
    assert train({**env, "TRAIN_BENCH_EPOCHS": "4"}, fresh=True)["continued"] is False


def test_transfer_records_what_an_iteration_costs_each_network(tmp_path):
    from benchmarks.report_accuracy import _network_costs
    from benchmarks.transfer import network_costs

    args = Namespace(model="tsfm-tiny", patch=[48, 96, 96], batch=2)
    assert network_costs(args, tmp_path, {})["nnunet"] is None  # not planned yet: not guessed
    trained = {"params": 1_209_560, "forward_backward_gmacs": 411.2, "features_per_stage": [32, 48]}
    costs = network_costs(args, tmp_path, {0: {"network": {**trained, "strides": []}}})
    ours = costs["tumorfm"]
    assert costs["nnunet"] == trained and ours["features_per_stage"][0] == 8
    assert 1.2e6 < ours["params"] < 1.4e6 and 20 < ours["forward_backward_gmacs"] < 100
    r = {"networks": costs, "settings": {"model": "tsfm-tiny", "batch": 2, "patch": [48, 96, 96]}}
    (line,) = [x for x in _network_costs(r) if x]
    ratio = 411.2 / ours["forward_backward_gmacs"]
    assert f"{ratio:.1f}x" in line and f"spends {10 / ratio:.1f}% of its multiply-adds" in line


def test_accuracy_keeps_the_seeds_a_former_session_measured_and_runs_only_the_rest(
    tmp_path, monkeypatch
):
    from benchmarks import accuracy

    for folder in ("Dataset101_SarcomaCT", "Task102_BrainTumour"):
        (tmp_path / "data" / folder / "labelsTr").mkdir(parents=True)
        (tmp_path / "data" / folder / "dataset.json").write_text("{}")
        for case in ("c1", "c2", "c3", "c4", "c5"):
            (tmp_path / "data" / folder / "labelsTr" / f"{case}.nii.gz").write_bytes(b"")
    ran, stop_at = [], {"seed": 1, "model": "nnunet"}

    def arm(model):
        def fake(args, work, name, *rest):
            seed = rest[-1]
            if {"seed": seed, "model": model} == stop_at:
                raise SystemExit("the session ended")
            ran.append((name, model, seed))
            run_folder = work / "runs" / f"seed{seed}" / f"tumorfm-{name}"
            (run_folder / "last").mkdir(parents=True, exist_ok=True)
            timing = {"train": {"seconds": 1.0}, "predict": {"seconds": 1.0}}
            scores = {"dice": 0.5 + seed / 10, "hd95": 9.0, "nsd": 0.4, "parameters": 1e6}
            return {"model": model, **timing, **scores}

        return fake

    monkeypatch.setattr(accuracy, "tumorfm_arm", arm("tumorfm"))
    monkeypatch.setattr(accuracy, "nnunet_arm", arm("nnunet"))
    monkeypatch.setattr(accuracy, "swinunetr_arm", arm("swinunetr"))
    monkeypatch.setattr(accuracy, "pretrain", lambda args, work, splits: {"iterations": 8})
    monkeypatch.setattr(accuracy, "require_nnunet", lambda: None)
    monkeypatch.setattr(accuracy, "version", lambda name: "x")
    out, work = tmp_path / "accuracy.json", tmp_path / "work"
    argv = ["accuracy", "--data", str(tmp_path / "data"), "--tumorfm", __file__, "--out", str(out),
            "--work", str(work), "--seeds", "0", "1"]  # fmt: skip
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit, match="the session ended"):
        accuracy.main()
    first = json.loads(out.read_text())
    assert first["settings"]["seeds"] == [0, 1] and not first["complete"]
    assert len(ran) == 7  # seed 0: 2 datasets x 3 models; seed 1: tumorfm on sarcoma, then stop
    ran.clear()
    stop_at = {}
    (work / "runs" / "seed1" / "tumorfm-sarcoma_ct" / "last").rmdir()  # its run folder is lost
    accuracy.main()  # and the peers do not need it: tumorfm's row is kept, not trained again
    result = json.loads(out.read_text())
    assert ran == [("sarcoma_ct", "nnunet", 1), ("sarcoma_ct", "swinunetr", 1),
                   ("brain_mr", "tumorfm", 1), ("brain_mr", "nnunet", 1),
                   ("brain_mr", "swinunetr", 1)]  # fmt: skip
    assert result["complete"] and len(result["rows_per_seed"]) == 12
    assert len(result["sessions"]) == 2
    tumorfm_ct = next(r for r in result["rows"] if r["dataset"] == "sarcoma_ct"
                      and r["model"] == "tumorfm")  # fmt: skip
    assert tumorfm_ct["dice"]["per_seed"] == {"0": 0.5, "1": 0.6}
    monkeypatch.setattr("sys.argv", [*argv, "--batch", "4"])  # other settings: nothing kept
    accuracy.main()
    assert len(ran) == 5 + 12


def test_accuracy_rows_from_before_machines_were_recorded_keep_the_machine_of_their_file(tmp_path):
    from benchmarks.accuracy_cases import SAME_RUN, recorded

    settings = {key: 1 for key in SAME_RUN}
    bf16 = {"cpu": "AMD EPYC", "avx512_bf16": True, "amx_bf16": False}
    rows = [{"arm": "tumorfm", "seed": 0}, {"arm": "nnunet", "seed": 0, "machine": {"cpu": "X"}}]
    old = {"settings": settings, "machine": {**bf16, "memory_gb": 23}, "rows_per_seed": rows}
    (tmp_path / "accuracy.json").write_text(json.dumps(old))
    kept = recorded(tmp_path / "accuracy.json", Namespace(**settings))["rows_per_seed"]
    assert kept[0]["machine"] == bf16 and kept[1]["machine"] == {"cpu": "X"}
    other = Namespace(**{**settings, "batch": 4})  # another run's rows: none kept
    assert recorded(tmp_path / "accuracy.json", other) == {}


def test_synth_useful_measures_another_probability_beside_the_recorded_arms(tmp_path, monkeypatch):
    from benchmarks import synth_useful

    ran = []

    def fake_run(args, arm, spec, seed):
        ran.append((arm, seed, spec and spec["probability"]))
        return {"arm": arm, "dice": 0.5 + seed / 10 + (0.01 if spec else 0.0), "synthesis": spec,
                "hd95_median": 9.0, "train_seconds": 1.0}  # fmt: skip

    monkeypatch.setattr(synth_useful, "one_run", fake_run)
    monkeypatch.setattr(synth_useful, "provenance", lambda *a: {"command": "x"})
    out = tmp_path / "synth_useful.json"
    argv = ["synth_useful", "--out", str(out), "--work", str(tmp_path / "w"), "--seeds", "0", "1"]
    monkeypatch.setattr("sys.argv", argv)
    synth_useful.main()
    assert ran == [("real", 0, None), ("real+synthetic", 0, 0.5), ("real", 1, None),
                   ("real+synthetic", 1, 0.5)]  # fmt: skip
    ran.clear()
    monkeypatch.setattr("sys.argv", [*argv, "--probability", "0.2"])
    synth_useful.main()
    assert ran == [("real+synthetic p=0.2", 0, 0.2), ("real+synthetic p=0.2", 1, 0.2)]
    result = json.loads(out.read_text())
    assert [r["arm"] for r in result["per_seed"]["0"]] == [
        "real", "real+synthetic", "real+synthetic p=0.2"]  # fmt: skip
    assert set(result["gains"]) == {"real+synthetic", "real+synthetic p=0.2"}
    assert result["complete"] and abs(result["gain"]["mean"] - 0.01) < 1e-9
    # seeds 1 and 2 only: seed 0's recorded rows stay in the file from its first write on
    other = ["synth_useful", "--out", str(out), "--work", str(tmp_path / "w"), "--seeds", "1", "2"]
    monkeypatch.setattr("sys.argv", [*other, "--probability", "0.001"])
    seen = []  # the seeds in the file as each arm starts

    def watched(*a):
        seen.append(list(json.loads(out.read_text())["per_seed"]))
        return fake_run(*a)

    monkeypatch.setattr(synth_useful, "one_run", watched)
    synth_useful.main()
    assert seen == [["0", "1"], ["0", "1"], ["0", "1", "2"]]  # seed 1's p=0.001; seed 2's two
    result = json.loads(out.read_text())
    assert list(result["per_seed"]) == ["0", "1", "2"]
    assert [r["arm"] for r in result["per_seed"]["0"]] == [
        "real", "real+synthetic", "real+synthetic p=0.2"]  # fmt: skip
    assert result["gains"]["real+synthetic"]["n"] == 2  # seeds 0 and 1: seed 2 has no such arm
    assert result["gains"]["real+synthetic p=0.001"]["n"] == 2
    # every synthetic row counts the patches its run drew for synthesis, of 8 x 50 x 2
    drawn = {r["arm"]: r["synthetic_patches"] for r in result["per_seed"]["1"] if r["synthesis"]}
    assert drawn["real+synthetic p=0.001"]["of"] == 800 and drawn["real+synthetic"]["of"] == 800
    assert drawn["real+synthetic p=0.001"]["drawn"] < 8 < 340 < drawn["real+synthetic"]["drawn"]
    assert drawn["real+synthetic p=0.2"]["drawn"] < 240
    monkeypatch.setattr("sys.argv", [*argv, "--probability", "0"])
    with pytest.raises(SystemExit):
        synth_useful.main()


def test_a_measured_run_makes_its_log_folder_a_new_seed_has_not_made_yet(tmp_path):
    import sys

    from benchmarks.measure import run

    log = tmp_path / "runs" / "seed1" / "tumorfm-sarcoma_ct.log"  # the accuracy arm's first log
    result = run([sys.executable, "-c", "print('trained')"], {}, log, 60, "a run", 0.1)
    assert log.read_text().strip() == "trained" and "wall_seconds" in result


def test_swinunetr_training_cut_midway_continues_exactly(tmp_path, monkeypatch):
    """A session that ends during SwinUNETR's hour-long training: the next continues from the
    last saved state and ends with the weights of an uninterrupted run."""
    from safetensors.torch import load_file

    from benchmarks import swinunetr
    from tumorfm.data.cache import cached_cases
    from tumorfm.data.phantom import DEFAULT_SITES, write_phantom_pool
    from tumorfm.data.pool import load_pool
    from tumorfm.data.preprocess import preprocess_pool
    from tumorfm.train.loop import Stepper
    from tumorfm.workflows.demo import write_pool_file

    (folder,) = write_phantom_pool(tmp_path / "raw", 3, (20, 40, 40), sites=DEFAULT_SITES[:1])
    preprocess_pool(load_pool(write_pool_file([folder], tmp_path / "pool.yaml")),
                    tmp_path / "cache", progress=False)  # fmt: skip
    ids = [c.case_id for c in cached_cases(tmp_path / "cache", "phantom_liver")]
    (tmp_path / "split.json").write_text(json.dumps({"train": ids[:2], "val": ids[2:]}))
    monkeypatch.setattr(swinunetr, "SAVE_EVERY", 2)
    # The mechanism (state, optimiser, schedule, the loader's position) on a small network:
    # SwinUNETR itself is not bit-reproducible on a CPU (two fresh runs were 4e-6 apart after
    # two steps), so its weights could not be compared exactly.
    torch.manual_seed(0)
    monkeypatch.setattr(swinunetr, "network", lambda i, o, _: torch.nn.Conv3d(i, o, 3, padding=1))

    def args(out, seed=0):
        return Namespace(cache=tmp_path / "cache", split=tmp_path / "split.json", out=out,
                         iterations=5, patch=[16, 32, 32], batch=1, feature_size=12, lr=1e-3,
                         workers=0, seed=seed, command="train")  # fmt: skip

    swinunetr.train(args(tmp_path / "whole"))
    step = Stepper.step
    calls = []

    def cut_after_three(self, batch):
        calls.append(1)
        if len(calls) > 3:  # the session ends during step 4: the state of step 2 is saved
            raise KeyboardInterrupt
        return step(self, batch)

    monkeypatch.setattr(Stepper, "step", cut_after_three)
    with pytest.raises(KeyboardInterrupt):
        swinunetr.train(args(tmp_path / "cut"))
    assert json.loads((tmp_path / "cut" / STATE / "state.json").read_text())["step"] == 2
    monkeypatch.setattr(Stepper, "step", step)
    swinunetr.train(args(tmp_path / "cut"))
    whole, cut = (load_file(str(tmp_path / r / "model.safetensors")) for r in ("whole", "cut"))
    assert all(torch.equal(whole[k], cut[k]) for k in whole)
    settings = json.loads((tmp_path / "cut" / "settings.json").read_text())
    assert settings["continued"] and not (tmp_path / "cut" / STATE).exists()
    assert not json.loads((tmp_path / "whole" / "settings.json").read_text())["continued"]
    swinunetr.train(args(tmp_path / "cut", seed=1))  # other settings: a fresh run
    assert not json.loads((tmp_path / "cut" / "settings.json").read_text())["continued"]
