"""The GPU bench never reports a fast images/s for a path that fails (issue 12, defect 11)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def components():
    from bench.bench_sd import build_components

    return build_components(tiny=True)


def test_bench_reports_every_path_with_rows_ok(components):
    from bench.bench_sd import throughput_part

    out = throughput_part(components, "cpu", 64, 2, (1, 2), 1, dtypes=("fp32",), rows=2)["fp32"]
    assert {"pipeline_mb1", "pipeline_mb2", "sampler_mb2", "naive_loop"} <= set(out)
    assert all(out[k]["img_s"] > 0 for k in ("pipeline_mb1", "sampler_mb2", "naive_loop"))


def test_bench_fails_when_the_sampler_path_fails(components, monkeypatch):
    from bench.bench_sd import throughput_part
    from editflow.engines.sd import SDEngine

    def broken(self, jobs):
        raise RuntimeError("device mismatch in the sampler path")

    monkeypatch.setattr(SDEngine, "_run_sampler", broken)
    with pytest.raises(RuntimeError, match="2 of 2 rows failed: RuntimeError: device mismatch"):
        throughput_part(components, "cpu", 64, 2, (1,), 1, dtypes=("fp32",), rows=2)
