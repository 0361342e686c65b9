"""`ray job submit` of the demo manifest against a real local head (jobs/local_demo.sh)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from editflow import cli
from tests.conftest import REPO
from tests.test_run_ray import comparable


@pytest.mark.slow
def test_job_submit_of_the_demo_matches_the_local_run(tmp_path):
    job_out, local_out = tmp_path / "job", tmp_path / "local"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        ["bash", str(REPO / "jobs" / "local_demo.sh"), str(job_out), "manifests/demo.jsonl", "--quiet"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "succeeded" in done.stdout + done.stderr
    assert cli.main(["run", str(REPO / "manifests" / "demo.jsonl"), "-o", str(local_out), "--executor", "local",
                     "--quiet"]) == 0
    job_rows, local_rows = comparable(job_out), comparable(local_out)
    assert job_rows and all(r["status"] == "ok" for r in job_rows.values())
    for rows in (job_rows, local_rows):  # the job ran on the cluster's device, the local run here
        for row in rows.values():
            row.pop("device")
    assert job_rows == local_rows
