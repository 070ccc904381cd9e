"""A picture of a viewer page from headless Chromium: for tests, benchmarks and scripts on a
machine without a screen. NiiVue draws with WebGL 2; without a GPU, Chromium's software
renderer (SwiftShader) draws it. `--virtual-time-budget` lets the page load its volumes and
draw before the picture is taken (virtual time waits for the network)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from tumorfm.errors import TumorFMError

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")
FLAGS = (
    "--headless",
    "--no-sandbox",  # as root (containers, CI) Chromium refuses its sandbox
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",  # WebGL in software: no GPU here
    "--hide-scrollbars",
    "--mute-audio",
)


def find_browser() -> str:
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    raise TumorFMError(f"no Chromium found (looked for {', '.join(BROWSERS)}); install chromium")


def _run(url: str, output: list[str], size: tuple[int, int], budget_ms: int):
    command = [find_browser(), *FLAGS, f"--window-size={size[0]},{size[1]}", *output]
    command += [f"--virtual-time-budget={budget_ms}", url]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def page_text(url: str, size: tuple[int, int] = (900, 700), budget_ms: int = 60_000) -> str:
    """The page's HTML after it has loaded and drawn (its status line, its data-drawn mark)."""
    done = _run(url, ["--dump-dom"], size, budget_ms)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise TumorFMError(f"{url}: Chromium read no page (exit {done.returncode}: {last})")
    return done.stdout


def seconds_to_drawn(url: str, started: float | None = None, timeout: float = 600) -> float:
    """Seconds from `started` (a time.perf_counter() value; default: now) until the viewer page
    at `url` has drawn its volumes (its console line), in headless Chromium, which is then
    closed. Chromium itself goes on running the page's frames for a while before it would exit,
    so its exit time is not the time to the first picture."""
    started = time.perf_counter() if started is None else started
    command = [find_browser(), *FLAGS, "--enable-logging=stderr", "--v=0", "--dump-dom"]
    command += ["--virtual-time-budget=600000", url]  # without it, Chromium quits at `load`
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, errors="replace"
    )
    try:
        for line in process.stderr:
            if "tumorfm-viewer: drawn" in line:
                return time.perf_counter() - started
            if time.perf_counter() - started > timeout:
                break
        raise TumorFMError(f"{url}: the page did not draw in Chromium")
    finally:
        process.kill()
        process.wait()


def screenshot(
    url: str, png: str | Path, size: tuple[int, int] = (900, 700), budget_ms: int = 60_000
) -> float:
    """Save a picture of `url` (an http or file address) to `png`; return the seconds taken."""
    png = Path(png)
    png.unlink(missing_ok=True)
    start = time.perf_counter()
    done = _run(url, [f"--screenshot={png}"], size, budget_ms)
    seconds = time.perf_counter() - start
    if done.returncode != 0 or not png.is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise TumorFMError(f"{url}: Chromium made no picture (exit {done.returncode}: {last})")
    return seconds
