"""tumorfm's benchmarks: tumorfm and its peers side by side, same data, same machine, same run.

`python -m benchmarks` (or `make bench`) runs them one after the other and regenerates the README's
results section (`benchmarks/report.py`) from the files they write in `benchmarks/results/`.
"""
