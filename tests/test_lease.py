"""One writer per OUT: the lease on local disk and on S3, and what `editflow run` does with it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from editflow import cli, storage
from editflow.lease import LEASE_NAME, LeaseHeld, LeaseRecord, acquire, read_lease
from tests.conftest import REPO, write_image, write_jsonl


@pytest.fixture(params=["local", "s3"])
def out(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "out")
    return request.getfixturevalue("s3_bucket") + "/out"


def put_record(out: str, *, host: str, pid: int, age_s: float, run_id: str = "old-run") -> None:
    now = time.time()
    record = LeaseRecord(run_id=run_id, host=host, pid=pid, token="theirs", acquired_at=now - age_s,
                         heartbeat_at=now - age_s)
    storage.makedirs(out)
    storage.write_bytes(storage.join(out, LEASE_NAME), record.to_bytes())


def test_a_held_lease_refuses_a_second_writer_until_released(out):
    first = acquire(out, "run-1", settle_s=0.05)
    with pytest.raises(LeaseHeld, match=r"in use by run run-1 \(host .*, pid \d+"):
        acquire(out, "run-2", take_over_stale=True, settle_s=0.05)  # live: even --resume refuses
    first.release()
    assert read_lease(out) is None
    acquire(out, "run-2", settle_s=0.05).release()


def test_a_stale_lease_is_taken_over_only_on_resume(out):
    put_record(out, host="some-other-host", pid=1234, age_s=3600)
    with pytest.raises(LeaseHeld, match="stale lease of run old-run .*pass --resume"):
        acquire(out, "new-run", settle_s=0.05)
    lease = acquire(out, "new-run", take_over_stale=True, settle_s=0.05)
    assert read_lease(out).run_id == "new-run"
    lease.release()


def test_a_fresh_lease_of_a_dead_process_on_this_host_is_stale_at_once(out):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    put_record(out, host=socket.gethostname(), pid=dead.pid, age_s=0)
    acquire(out, "new-run", take_over_stale=True, settle_s=0.05).release()


def test_force_takes_a_live_lease(out):
    put_record(out, host="some-other-host", pid=1, age_s=0)
    with pytest.raises(LeaseHeld, match="in use by run old-run"):
        acquire(out, "new-run", take_over_stale=True, settle_s=0.05)
    lease = acquire(out, "new-run", force=True, settle_s=0.05)
    assert read_lease(out).run_id == "new-run"
    lease.release()


def test_heartbeat_refreshes_and_notices_a_take_over(tmp_path):
    out = str(tmp_path / "out")
    lease = acquire(out, "run-1", heartbeat_s=0.05)
    first_beat = read_lease(out).heartbeat_at
    deadline = time.monotonic() + 30
    while read_lease(out).heartbeat_at == first_beat:
        assert time.monotonic() < deadline, "no heartbeat"
        time.sleep(0.05)
    put_record(out, host="elsewhere", pid=1, age_s=0, run_id="usurper")  # another run forced it
    while not lease.lost:
        assert time.monotonic() < deadline, "the take-over went unnoticed"
        time.sleep(0.05)
    lease.release()
    assert read_lease(out).run_id == "usurper", "release never deletes another run's lease"


# ---------------------------------------------------------------- through `editflow run`


def small_manifest(folder: Path, rows: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_image(folder / "p.png", width=32, height=32, seed=1)
    return write_jsonl(folder / "m.jsonl", [{"id": f"r{i:04d}", "task": "inpaint", "image": "p.png",
                                              "engine": "opencv", "mask": "box:4,4,20,20"} for i in range(rows)])


def result_ids(out: Path) -> list[str]:
    return sorted(i for p in (out / "results").glob("*.parquet") for i in pq.read_table(p).column("id").to_pylist())


def test_run_refuses_a_live_holder_and_force_unlock_takes_over(tmp_path, capsys):
    manifest = small_manifest(tmp_path / "in", 3)
    out = tmp_path / "out"
    put_record(str(out), host="gpu-node-7", pid=4242, age_s=1, run_id="20260101T000000Z-abc")
    assert cli.main(["run", str(manifest), "-o", str(out), "--executor", "local", "--quiet", "--resume"]) == 1
    err = capsys.readouterr().err
    assert "in use by run 20260101T000000Z-abc (host gpu-node-7, pid 4242" in err and "--force-unlock" in err
    assert not (out / "results").exists(), "nothing ran"
    assert cli.main(["run", str(manifest), "-o", str(out), "--executor", "local", "--quiet", "--force-unlock"]) == 0
    assert result_ids(out) == ["r0000", "r0001", "r0002"] and not (out / LEASE_NAME).exists()


def test_resume_takes_over_a_stale_lease(tmp_path, capsys):
    manifest = small_manifest(tmp_path / "in", 3)
    out = tmp_path / "out"
    put_record(str(out), host="gpu-node-7", pid=4242, age_s=600, run_id="dead-run")
    assert cli.main(["run", str(manifest), "-o", str(out), "--executor", "local", "--quiet"]) == 1
    assert "stale lease of run dead-run" in capsys.readouterr().err
    assert cli.main(["run", str(manifest), "-o", str(out), "--executor", "local", "--quiet", "--resume"]) == 0
    assert result_ids(out) == ["r0000", "r0001", "r0002"]
    assert json.loads((out / "summary.json").read_text())["status"]["ok"] == 3


@pytest.mark.slow
def test_two_runs_on_one_out_half_a_second_apart_exactly_one_proceeds(tmp_path):
    rows = 400
    manifest = small_manifest(tmp_path / "in", rows)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-m", "editflow", "run", str(manifest), "-o", str(out), "--executor", "local", "--quiet"]
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(0.5)
    second = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    results = [p.communicate(timeout=900) for p in (first, second)]
    codes = sorted([first.returncode, second.returncode])
    errors = [r[1].decode() for r in results]
    assert codes == [0, 1], errors
    refused = errors[[first.returncode, second.returncode].index(1)]
    assert "is in use by run" in refused and "pid" in refused, refused
    assert result_ids(out) == [f"r{i:04d}" for i in range(rows)], "each id exactly once"
