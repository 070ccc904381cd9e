"""The README's placement lines (benchmarks/report_placement.py): where the shipped bundle and
the short placement runs expect a tumour in their window (placement.json, patch_position.json)."""

import json

from benchmarks import report, report_placement


def test_placement_summary_and_its_lines(tmp_path):
    from benchmarks.placement import SHIFTS, summary

    def per_shift(dice_when_moved):
        rows = {}
        for shift in SHIFTS:
            moved = any(shift)
            dice = {"a": dice_when_moved if moved else 0.8, "b": 0.6}
            rows[str(list(shift))] = {"dice": dice, "agreement": {"a": 0.5 if moved else 1.0}}
        return rows

    kept, lost = summary(per_shift(0.8)), summary(per_shift(0.4))
    assert kept["dice_unshifted"] == kept["dice_shifted_mean"] == 0.7
    assert lost["dice_unshifted"] == 0.7 and abs(lost["dice_shifted_mean"] - 0.5) < 1e-9
    assert lost["dice_worst_shift"] == 0.5 and lost["agreement_shifted_mean"] == 0.5
    results = tmp_path / "results"
    results.mkdir()
    assert "not measured yet" in "\n".join(report.placement_lines(results))
    from benchmarks.placement import METRICS, paired
    from benchmarks.seeds import over_seeds

    arms = {0: {"centred": lost, "anywhere": kept}, 1: {"centred": lost, "anywhere": lost}}
    settings = {"held_out": ["a", "b"], "shifts": SHIFTS, "epochs": 8, "iterations": 50,
                "seeds": [0, 1]}  # fmt: skip
    placement = {
        "settings": settings,
        "shipped": {"bundle": "models/x", **lost},
        "over_seeds": {
            arm: {m: over_seeds({s: a[arm][m] for s, a in arms.items()}) for m in METRICS}
            for arm in ("centred", "anywhere")
        },
        "anywhere_minus_centred": {m: paired(arms, m) for m in METRICS},
    }
    (results / "placement.json").write_text(json.dumps(placement))
    lines = report.placement_lines(results)
    row = next(line for line in lines if line.startswith("| the shipped bundle (x)"))
    assert row.split(" | ")[1:4] == ["0.700", "0.500", "0.500"]
    row = next(line for line in lines if line.startswith("| tsfm-tiny, `--placement anywhere`"))
    assert row.split(" | ")[1:3] == ["0.700 +- 0.000", "0.600 +- 0.141"]
    said = lines[-3]
    assert "as cropped +0.000 +- 0.000 (**not larger** than its spread)" in said
    assert "moved +0.100 +- 0.141 (**not larger** than its spread)" in said


def test_placement_says_when_the_shipped_bundle_changed_since(tmp_path, monkeypatch):
    from benchmarks.common import sha256

    weights = tmp_path / "models" / "x" / "model.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"the bundle shipped now")
    monkeypatch.setattr(report_placement, "ROOT", tmp_path)
    shipped = {"bundle": "/elsewhere/models/x", "weights_sha256": sha256(weights)}
    assert report_placement._stale_bundle(shipped) == []
    assert report_placement._stale_bundle({"bundle": "/elsewhere/models/x"}) == []  # not recorded
    weights.write_bytes(b"a bundle shipped later")
    assert "Scored an earlier x" in report_placement._stale_bundle(shipped)[-1]


def test_position_lines_show_each_bundle_centred_and_moved(tmp_path):
    from benchmarks.patch_position import OFFSETS, summary

    assert "not measured yet" in "\n".join(report_placement.position_lines(tmp_path))
    centred_only = {str(list(o)): {"a": {"dice": 0.8 if not any(o) else 0.2}} for o in OFFSETS}
    anywhere = {str(list(o)): {"a": {"dice": 0.7}} for o in OFFSETS}
    bundles = [
        {"bundle": "/x/models/shipped", "rows": {"sarcoma_ct/held_out": summary(centred_only)}},
        {
            "bundle": "/w/run/last",
            "label": "tiny, anywhere",
            "rows": {"sarcoma_ct/held_out": summary(anywhere)},
        },  # fmt: skip
    ]
    settings = {"offsets": OFFSETS, "threshold": 0.5, "cases": {"sarcoma_ct": {"train": [1, 2]}}}
    result = {"settings": settings, "bundles": bundles, "machine": {"cpu": "EPYC"}}
    (tmp_path / "patch_position.json").write_text(json.dumps(result))
    lines = report_placement.position_lines(tmp_path)
    assert "| shipped | sarcoma ct, held out | 0.800 | 0.200 | 0.200 | 25% |" in lines
    assert "| tiny, anywhere | sarcoma ct, held out | 0.700 | 0.700 | 0.700 | 100% |" in lines
    assert "first 2 training scans" in "\n".join(lines)


def test_the_position_probe_names_a_run_by_its_settings(tmp_path):
    from benchmarks.patch_position import label

    run = tmp_path / "run"
    (run / "last").mkdir(parents=True)
    assert label(tmp_path / "models" / "tsfm-real-lowres") == "tsfm-real-lowres"
    config = {"model": "tsfm-tiny", "placement": "anywhere", "seed": 2}
    (run / "settings.json").write_text(json.dumps({"config": config}))
    assert label(run / "last") == "tsfm-tiny, `--placement anywhere`, seed 2"
