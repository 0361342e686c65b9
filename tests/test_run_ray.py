"""The Ray Data runner against the in-process one: same rows, same bytes, nothing lost."""

from __future__ import annotations

from pathlib import Path

from editflow import cli
from tests.test_run_local import all_result_rows, check_mixed_results, mixed_manifest  # noqa: F401 (fixture)

#: columns that legitimately differ between runs (time, place, run identity)
VOLATILE = {"t_load_s", "t_mask_s", "t_edit_s", "t_write_s", "started_at", "finished_at", "worker", "run_id"}


def comparable(out: Path) -> dict[str, dict]:
    return {r["id"]: {k: v for k, v in r.items() if k not in VOLATILE} for r in all_result_rows(out)}


def test_ray_executor_matches_local_on_a_mixed_manifest(tmp_path, mixed_manifest):
    local_out, ray_out = tmp_path / "local", tmp_path / "ray"
    assert cli.main(["run", str(mixed_manifest), "-o", str(local_out), "--executor", "local", "--quiet"]) == 2
    assert cli.main(["run", str(mixed_manifest), "-o", str(ray_out), "--executor", "ray", "--quiet",
                     "--rows-per-block", "2", "--batch-size", "2"]) == 2
    check_mixed_results(ray_out)
    assert comparable(ray_out) == comparable(local_out)
    for image in (local_out / "images").iterdir():
        assert (ray_out / "images" / image.name).read_bytes() == image.read_bytes()
