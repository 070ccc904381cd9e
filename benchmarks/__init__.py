"""tumorfm's benchmarks: tumorfm and its peers side by side, same data, same machine, same run.

`python -m benchmarks` (or `make bench`) runs them one after the other and regenerates the README's
results section (`python -m benchmarks.report`) from the files they write in `benchmarks/results/`.
Each is a module of this package, run from the repository root: `python -m benchmarks.NAME`.
"""
