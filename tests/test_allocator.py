"""The predict command's allocator settings (tumorfm.infer.allocator): huge pages are asked for
only before PyTorch is imported (it reads the setting once), and where the kernel gives them."""

import os
import subprocess
import sys

from tumorfm.infer.allocator import huge_pages_on_request, set_allocator


def _thp_after(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    script = f"{code}\nimport os\nprint(os.environ.get('THP_MEM_ALLOC_ENABLE'))"
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def test_huge_pages_are_asked_for_before_torch_only():
    fresh = _thp_after("from tumorfm.infer.allocator import set_allocator; set_allocator()")
    assert fresh == ("1" if huge_pages_on_request() else "None")
    late = "import torch\nfrom tumorfm.infer.allocator import set_allocator; set_allocator()"
    assert _thp_after(late) == "None"  # too late to matter: not claimed


def test_a_users_own_setting_is_kept(monkeypatch):
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "0")
    set_allocator()
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "0"
