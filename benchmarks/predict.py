"""Prediction, side by side: `tumorfm predict` vs `nnUNetv2_predict`, wall time and peak memory.

Two CT scans: ../shared/data/cases/lung1_image.nrrd (512x512x48, 0.57x0.57x5 mm) and a synthetic
512x512x100 abdomen (tumorfm's phantom generator, site PhantomLiver at 0.78x0.78x2.5 mm), both
written as NIfTI `case_0000.nii.gz` (outside the timed region) and given to both tools. Both get
the same plan: nnU-Net's own fingerprint and ExperimentPlanner on the two scans (a raw dataset
with their labels), its 3d_fullres target spacing and patch overridden by `--spacing` (default
4 x 2 x 2 mm, z y x) and `--patch` (48x128x128: 8 and 18 windows); tumorfm's plan copies that
spacing, patch and CT normalisation (clip to nnU-Net's foreground 0.5/99.5 percentiles, z-score
with its mean and std). Weights are random: what the networks predict does not matter here,
only time and memory.

  nnU-Net  `nnUNetv2_predict -i IN -o OUT -d 990 -p nnUNetPlans_bench -c 3d_fullres -f 0
           -device cpu -npp 0 -nps 0` (+ `--disable_tta` without mirroring): fp32 (nnU-Net has no
           autocast on the CPU), one window per forward. The network is benchmarks/nnunet_peer.py's
           PlainConvUNet re-planned for the patch, features capped for tsfm-small's parameter
           count, written with nnU-Net's own build_network_architecture into a fake
           nnUNet_results/.../fold_0/checkpoint_final.pth. `-npp 0 -nps 0` is nnU-Net's
           sequential path: one process, like tumorfm (its default, 3 and 3, adds a spawned
           preprocessing worker, a Manager and 3 export workers, each importing torch, which only
           cost start-up and memory for one scan on 2 cores; one extra row measures it).
  tumorfm  `python -m tumorfm predict -i IN -o OUT -m BUNDLE` (+ `--no-mirror`, overlap kept at
           0.5) with tsfm-small in a bundle written by save_bundle, at its default precision
           (auto: bf16 on a CPU with AVX-512 bf16) and with `--precision fp32`; also at the
           default precision with each `--windows-trial` number of windows per network call,
           and with `--fast` (no mirroring, overlap 0.25, still Gaussian-blended).

Both run in this environment (same torch), with OMP_NUM_THREADS and nnUNet_def_n_proc set to
`--threads` (nnU-Net's CPU path sets torch's threads to the CPU count anyway). Each command is
timed from process start to exit (start-up, reading, preprocessing, sliding window, resampling
back and writing); peak memory is the larger of the main process's VmHWM (its exact peak RSS)
and the process tree's summed PSS, polled every 2 s (workers count, shared pages once; summed RSS
overcounts the short-lived forks nnU-Net makes to list its input folder). One run per row, each
after waiting for idle CPUs; a run during which other processes took more than 10% of the CPUs is
repeated once (`--retries`), and flagged if it stays disturbed.
The ratios tumorfm/nnU-Net are compared with the targets at the same mirroring setting: time
<= 0.25, peak memory <= 0.5.

Run from the repository root in the benchmark environment (~32 min with the defaults):
    .venv-bench/bin/python -m benchmarks.predict            # -> benchmarks/results/predict.json
    .venv-bench/bin/python -m benchmarks.predict --quick    # smoke test: crops, no mirroring
    .venv-bench/bin/python -m benchmarks.predict --redo-disturbed  # rows other work disturbed
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .common import BIN, DATA, RESULTS, WORK, add_timeout, parser_for, require_nnunet
from .measure import WAITED, add_disturbance_options, git_state, machine, run, undisturbed
from .nnunet_peer import PLANS
from .predict_setup import (
    DATASET_ID,
    TSFM,
    nnunet_env,
    nnunet_model,
    prepare_inputs,
    tumorfm_bundle,
)

TIME_TARGET, MEMORY_TARGET = 0.25, 0.5


def geometry_check(input_file: Path, output_file: Path) -> dict:
    """Does the label map sit on the input's grid (size, spacing, origin, direction)?"""
    if not output_file.is_file():
        return {"ok": False, "problem": f"{output_file} not written"}
    a, b = (sitk.ReadImage(str(f)) for f in (input_file, output_file))
    checks = {
        "size": a.GetSize() == b.GetSize(),
        "spacing": np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-4),
        "origin": np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3),
        "direction": np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-4),
    }
    return {"ok": all(checks.values()), **{k: bool(v) for k, v in checks.items()}}


def predict_row(args, work, bundle, scan: str, folder: Path, tool: str, mirror: bool) -> dict:
    name = f"{scan}_{'mirror' if mirror else 'nomirror'}_{tool}"
    out = work / "out" / name
    if tool.startswith("nnunet"):
        command = [str(BIN / "nnUNetv2_predict"), "-i", str(folder), "-o", str(out)]
        command += ["-d", str(DATASET_ID), "-p", PLANS, "-c", "3d_fullres", "-f", "0"]
        command += ["-device", "cpu", "--disable_progress_bar"]
        command += [] if tool == "nnunet_default_workers" else ["-npp", "0", "-nps", "0"]
        command += [] if mirror else ["--disable_tta"]
        env = nnunet_env(work, args.threads)
    else:
        command = [str(args.tumorfm_python), "-m", "tumorfm", "predict", "-i", str(folder)]
        command += ["-o", str(out), "-m", str(bundle)]
        command += [] if mirror else ["--no-mirror"]
        command += ["--precision", "fp32"] if tool == "tumorfm_fp32" else []
        command += ["--fast"] if tool == "tumorfm_fast" else []
        if tool.startswith("tumorfm_windows"):  # another number of windows per network call
            command += ["--windows", tool.removeprefix("tumorfm_windows")]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}

    def attempt(idle: float | None) -> dict:
        shutil.rmtree(out, ignore_errors=True)
        # PSS every 2 s instead of 5: these runs are shorter than training
        return run(command, env, work / f"{name}.log", args.timeout, name, pss_interval=2.0)

    kept = ("wall_seconds", "other_processes_cpu_share")
    r, idle, discarded = undisturbed(attempt, args, lambda r: {k: r[k] for k in kept})
    r["discarded_attempts"] = discarded
    r["peak_mb"] = max(r["peak_tree_pss_mb"], r["peak_main_process_rss_mb"])
    r["cpu_busy_share_before_start"] = idle
    r["disturbed"] = r["other_processes_cpu_share"] > args.max_disturbance
    r["command"] = " ".join(command)
    r["geometry"] = geometry_check(folder / "case_0000.nii.gz", out / "case.nii.gz")
    if tool.startswith("tumorfm"):
        report = json.loads((out / "predict.json").read_text())
        r["precision"] = report["settings"]["precision"]
        r["windows_per_call"] = report["settings"]["windows_per_batch"]
        r["overlap"] = report["settings"]["overlap"]
        r["tumorfm_stage_seconds"] = report["cases"]["case"]["seconds"]
    else:
        r["precision"] = "fp32"
    print(
        f"  {r['wall_seconds']:.1f} s, peak {r['peak_mb']:.0f} MB, other processes took "
        f"{r['other_processes_cpu_share']:.0%} of the CPUs, output geometry "
        f"{'matches' if r['geometry']['ok'] else 'DIFFERS'}",
        flush=True,
    )
    return {"input": scan, "mirror": mirror, "tool": tool, **r}


def add_ratios(rows: list[dict]) -> None:
    """Each tumorfm row's time and memory over those of nnU-Net's sequential row of the same
    scan and mirroring."""
    base = {(r["input"], r["mirror"]): r for r in rows if r["tool"] == "nnunet"}
    for r in rows:
        if r["tool"].startswith("tumorfm"):
            n = base[(r["input"], r["mirror"])]
            q = {"time": round(r["wall_seconds"] / n["wall_seconds"], 3)}
            q["memory"] = round(r["peak_mb"] / n["peak_mb"], 3)
            q["time_target_met"] = q["time"] <= TIME_TARGET
            q["memory_target_met"] = q["memory"] <= MEMORY_TARGET
            r["ratio_vs_nnunet"] = q


def targets_met(rows: list[dict]) -> dict:
    default = [r["ratio_vs_nnunet"] for r in rows if r["tool"] == "tumorfm"]
    return {
        "time": all(q["time_target_met"] for q in default),
        "memory": all(q["memory_target_met"] for q in default),
    }


def redo_disturbed(args, work: Path, out_json: Path) -> None:
    """Measure again the rows of `out_json` that other work disturbed (same bundle, inputs and
    commands), recompute the ratios and rewrite the file, saying which rows were redone."""
    result = json.loads(out_json.read_text())
    redo = [i for i, r in enumerate(result["rows"]) if r["disturbed"]]
    if not redo:
        print(f"{out_json}: no disturbed rows")
        return
    bundle = work / "bundle"
    for i in redo:
        r = result["rows"][i]
        folder = Path(result["inputs"][r["input"]]["folder"])
        result["rows"][i] = predict_row(
            args, work, bundle, r["input"], folder, r["tool"], r["mirror"]
        )
        result["rows"][i]["redone"] = {"at": time.strftime("%Y-%m-%d %H:%M"), **git_state()}
    add_ratios(result["rows"])
    result["targets_met_at_default_precision"] = targets_met(result["rows"])
    out_json.write_text(json.dumps(result, indent=2))
    print_table(result)
    print(f"{len(redo)} disturbed row(s) measured again; results written to {out_json}")


FAST_SETTINGS = {"default (8 mirrorings)": [], "--no-mirror": ["--no-mirror"], "--fast": ["--fast"]}


def fast_accuracy(args, work: Path) -> dict:
    """What --fast costs in accuracy: the shipped bundle on the shipped split's held-out sarcoma
    CTs, predicted with mirroring, without, and with --fast, each scored by `tumorfm evaluate`
    (Dice mean and spread over the cases; the benchmark's own weights are random)."""
    from tumorfm.model.bundle import list_shipped

    from .scoring import case_scores, evaluated, predicted, stats
    from .shipped_model import fixed_split, held_out

    bundle = "tsfm-real-lowres"
    if bundle not in list_shipped():
        return {"skipped": f"no shipped bundle {bundle}"}
    images, labels = held_out(args.data, fixed_split(args.data), "sarcoma_ct", work / "held-out")
    (labels / "dataset.json").write_text(
        json.dumps({"labels": {"background": 0, "soft_tissue_sarcoma": 1}})
    )
    rows = {}
    for name, setting in FAST_SETTINGS.items():
        out = work / "out" / f"held_out_{name.split()[0].strip('-')}"
        how = {
            "tumorfm": [str(args.tumorfm_python), "-m", "tumorfm"],
            "env": {**os.environ, "OMP_NUM_THREADS": str(args.threads)},
            "timeout": args.timeout,
        }
        flags = ["--plan", "sarcoma_ct", *setting]
        log = work / f"{out.name}.log"
        timing = predicted(bundle, images, out, log, flags, what=name, pss_interval=2.0, **how)
        metrics = evaluated(
            out, labels, work / f"{out.name}_evaluate.log", what=f"{name} scored", **how
        )
        dice = [c["dice"] for c in case_scores(metrics, "soft_tissue_sarcoma").values()]
        rows[name] = {
            "dice": stats(dice),
            "cases": len(dice),
            "wall_seconds": timing["wall_seconds"],
            "disturbed": timing["other_processes_cpu_share"] > args.max_disturbance,
        }
        print(f"  {name}: Dice {rows[name]['dice']['mean']:.3f}, {timing['wall_seconds']:.0f} s")
    return {"bundle": bundle, "scans": "held-out sarcoma CTs of the shipped split", "rows": rows}


def print_table(result: dict) -> None:
    s, (ours, theirs) = result["settings"], result["settings"]["networks"].values()
    print(
        f"\ntarget spacing {s['target_spacing_zyx_mm']} mm (z, y, x), patch {s['patch_zyx']}, "
        f"overlap 0.5, {s['threads']} threads; {TSFM} {ours['params']:,} params, "
        f"{ours['forward_gmacs_per_window']} GMAC/window; nnU-Net PlainConvUNet "
        f"{theirs['params']:,} params, {theirs['forward_gmacs_per_window']} GMAC/window"
    )
    print(
        f"{'input':<11}{'mirror':<8}{'tool':<24}{'wall s':>8}{'peak MB':>9}{'time x':>8}"
        f"{'mem x':>7}{'others CPU':>12}  geometry"
    )
    names = {"nnunet": "nnU-Net (fp32)", "nnunet_default_workers": "nnU-Net (-npp/-nps 3)"}
    for r in result["rows"]:
        q = r.get("ratio_vs_nnunet") or {"time": "", "memory": ""}
        fast = " --fast" if r["tool"] == "tumorfm_fast" else ""
        tool = (
            names.get(r["tool"]) or f"tumorfm{fast} ({r['precision']}, {r['windows_per_call']} w)"
        )
        print(
            f"{r['input']:<11}{'on' if r['mirror'] else 'off':<8}{tool:<24}"
            f"{r['wall_seconds']:>8.1f}{r['peak_mb']:>9.0f}{q['time']:>8}{q['memory']:>7}"
            f"{r['other_processes_cpu_share']:>12.0%}  {'ok' if r['geometry']['ok'] else 'DIFFERS'}"
            f"{'  DISTURBED' if r['disturbed'] else ''}"
        )
    for r in result["rows"]:
        if r["tool"] == "tumorfm":
            q = r["ratio_vs_nnunet"]
            print(
                f"{r['input']}, mirroring {'on' if r['mirror'] else 'off'}: tumorfm "
                f"({r['precision']}) / nnU-Net: time {q['time']:.2f}x (target <= {TIME_TARGET}: "
                f"{'met' if q['time_target_met'] else 'MISSED'}), peak memory {q['memory']:.2f}x "
                f"(target <= {MEMORY_TARGET}: {'met' if q['memory_target_met'] else 'MISSED'})"
            )


def main() -> None:
    parser = parser_for(__spec__.name, __doc__)
    add = parser.add_argument
    add("--spacing", type=float, nargs=3, default=[4.0, 2.0, 2.0], help="target, mm (z y x)")
    add("--patch", type=int, nargs=3, default=[48, 128, 128], help="z y x")
    add("--threads", type=int, default=os.cpu_count())
    add("--windows-trial", type=int, nargs="*", default=[1], help="windows per call, also timed")
    add("--quick", action="store_true", help="smoke test: crops, no mirroring")
    add_timeout(parser, 3600)
    add_disturbance_options(parser, "prediction")
    add("--tumorfm-python", type=Path, default=Path(sys.executable))
    add("--work", type=Path, default=WORK / "predict")
    add("--out", type=Path, default=None, help="default: benchmarks/results/predict.json")
    add("--redo-disturbed", action="store_true", help="measure again the disturbed rows of --out")
    add("--fast-accuracy", action="store_true", help="only the accuracy of --fast, into --out")
    add("--data", type=Path, default=DATA, help="the real data (for --fast's accuracy)")
    args = parser.parse_args()
    require_nnunet("nnUNetv2_predict")
    check = [str(args.tumorfm_python), "-c", "import monai, tumorfm"]
    if subprocess.run(check, capture_output=True).returncode != 0:
        sys.exit(f"{args.tumorfm_python} cannot import monai and tumorfm (pip install monai)")
    work = args.work.resolve()
    results = RESULTS / "predict.json"
    out_json = args.out or (work / "predict_quick.json" if args.quick else results)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.update({k: v for k, v in nnunet_env(work, args.threads).items() if "nnUNet" in k})
    if args.redo_disturbed:
        return redo_disturbed(args, work, out_json)
    if args.fast_accuracy:
        result = json.loads(out_json.read_text())
        result["fast_accuracy"] = fast_accuracy(args, work)
        out_json.write_text(json.dumps(result, indent=2))
        return print(f"the accuracy of --fast written to {out_json}")
    started, load_before = time.perf_counter(), os.getloadavg()

    inputs = prepare_inputs(work, args.quick)
    import torch

    from tumorfm.infer.predictor import PredictOptions
    from tumorfm.model import create_model

    default_windows = PredictOptions().windows_per_batch

    with torch.device("meta"):
        target = sum(p.numel() for p in create_model(TSFM, 1, 1, tuple(args.patch)).parameters())
    plans, theirs = nnunet_model(args, work, target)
    bundle, ours = tumorfm_bundle(args, work, plans)
    rows = []
    for scan, info in inputs.items():
        for mirror in (False,) if args.quick else (False, True):
            tools = ["nnunet", "tumorfm", "tumorfm_fp32"]
            tools += [f"tumorfm_windows{n}" for n in args.windows_trial if n != default_windows]
            tools += [] if mirror else ["tumorfm_fast"]
            if scan == "lung1" and not mirror and not args.quick:
                tools.append("nnunet_default_workers")
            for tool in tools:
                rows.append(
                    predict_row(args, work, bundle, scan, Path(info["folder"]), tool, mirror)
                )
    add_ratios(rows)
    result = {
        "benchmark": "predict",
        "quick": args.quick,
        "machine": machine(load_before),
        "versions": {
            **{n: version(n) for n in ("torch", "monai", "nnunetv2", "tumorfm", "SimpleITK")},
            "dynamic_network_architectures": version("dynamic_network_architectures"),
            **git_state(),
        },
        "settings": {
            "target_spacing_zyx_mm": args.spacing,
            "patch_zyx": args.patch,
            "overlap": 0.5,
            "tumorfm_windows_per_call": default_windows,
            "tumorfm_windows_trial": args.windows_trial,
            "threads": args.threads,
            "nnunet_workers": "-npp 0 -nps 0 (sequential, one process); the extra row "
            "nnunet_default_workers uses nnU-Net's default -npp 3 -nps 3",
            "ct_normalisation": plans["foreground_intensity_properties_per_channel"]["0"],
            "networks": {"tumorfm": ours, "nnunet": theirs},
            "params_ratio_nnunet_vs_tumorfm": round(theirs["params"] / ours["params"], 3),
            "peak_mb": "max(VmHWM of the main process: its exact peak RSS; peak PSS summed over "
            "the process tree, polled every 2 s: counts worker processes, and shared pages once)",
            "why_not_summed_rss": "nnU-Net 2.8.1 forks a Pool(12) to list the input folder "
            "(utilities/utils.py create_lists_from_splitted_dataset_folder), even with -npp 0 "
            "-nps 0; each short-lived fork reports the parent's ~0.7 GB of shared pages as its "
            "own RSS, so summed RSS (peak_tree_rss_mb, kept for reference) overcounts",
            "wall_seconds": "process start to exit, as seen by this script",
        },
        "inputs": inputs,
        "rows": rows,
        "targets_tumorfm_vs_nnunet": {"time": TIME_TARGET, "memory": MEMORY_TARGET},
        "targets_met_at_default_precision": targets_met(rows),
        "all_outputs_on_input_geometry": all(r["geometry"]["ok"] for r in rows),
        "fast_accuracy": fast_accuracy(args, work) if not args.quick else None,
        "total_seconds": round(time.perf_counter() - started, 1),
        "waited_for_other_work_seconds": round(WAITED[0], 1),
    }
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=2))
    print_table(result)
    print(
        f"total {result['total_seconds'] / 60:.1f} min ({WAITED[0] / 60:.1f} min waiting for "
        f"idle CPUs); results written to {out_json}"
    )


if __name__ == "__main__":
    main()
