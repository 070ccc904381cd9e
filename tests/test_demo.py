import json

from conftest import run_cli

from tumorfm.data.cache import cached_cases


def test_demo_runs_end_to_end(tmp_path):
    result = run_cli(
        "demo",
        "-o",
        tmp_path / "demo",
        "--workers",
        "1",
        "--cases",
        "3",
        "--epochs",
        "1",
        "--iterations",
        "2",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "demo" / "demo.json").read_text())
    names = [d["name"] for d in summary["pool"]["datasets"]]
    assert names == ["phantom_liver", "phantom_kidney", "phantom_pancreas", "phantom_multi_organ"]
    for name in names:
        assert len(cached_cases(tmp_path / "demo" / "cache", name)) == 3
    assert (tmp_path / "demo" / "pretrain" / "last" / "model.safetensors").is_file()
    assert summary["pretrain"]["last_epoch"]["step"] == 2
    assert "demo finished" in result.stdout
