"""Work over many cases in worker processes, every user error collected (preprocess, evaluate)."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor, as_completed

import SimpleITK as sitk
from tqdm import tqdm

from tumorfm.errors import TumorFMError


def run_parallel(function, jobs: list, workers: int, desc: str, progress: bool) -> list:
    """Map `function` over `jobs` in worker processes; collect every user error, raise them all."""
    results, errors = [None] * len(jobs), []
    bar = tqdm(total=len(jobs), desc=desc, unit="case", disable=None if progress else True)
    if workers <= 1:
        for i, job in enumerate(jobs):
            try:
                results[i] = function(job)
            except TumorFMError as error:
                errors.append(str(error))
            bar.update()
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(threads,)) as pool:
            futures = {pool.submit(function, job): i for i, job in enumerate(jobs)}
            for future in as_completed(futures):
                try:
                    results[futures[future]] = future.result()
                except TumorFMError as error:
                    errors.append(str(error))
                bar.update()
    bar.close()
    if errors:
        raise TumorFMError("\n".join(sorted(errors)))
    return results


def _init_worker(threads: int) -> None:
    """Each worker's SimpleITK threads: the CPUs shared out, not each taking all of them."""
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
