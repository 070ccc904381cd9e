"""The README's tumour-synthesis lines, generated from the synthesis benchmarks' results files
(benchmarks.report_synth), and the runs behind them."""

import json
from pathlib import Path

import yaml
from test_benchmark_report import _transfer_seeds

from benchmarks import report


def test_the_diffusion_benchmark_trains_each_half_on_the_scans_the_other_is_measured_on(tmp_path):
    """benchmarks.synth gives a scan at an even place the model of half 1, and at an odd place
    half 0's: the halves must split the cases exactly so, with no scan in both."""
    from benchmarks.synth_diffusion import half_dataset

    source = tmp_path / "Dataset101_X"
    for sub in ("imagesTr", "labelsTr"):
        (source / sub).mkdir(parents=True)
    cases = [f"C_{i:03d}" for i in range(5)]
    for case in cases:
        (source / "imagesTr" / f"{case}_0000.nii.gz").write_text(case)
        (source / "labelsTr" / f"{case}.nii.gz").write_text(case)
    (source / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "t": 1}}))
    halves = [half_dataset(source, h, tmp_path / f"half{h}") for h in (0, 1)]
    assert halves == [cases[0::2], cases[1::2]]
    for h, held in enumerate(halves):
        meta = json.loads((tmp_path / f"half{h}" / "dataset.json").read_text())
        assert meta["numTraining"] == len(held) and meta["labels"] == {"background": 0, "t": 1}
        images = sorted((tmp_path / f"half{h}" / "imagesTr").iterdir())
        assert [p.read_text() for p in images] == held  # links to the originals


def test_pretraining_with_synthesis_shows_learnt_classes_and_the_synthesised_one(tmp_path):
    from benchmarks.pretrain_real_mini import ARMS, SYNTHESIS, synthetic_pool

    pool = yaml.safe_load(synthetic_pool(tmp_path).read_text())
    multi = next(d for d in pool["datasets"] if d["name"] == "phantom_multi_organ")
    assert multi["synthesis"]["tumour"] == "liver_tumour" and Path(multi["path"]).is_absolute()

    def arm(liver_tumour: float, minutes: float) -> dict:
        dice = {"phantom_liver": {"liver": 0.9, "liver_tumour": liver_tumour},
                "brain_mr": {"brain_tumour": 0.0}}  # fmt: skip
        return {"minutes": minutes, "curve": [{"step": 600, "val_dice": dice}]}

    r = {"settings": {"model": "tsfm-small", "patch": [48, 96, 96], "seed": 0,
                      "synthesis": SYNTHESIS},
         "arms": {ARMS[0]: arm(0.0, 18.7), ARMS[1]: arm(0.41, 20.2)},
         "command": "x", "machine": {}}  # fmt: skip
    (tmp_path / "pretrain_real_mini.json").write_text(json.dumps(r))
    section = report.section(tmp_path)
    assert f"| dataset | class | {ARMS[0]} | {ARMS[1]} |" in section
    assert "| phantom_liver | liver_tumour | 0.00 | 0.41 |" in section  # shown though 0 in one
    assert "| phantom_liver | liver | 0.90 | 0.90 |" in section
    assert "brain_tumour" not in section.split("Pretraining with synthetic")[1].split("###")[0]
    assert "| pretraining time | | 18.7 min | 20.2 min |" in section


def test_few_labels_table_keeps_a_half_run_seed_apart_and_names_each_seeds_machine(tmp_path):
    def row(arm: str, dice: float, cpu: str) -> dict:
        return {"arm": arm, "dice": dice, "hd95_median": 20.0, "train_seconds": 600.0,
                "machine": {"cpu": cpu, "avx512_bf16": cpu == "Xeon"}}  # fmt: skip

    per_seed = {"0": [row("real", 0.50, "Xeon"), row("real+synthetic", 0.60, "Xeon")],
                "1": [row("real", 0.70, "EPYC"), row("real+synthetic", 0.76, "EPYC")],
                "2": [row("real", 0.10, "EPYC")]}  # fmt: skip
    r = {"settings": {"model": "tsfm-tiny", "train_cases": 8, "iterations": 400,
                      "patch": [48, 96, 96], "seeds": [0, 1, 2]},
         "rows": [{"arm": "real"}, {"arm": "real+synthetic"}], "per_seed": per_seed,
         "target": 0.05, "complete": False, "command": "x", "machine": {"cpu": "EPYC"}}  # fmt: skip
    (tmp_path / "synth_useful.json").write_text(json.dumps(r))
    section = report.section(tmp_path)
    assert "| real | 0.600 +- 0.141 |" in section  # seeds 0 and 1: seed 2's 0.10 left out
    assert "| real+synthetic | 0.680 +- 0.113 |" in section
    assert "Gain 0.080 +- 0.028 Dice (target +0.05: met; larger than" in section
    assert "Seed 2 so far: real 0.100; its other arm is still to run." in section
    assert "seed 0 on Xeon, AVX-512 bf16; seed 1 on EPYC, no bf16; seed 2 on EPYC" in section
    variant = {**row("real+synthetic p=0.2", 0.55, "EPYC"), "synthesis": {"probability": 0.2}}
    per_seed["0"].append(dict(variant))
    per_seed["1"].append({**variant, "dice": 0.78})
    r["command"] = ".venv/bin/python -m benchmarks.synth_useful --seeds 1 --probability 0.2"
    (tmp_path / "synth_useful.json").write_text(json.dumps(r))
    section = report.section(tmp_path)
    assert "| real+synthetic | 0.680 +- 0.113 |" in section  # the main table is as it was
    assert "| real+synthetic p=0.2 |" not in section
    # each line gives the command of its own seeds, whatever the file's latest run asked
    assert "`.venv/bin/python -m benchmarks.synth_useful --seeds 0 1`." in section
    line = next(x for x in section.splitlines() if x.startswith("Synthetic tumours in 0.2"))
    assert "seed 0 on Xeon, AVX-512 bf16; seed 1 on EPYC, no bf16; seed 2 on EPYC" in section
    assert "(seeds 0, 1; seed 0 on EPYC, no bf16 and Xeon, AVX-512 bf16; seed 1 on EPYC, " in line
    assert "; `.venv/bin/python -m benchmarks.synth_useful --seeds 0 1 --probability 0.2`)" in line
    assert "Dice 0.665 +- 0.163, minus real 0.065 +- 0.021 (target +0.05: met; larger" in line
    assert "a control" not in line and "patches;" not in line  # rows without the count
    control = {**row("real+synthetic p=0.001", 0.64, "EPYC"), "synthesis": {"probability": 1e-3}}
    per_seed["0"].append({**control, "synthetic_patches": {"drawn": 4, "of": 800}})
    per_seed["1"].append({**control, "synthetic_patches": {"drawn": 2, "of": 800}})
    (tmp_path / "synth_useful.json").write_text(json.dumps(r))
    lines = report.section(tmp_path).splitlines()
    line = next(x for x in lines if x.startswith("Synthetic tumours in 0.001"))
    assert "(seeds 0, 1; synthetic tumours in 4 and 2 of each seed's 800 patches; " in line
    assert "minus real 0.040 +- 0.141 (seed by seed +0.140, -0.060; a control, no target:" in line
    assert line.endswith("this is what a training moves when almost nothing changes).")
    assert "those few patches and, for seed 0, in the machine, so" in line  # Xeon vs EPYC
    for seed in ("0", "1"):
        per_seed[seed][-1]["synthetic_patches"]["drawn"] = 8  # 1% of them: no longer a control
    (tmp_path / "synth_useful.json").write_text(json.dumps(r))
    assert "a control" not in report.section(tmp_path)
    per_seed["1"].pop()
    del per_seed["0"]  # seed 1 alone: its rows' CPU, not the file's
    r["machine"] = {"cpu": "Xeon", "avx512_bf16": True}
    (tmp_path / "synth_useful.json").write_text(json.dumps(r))
    line = next(x for x in report.section(tmp_path).splitlines() if x.startswith("Synthetic"))
    assert "(seeds 1; EPYC, no bf16; `" in line


def test_transfer_with_synthesis_pretrains_its_own_pool_and_reports_both_gaps(
    tmp_path, monkeypatch
):
    from argparse import Namespace

    from benchmarks import transfer

    multi = {"name": "phantom_multi_organ", "path": "p", "labels": {2: "liver"}}
    monkeypatch.setattr(transfer, "support_datasets", lambda *args: [dict(multi)])
    args = Namespace(data=tmp_path, tumorfm=None, phantom_cases=8, timeout=1, synthesis=True)
    pool = yaml.safe_load(transfer.pretrain_pool(args, tmp_path).read_text())
    assert pool["datasets"][1]["synthesis"]["tumour"] == "liver_tumour"
    assert pool["name"] == "transfer-pretrain-synthetic"
    args.synthesis = False
    assert "synthesis" not in yaml.safe_load(transfer.pretrain_pool(args, tmp_path).read_text())[
        "datasets"][1]  # fmt: skip

    assert "not measured yet: `.venv-bench/bin/python -m benchmarks.transfer --synthesis" in (
        report.section(tmp_path))  # fmt: skip

    def run(gaps: list[float], liver_tumour: float) -> dict:
        row = {"epochs": 2, "iterations": 100}
        rows_per_seed = {seed: [{**row, "arm": "pretrained", "mean_dice": 0.4 + gap},
                                {**row, "arm": "scratch", "mean_dice": 0.4}]
                         for seed, gap in enumerate(gaps)}  # fmt: skip
        result = _transfer_seeds(rows_per_seed) | {"rows_per_seed": rows_per_seed}
        result["settings"] |= {"budgets": [2], "iterations": 50}
        result["pretrain"]["val_dice"] = {"phantom_liver": {"liver_tumour": liver_tumour}}
        return result | {"machine": {"cpu": "EPYC", "avx512_bf16": False}}

    (tmp_path / "transfer.json").write_text(json.dumps(run([0.02, 0.04, 0.03], 0.0)))
    (tmp_path / "transfer_synthesis.json").write_text(json.dumps(run([0.1, 0.2, 0.15], 0.3)))
    line = next(x for x in report.section(tmp_path).splitlines() if "synthetic tumours: the" in x)
    assert "scratch at 100 iterations 0.150 +- 0.050 Dice (seeds 0, 1, 2;" in line
    assert "without synthesis 0.030 +- 0.010 (" in line
    assert "scored 0.400 +- 0.000 and 0.400 +- 0.000" in line
    assert "liver_tumour on PhantomLiver: with synthesis 0.30, without 0.00." in line
    assert "changed the gap by 0.120 +- 0.040 (larger than its spread over seeds 0, 1, 2)" in line
