"""How the `predict` command's process allocates memory: a sliding window allocates and frees
hundreds of MB of activations per window (each full-resolution one 24-48 MB for a 48x128x128
patch), and glibc's defaults turn that into either a fragmented heap (memory) or fresh pages
faulted in per window (time).

Measured once on the predict benchmark's lung CT (a one-off profile of peak memory and the
windows' time on 2 cores, not a benchmark row; benchmarks/predict.py measures the whole
command): glibc's defaults, 1,207 MB and 3.8 s; blocks of 16 MB or more mapped on their own,
1,110 MB and 4.7 s; every block of 2 MB or more mapped on its own and backed by transparent huge
pages (PyTorch's THP_MEM_ALLOC_ENABLE: 2 MB pages, so a window faults in 512x fewer pages),
1,070 MB and 4.4 s. Process-wide, so the command sets it, not this library's
functions, which run inside other programs; and only before PyTorch is imported, which reads
the setting once.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
LARGE_BLOCK = 16 * 2**20  # without huge pages: a full-resolution activation and up
HUGE_PAGE_BLOCK = 2 * 2**20  # with them: one huge page and up
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def huge_pages_on_request() -> bool:
    """Whether the kernel backs memory with transparent huge pages when asked (madvise)."""
    try:
        mode = THP_MODE.read_text()
    except OSError:
        return False
    return "[always]" in mode or "[madvise]" in mode


def set_allocator() -> None:
    """Map large blocks on their own (returned to the system when freed: no fragmented heap),
    on huge pages where PyTorch is not yet imported and the kernel allows them. A no-op where
    the C library is not glibc. A THP_MEM_ALLOC_ENABLE the user set is kept."""
    huge = "torch" not in sys.modules and huge_pages_on_request()
    if huge:
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    huge = huge and os.environ["THP_MEM_ALLOC_ENABLE"] == "1"
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, HUGE_PAGE_BLOCK if huge else LARGE_BLOCK)
    except (OSError, AttributeError):
        pass
