"""Measuring a command as a user runs it: wall time, CPU time, peak memory of its process tree,
how busy other processes kept the machine, and which machine and commit a result comes from.

Shared by every side-by-side benchmark, so the peer and tumorfm are measured the same way: one run
at a time, again when other processes disturbed it (`undisturbed`), and what its results file
records about where it ran (`provenance`).
"""

from __future__ import annotations

import math
import os
import platform
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .common import ROOT, command_line


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            tree.setdefault(parent, []).append(int(entry))
    return tree


def _kb(path: str, field: str) -> int:
    try:
        text = Path(path).read_text()
    except OSError:
        return 0
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) if match else 0


class MemoryPoll(threading.Thread):
    """Peak memory of a process and all its descendants: RSS summed over them every `interval` s
    (the tree re-read every second), the process's own peak RSS (VmHWM, exact), and PSS summed over
    them every `pss_interval` s (smaps_rollup walks the page tables: ~40 ms per GB-sized process,
    too dear to read more often on 2 cores)."""

    def __init__(self, pid: int, interval: float = 0.2, pss_interval: float = 5.0):
        super().__init__(daemon=True)
        self.pid, self.interval, self.pss_interval = pid, interval, pss_interval
        self.done = threading.Event()
        self.peak_rss = self.peak_pss = self.peak_main_hwm = self.peak_processes = 0
        self.cpu_seconds = 0.0

    def _tree(self) -> list[int]:
        tree, pids, i = _children(), [self.pid], 0
        while i < len(pids):
            pids += tree.get(pids[i], [])
            i += 1
        return pids

    def run(self) -> None:
        pids, tree_read, pss_read = [self.pid], -math.inf, -math.inf
        while not self.done.is_set():
            now = time.monotonic()
            if now - tree_read >= 1.0:
                pids, tree_read = self._tree(), now
                self.peak_processes = max(self.peak_processes, len(pids))
            rss = sum(_kb(f"/proc/{p}/status", "VmRSS") for p in pids)
            self.peak_rss = max(self.peak_rss, rss)
            hwm = _kb(f"/proc/{self.pid}/status", "VmHWM")
            self.peak_main_hwm = max(self.peak_main_hwm, hwm)
            if now - pss_read >= self.pss_interval:
                pss = sum(_kb(f"/proc/{p}/smaps_rollup", "Pss") for p in pids)
                self.peak_pss, pss_read = max(self.peak_pss, pss), now
            self.done.wait(self.interval)
        self.cpu_seconds = time.thread_time()

    def result(self) -> dict:
        return {
            "peak_tree_rss_mb": round(self.peak_rss / 1024, 1),
            "peak_tree_pss_mb": round(self.peak_pss / 1024, 1),
            "peak_main_process_rss_mb": round(self.peak_main_hwm / 1024, 1),
            "processes_in_tree": self.peak_processes,
            "memory_poll_cpu_seconds": round(self.cpu_seconds, 1),
        }


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


def busy_share(seconds: float = 3.0) -> float:
    (busy0, total0), _ = _cpu_jiffies(), time.sleep(seconds)
    busy1, total1 = _cpu_jiffies()
    return (busy1 - busy0) / max(total1 - total0, 1)


WAITED = [0.0]  # seconds spent in wait_until_idle


def wait_until_idle(limit: float, threshold: float = 0.1) -> float | None:
    """Wait (at most `limit` s) until the CPUs are less than `threshold` busy; the last share."""
    if limit <= 0:
        return None
    started = time.monotonic()
    deadline, told = started + limit, False
    while True:
        share = busy_share()
        if share < threshold or time.monotonic() > deadline:
            if share >= threshold:
                print(f"warning: CPUs still {share:.0%} busy with other work; measuring anyway")
            WAITED[0] += time.monotonic() - started
            return share
        if not told:
            print(f"waiting for other work to finish (CPUs {share:.0%} busy) ...", flush=True)
            told = True
        time.sleep(10)


def add_disturbance_options(parser, runs: str) -> None:
    """--wait-idle, --max-disturbance and --retries, for `undisturbed`; `runs`: what is measured."""
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=600,
        help=f"before each {runs}, wait at most this many seconds for other work on the machine "
        "to finish (0: do not wait)",
    )
    parser.add_argument(
        "--max-disturbance",
        type=float,
        default=0.1,
        help=f"a {runs} during which other processes took more than this share of the CPUs is "
        "repeated (up to --retries times) and flagged if it stays disturbed",
    )
    parser.add_argument(
        "--retries", type=int, default=1, help="repeats of a disturbed run; then it is flagged"
    )


def undisturbed(
    attempt: Callable[[float | None], dict], args, discarded: Callable[[dict], dict]
) -> tuple[dict, float | None, list[dict]]:
    """`attempt(idle)` after waiting for idle CPUs (`idle`: their busy share then), again while
    other processes took more than args.max_disturbance of the CPUs during it, at most
    args.retries times. Returns the last run, its `idle`, and `discarded(run)` of each other."""
    dropped: list[dict] = []
    while True:
        idle = wait_until_idle(args.wait_idle)
        measured = attempt(idle)
        share = measured["other_processes_cpu_share"]
        if share <= args.max_disturbance or len(dropped) == args.retries:
            return measured, idle, dropped
        print(
            f"  other processes took {share:.0%} of the CPUs, more than "
            f"{args.max_disturbance:.0%}: discarded, running it again",
            flush=True,
        )
        dropped.append(discarded(measured))


def _own_cpu_seconds() -> float:
    """CPU seconds of this process and of every descendant it has reaped."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run(
    command: list[str], env: dict, log: Path, timeout: float, what: str, pss_interval: float = 5.0
) -> dict:
    """Run `command` (output to `log`), polling its memory (PSS every `pss_interval` s); exit with
    the log's tail on error.

    Also measures the CPU time other processes on the machine took meanwhile (all CPUs' busy time
    minus ours), as a share of the CPUs: a shared machine shows up there."""
    print(f"{what}: {' '.join(command)}", flush=True)
    load_before = os.getloadavg()
    busy_before, ours_before = _cpu_jiffies()[0], _own_cpu_seconds()
    started = time.perf_counter()
    log.parent.mkdir(parents=True, exist_ok=True)  # a seed's folder, say, before its first run
    with open(log, "w") as stream:
        process = subprocess.Popen(
            command, env=env, stdout=stream, stderr=subprocess.STDOUT, start_new_session=True
        )
        poll = MemoryPoll(process.pid, pss_interval=pss_interval)
        poll.start()
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # its own session: only what we started
            process.wait()
            code = None
        finally:
            poll.done.set()
            poll.join()
    seconds = time.perf_counter() - started
    busy = (_cpu_jiffies()[0] - busy_before) / os.sysconf("SC_CLK_TCK")
    ours = _own_cpu_seconds() - ours_before
    if code != 0:
        tail = log.read_text()[-3000:]
        reason = f"timed out after {timeout:.0f} s" if code is None else f"exited with {code}"
        sys.exit(f"{what} {reason}:\n  {' '.join(command)}\n--- {log} (tail) ---\n{tail}")
    return {
        "wall_seconds": round(seconds, 1),
        "cpu_seconds": round(ours, 1),
        "other_processes_cpu_share": round(max(busy - ours, 0) / (seconds * os.cpu_count()), 3),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        **poll.result(),
    }


def machine(load_before: tuple[float, ...]) -> dict:
    """The machine a result comes from: CPU model (speed ratios differ between CPUs; bf16 runs
    fast only where the CPU has AVX-512 bf16, and several times faster again with AMX tiles),
    memory, load before and after."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = re.search(r"model name\s*:\s*(.+)", info)
    return {
        "platform": platform.platform(),
        "cpu": model.group(1).strip() if model else platform.processor(),
        "avx512_bf16": "avx512_bf16" in info,
        "amx_bf16": "amx_bf16" in info,
        "cpus": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


CPU_KEYS = ("cpu", "avx512_bf16", "amx_bf16")


def cpu() -> dict:
    """The part of `machine` a row measured in one session of a multi-session run keeps: which CPU
    it ran on, and whether bf16 was native there (seeds of one table may span machines)."""
    return {k: v for k, v in machine(os.getloadavg()).items() if k in CPU_KEYS}


def git_state() -> dict:
    def git(*words: str) -> str:
        result = subprocess.run(["git", "-C", str(ROOT), *words], capture_output=True, text=True)
        return result.stdout.strip() if result.returncode == 0 else "unknown"

    return {
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty_tumorfm": bool(git("status", "--porcelain", "--", "tumorfm")),
    }


def provenance(name: str, environment: str, load_before: tuple[float, ...]) -> dict:
    """What a results file records about its run: the command (common.command_line), the machine
    and the commit."""
    return {
        "command": command_line(name, environment),
        "machine": machine(load_before),
        **git_state(),
    }
