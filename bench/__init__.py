"""Benches: each prints figures (ratios within one run, never pass/fail). Run from the repository
root as `python -m bench.NAME` (e.g. `python -m bench.bench_runners`)."""
