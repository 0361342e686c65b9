"""Engines' host steps (engines/host.py): the `sd` makeup's CPU start work (the reference's face mesh,
the colour-transfer start, the reference crop) runs in the mask stage, which on Ray with GPU edit
actors is its own pool of CPU actors, and rides with the row to the engine, which then runs no
landmarker and no colour transfer; the output bytes are those of the engine doing it all itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data as skimage_data

from editflow.config import RunConfig
from editflow.manifest import read_manifest
from editflow.runners.payload import rows_to_table, table_to_rows
from editflow.runners.stages import EditStage, MaskStage, PrepareStage, new_row
from tests.conftest import write_jsonl

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def makeup_manifest(tmp_path_factory, tiny_models, tiny_ip_adapter) -> Path:
    """Three `sd` makeup rows (tiny SD inpainting + tiny IP-Adapter) on a 256 px face, the mirrored
    face as the reference: two with the task's face mask, one with a box (no landmarks from the mask stage)."""
    folder = tmp_path_factory.mktemp("makeup_rows")
    face = cv2.resize(skimage_data.astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
    Image.fromarray(face).save(folder / "face.png")
    Image.fromarray(np.ascontiguousarray(face[:, ::-1])).save(folder / "reference.png")
    base = {"task": "makeup", "engine": "sd", "model": str(tiny_models["sd-inpaint"]), "image": "face.png",
            "reference": "reference.png", "steps": 2, "params": {"ip_adapter": str(tiny_ip_adapter)}}
    rows = [{"id": "auto", **base}, {"id": "lips", **base, "seed": 5, "params": {**base["params"], "parts": "lips"}},
            {"id": "box", **base, "mask": "box:60,60,200,220"}]
    return write_jsonl(folder / "manifest.jsonl", rows)


def start_work() -> list[tuple[object, str]]:
    """Where the makeup start's work happens: the face mesh, the colour transfer."""
    import editflow.engines.makeup_sd_start as start_module
    from editflow.masks.face import FaceLandmarker

    return [(FaceLandmarker, "detect"), (start_module, "makeup_start")]


def forbid_start_work(setattr_=setattr) -> list[str]:
    """From now on, in this process, any face mesh or colour transfer raises (and is recorded)."""
    calls: list[str] = []

    def forbidden(name):
        def raiser(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} ran in the edit stage")
        return raiser

    for owner, name in start_work():
        setattr_(owner, name, forbidden(name))
    return calls


def test_the_mask_stage_does_the_makeup_start_and_the_edit_stage_only_samples(makeup_manifest, tmp_path, monkeypatch):
    manifest = read_manifest(str(makeup_manifest))
    config = RunConfig(out_dir=str(tmp_path / "out"), base_dir=manifest.base_dir, cpu_threads=1)
    mask_stage = MaskStage(config)
    rows = mask_stage(PrepareStage(config)([new_row(raw, config.run_id) for raw in manifest.table.to_pylist()]))
    assert [r["status"] for r in rows] == ["ok"] * 3, [r.get("error_message") for r in rows]
    for row in rows:
        host = row["_host"]
        assert host["start"].shape == row["_image"].shape and host["start"].dtype == np.uint8
        assert host["reference_crop"].shape == (256, 256, 3) and host["face"].shape == (478, 2)
        assert host["eye_opening"].shape == row["_image"].shape[:2] and host["eye_opening"].any()
        assert np.any(host["start"] != row["_image"])  # the reference's colours are in it
    assert "_faces" in rows[0] and "_faces" not in rows[2]  # the box row's face was meshed by the host step
    mask_stage.close()
    # across the process boundary as Ray carries rows (Arrow); the same rows without the host arrays
    # are what the engine does fully in-process
    carried = table_to_rows(rows_to_table(rows))
    alone = table_to_rows(rows_to_table(rows))
    for row in alone:
        del row["_host"]

    edit = EditStage(config)
    try:
        want = edit(alone)
        assert [r["status"] for r in want] == ["ok"] * 3, [r.get("error_message") for r in want]
        calls = forbid_start_work(monkeypatch.setattr)
        got = edit(carried)
        assert [r["status"] for r in got] == ["ok"] * 3, [r.get("error_message") for r in got]
        assert calls == []
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a["_output"], b["_output"])
            assert a["unmasked_max_diff"] == 0
        # the check can fail: a row without host arrays now needs the forbidden work in the edit stage
        (bare,) = table_to_rows(rows_to_table(rows[:1]))
        del bare["_host"]
        (failed,) = edit([bare])
        assert failed["status"] == "error" and failed["error_stage"] == "edit" and calls
    finally:
        edit.close()


def test_a_failing_host_step_leaves_the_error_to_the_engine(makeup_manifest, tmp_path):
    """No face in the reference: the row's error is the engine's, as it was before host steps."""
    manifest = read_manifest(str(makeup_manifest))
    folder = Path(manifest.base_dir)
    Image.new("RGB", (96, 96), (200, 180, 160)).save(folder / "blank.png")
    raw = dict(manifest.table.to_pylist()[0], id="noface", reference="blank.png")
    config = RunConfig(out_dir=str(tmp_path / "out"), base_dir=manifest.base_dir, cpu_threads=1)
    stages = [PrepareStage(config), MaskStage(config), EditStage(config)]
    rows = [new_row(raw, config.run_id)]
    rows = stages[1](stages[0](rows))
    assert rows[0]["status"] == "ok" and "_host" not in rows[0]
    (row,) = stages[2](rows)
    assert (row["status"], row["error_stage"], row["error_type"]) == ("error", "edit", "NoFaceError")
    assert "reference" in row["error_message"]
    for stage in stages:
        stage.close()


def test_host_steps_load_no_network_stack():
    """CPU mask actors import the host step, never torch or diffusers."""
    code = ("import sys; from editflow.engines import host_step_class; import editflow.runners.stages, "
            "editflow.runners.payload; host_step_class('sd', 'makeup'); "
            "print(sorted(m for m in ('torch', 'diffusers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "[]"


def forbid_start_work_in_edit_actors() -> None:
    """Ray worker setup hook: in a process that builds an edit stage (an edit actor), the makeup
    start's work raises; mask actors (other processes) may do it."""
    from editflow.runners import stages

    build = stages.EditStage.__init__

    def edit_stage_init(self, config):
        build(self, config)
        forbid_start_work()

    stages.EditStage.__init__ = edit_stage_init


def test_on_ray_the_cpu_mask_actors_do_the_start_and_the_bytes_match_the_local_run(makeup_manifest, tmp_path):
    """A local cluster with one logical GPU: the edit actor asks for it and the masks (and the
    makeup start) run in CPU actors apart; the edit actor is forbidden to make the start."""
    import ray

    from editflow.results import scan_results
    from editflow.runners.local import run_local
    from editflow.runners.ray import RayOptions, plan_for, run_ray

    manifest = read_manifest(str(makeup_manifest))
    table = manifest.table
    ray_cfg = RunConfig(out_dir=str(tmp_path / "ray"), base_dir=manifest.base_dir, cpu_threads=1)
    ray.init(address="local", num_cpus=3, num_gpus=1, include_dashboard=False, log_to_driver=False,
             runtime_env={"worker_process_setup_hook": "tests.test_host_steps.forbid_start_work_in_edit_actors",
                          "env_vars": {"PYTHONPATH": str(REPO)}})
    try:
        assert plan_for(table, ray_cfg, RayOptions(), 1, embedded=False).separate_masks
        run_ray(table, ray_cfg, RayOptions())
    finally:
        ray.shutdown()
    local_cfg = RunConfig(out_dir=str(tmp_path / "local"), base_dir=manifest.base_dir, cpu_threads=1)
    run_local(table.to_pylist(), local_cfg)
    columns = ("id", "status", "error_message", "output_sha256")
    got, want = (sorted(scan_results(tmp_path / name, columns).table.to_pylist(), key=lambda r: r["id"])
                 for name in ("ray", "local"))
    assert [r["status"] for r in got] == ["ok"] * 3, [r["error_message"] for r in got]
    assert [r["output_sha256"] for r in got] == [r["output_sha256"] for r in want]
