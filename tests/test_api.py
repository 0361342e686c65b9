"""The Python API: edit / Editor / make_mask / run / plan, on the same stages as the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import editflow
from editflow import cli
from editflow.errors import EditflowError
from tests.conftest import ASSETS, REPO, textured_image, write_image, write_jsonl

BOX = "box:20,10,70,50"


def test_edit_takes_a_path_a_pil_image_or_an_array_and_matches_the_cli(tmp_path):
    photo = write_image(tmp_path / "photo.png", width=96, height=64, seed=3)
    by_path = editflow.edit(photo, mask=BOX, engine="opencv", seed=5)  # opencv: fast; the stages are the point
    by_pil = editflow.edit(Image.open(photo), mask=BOX, engine="opencv", seed=5)
    by_array = editflow.edit(np.asarray(Image.open(photo)), mask=BOX, engine="opencv", seed=5)
    assert by_path.image.size == (96, 64) and by_path.image.mode == "RGB"
    for other in (by_pil, by_array):
        assert np.array_equal(np.asarray(other.image), np.asarray(by_path.image))
        assert np.array_equal(np.asarray(other.mask), np.asarray(by_path.mask))
    info = by_path.info
    assert info["status"] == "ok" and info["engine"] == "opencv" and info["task"] == "inpaint"
    assert info["seed"] == 5 and info["unmasked_max_diff"] == 0 and info["mask_area"] > 0
    assert np.asarray(by_path.mask)[30, 40] == 255 and np.asarray(by_path.mask)[5, 5] == 0
    original = np.asarray(Image.open(photo).convert("RGB"))
    edited = np.asarray(by_path.image)
    assert not np.array_equal(edited[10:50, 20:70], original[10:50, 20:70])  # the box was repainted
    assert np.array_equal(edited[:10], original[:10])  # and nothing outside it

    out = tmp_path / "cli.png"
    assert cli.main(["edit", str(photo), "--mask", BOX, "--engine", "opencv", "--seed", "5", "-o", str(out)]) == 0
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), edited)
    saved = by_path.save(tmp_path / "api.png")  # through the run's write stage: editflow's metadata
    assert json.loads(Image.open(saved).info["editflow"])["seed"] == 5
    assert by_path.info["output_sha256"]


def test_mask_may_be_an_array_a_pil_image_or_a_file(tmp_path):
    photo = textured_image(96, 64, seed=4)
    hand = np.zeros((64, 96), bool)
    hand[10:50, 20:70] = True
    by_spec = editflow.edit(photo, mask=BOX, engine="opencv")
    by_bool = editflow.edit(photo, mask=hand, engine="opencv")
    by_pil = editflow.edit(photo, mask=Image.fromarray(hand.astype(np.uint8) * 255), engine="opencv")
    Image.fromarray(hand.astype(np.uint8) * 255).save(tmp_path / "m.png")
    by_file = editflow.edit(photo, mask=tmp_path / "m.png", engine="opencv")
    for other in (by_bool, by_pil, by_file):
        assert np.array_equal(np.asarray(other.mask), np.asarray(by_spec.mask))
        assert np.array_equal(np.asarray(other.image), np.asarray(by_spec.image))


def test_make_mask_is_the_mask_an_edit_uses(tmp_path):
    photo = textured_image(96, 64, seed=6)
    mask = editflow.make_mask(photo, BOX, mask_grow=3)
    edited = editflow.edit(photo, mask=BOX, engine="opencv", mask_grow=3)
    assert mask.mode == "L" and mask.size == (96, 64)
    assert np.array_equal(np.asarray(mask), np.asarray(edited.mask))
    assert np.asarray(mask)[8, 18] == 255  # grown by 3 px beyond the box


def test_errors_are_editflow_errors_with_the_stage_and_reason(tmp_path):
    with pytest.raises(editflow.EditFailed) as caught:
        editflow.edit(tmp_path / "nope.png", mask=BOX)
    assert isinstance(caught.value, EditflowError)
    assert caught.value.stage == "prepare" and "not found" in str(caught.value)
    with pytest.raises(EditflowError, match="box needs 4 numbers"):
        editflow.edit(textured_image(), mask="box:1,2,3")
    with pytest.raises(EditflowError, match="uint8"):
        editflow.edit(np.zeros((8, 8, 3), np.float64), mask="full")

    editor = editflow.Editor()
    results = editor.edit_batch([dict(image=textured_image(seed=1), mask=BOX, task="repaint", id="fine"),
                                 dict(image=tmp_path / "nope.png", mask=BOX, id="missing")],
                                return_exceptions=True)
    assert isinstance(results[0], editflow.EditOutput) and results[0].info["id"] == "fine"
    assert isinstance(results[1], editflow.EditFailed) and results[1].info["id"] == "missing"
    with pytest.raises(editflow.EditFailed, match="missing"):
        editor.edit_batch([dict(image=tmp_path / "nope.png", mask=BOX, id="missing")])


def test_editor_loads_the_diffusers_model_once_for_many_edits(tmp_path, tiny_models, monkeypatch):
    """A notebook loop over an Editor (and over editflow.edit) must not reload SD per image."""
    import editflow.engines.sd as sd

    loads: list[str] = []
    real = sd.load_sd_pipeline

    def counting(spec, dtype):
        loads.append(spec)
        return real(spec, dtype)

    monkeypatch.setattr(sd, "load_sd_pipeline", counting)
    model = str(tiny_models["sd-inpaint"])
    editor = editflow.Editor(engine="sd", model=model, device="cpu")
    first = editor.edit(textured_image(64, 64, seed=1), mask="box:16,16,48,48", steps=2, seed=1)
    editor.edit(textured_image(64, 64, seed=2), mask="box:8,8,40,40", steps=2, seed=1)
    batch = editor.edit_batch([dict(image=textured_image(64, 64, seed=s), mask="full", steps=2) for s in (3, 4, 5)])
    assert len(loads) == 1 and len(batch) == 3
    assert first.info["engine"] == "sd" and first.info["model"] and first.info["unmasked_max_diff"] == 0
    again = editor.edit(textured_image(64, 64, seed=1), mask="box:16,16,48,48", steps=2, seed=1)
    assert np.array_equal(np.asarray(again.image), np.asarray(first.image))  # reuse changes no pixel

    for seed in (1, 2):  # the module-level function keeps its editor between calls too
        editflow.edit(textured_image(64, 64, seed=seed), mask="full", engine="sd", model=model, steps=2,
                      device="cpu")
    assert len(loads) == 2


def test_editor_keeps_its_mask_model(monkeypatch):
    """Landmark masks: MediaPipe's face mesh starts once per Editor, not per image."""
    from editflow.masks import face

    starts = []
    real_init = face.FaceLandmarker.__init__

    def counting(self, *args, **kwargs):
        starts.append(1)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(face.FaceLandmarker, "__init__", counting)
    astronaut = Image.open(ASSETS / "astronaut.png")
    editor = editflow.Editor()
    lips = editor.make_mask(astronaut, "face:lips")
    out = editor.edit(ASSETS / "astronaut.png", task="makeup", reference=ASSETS / "makeup_reference.png")
    started = len(starts)  # the mask stage's mesh, and the makeup engine's own for the reference face
    eyes = editor.make_mask(np.asarray(astronaut), "face:eyes")
    again = editor.edit(astronaut, task="makeup", reference=Image.open(ASSETS / "makeup_reference.png"),
                        id="astronaut")  # the id seeds the edit: the path's stem before
    assert started <= 2 and len(starts) == started
    assert np.asarray(lips).any() and np.asarray(eyes).any() and not np.array_equal(np.asarray(lips), np.asarray(eyes))
    assert out.info["mask_spec"].startswith("face:") and out.info["unmasked_max_diff"] == 0
    assert np.array_equal(np.asarray(again.image), np.asarray(out.image))
    editor.close()


def test_run_returns_a_summary_and_feeds_a_progress_callback(tmp_path, photo_dir):
    manifest = write_jsonl(photo_dir / "m.jsonl", [
        {"id": f"r{i}", "task": "inpaint", "engine": "opencv", "image": "a.png", "mask": BOX} for i in range(5)
    ] + [{"id": "bad", "task": "inpaint", "image": "missing.png", "mask": BOX}])
    calls = []
    summary = editflow.run(manifest, tmp_path / "out", executor="local", batch_size=2,
                           progress=lambda *figures: calls.append(figures))
    assert (summary.rows, summary.ok, summary.error, summary.missing, summary.exit_code) == (6, 5, 1, 0, 2)
    assert sum(summary.error_types.values()) == 1 and "bad" in "".join(summary.error_examples.values())
    assert Path(summary.summary_path).is_file() and len(os.listdir(summary.images)) == 5
    assert calls[-1] == (6, 6, 5, 1)
    assert all(done <= total == 6 and ok + errors == done for done, total, ok, errors in calls)
    loaded = editflow.Summary.load(tmp_path / "out")
    assert (loaded.rows, loaded.ok, loaded.error, loaded.exit_code, loaded.run_id) == (6, 5, 1, 2, summary.run_id)
    with pytest.raises(EditflowError, match="already holds results"):
        editflow.run(manifest, tmp_path / "out", executor="local", progress=False)
    resumed = editflow.run(manifest, tmp_path / "out", executor="local", resume=True, progress=False)
    assert resumed.ok == 5 and resumed.data["resumed_ok_rows"] == 5


def test_the_api_works_from_a_plain_python_c(tmp_path, photo_dir):
    """A fresh interpreter with nothing but the package on the path: edit, Editor reuse, make_mask, run."""
    manifest = write_jsonl(photo_dir / "m.jsonl", [
        {"id": "one", "task": "inpaint", "engine": "opencv", "image": "a.png", "mask": BOX},
        {"id": "two", "task": "repaint", "image": "b.png", "mask": "box:5,5,40,40"}])
    code = textwrap.dedent(f"""
        import editflow, numpy as np
        out = editflow.edit({str(photo_dir / 'a.png')!r}, mask={BOX!r}, task="repaint", seed=1)
        assert out.image.size == (96, 64) and out.info["status"] == "ok", out.info
        editor = editflow.Editor(engine="opencv")
        a = editor.edit(np.asarray(out.image), mask=out.mask)
        b = editor.edit(out.image, mask={BOX!r})
        assert editor._edit.engines and len(editor._edit.engines) == 1
        mask = editflow.make_mask(out.image, "box:0,0,10,10")
        summary = editflow.run({str(manifest)!r}, {str(tmp_path / 'out')!r}, executor="local", progress=False)
        print("OK", summary.ok, summary.exit_code, int(np.asarray(mask).sum() // 255))
    """)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["OK", "2", "0", "100"]


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, photo_dir, capsys, tiny_models, empty_hub_cache):
    rows = [{"id": f"b{i}", "task": "repaint", "image": "a.png", "mask": BOX} for i in range(3)]
    rows += [{"id": "sd1", "task": "inpaint", "engine": "sd", "image": "a.png", "mask": "box:1,1,9,9"},
             {"id": "local", "task": "sdedit", "engine": "sd", "model": str(tiny_models["sd"]), "image": "a.png"},
             {"id": "mk", "task": "makeup", "image": "a.png", "reference": "b.png"},
             {"id": "odd", "task": "paint", "image": "a.png"}]
    manifest = write_jsonl(photo_dir / "plan.jsonl", rows)
    out = tmp_path / "out"
    assert cli.main(["run", str(manifest), "-o", str(out), "--dry-run"]) == 2  # some rows would fail
    printed = capsys.readouterr().out
    assert not out.exists()
    assert "7 rows" in printed
    assert "repaint   builtin              3" in printed
    assert "stable-diffusion-v1-5/stable-diffusion-inpainting" in printed and "MISSING" in printed
    assert "hf download stable-diffusion-v1-5/stable-diffusion-inpainting" in printed
    assert f"here ({tiny_models['sd']})" in printed
    assert "face             1 rows" in printed and "box              4 rows" in printed and "full" in printed
    assert "1 row(s): unknown task 'paint'" in printed

    plan = editflow.plan(manifest)
    assert not plan.runnable
    assert {(t["task"], t["engine"]): t["rows"] for t in plan.tasks}[("repaint", "builtin")] == 3
    ready = write_jsonl(photo_dir / "ready.jsonl", rows[:3])
    assert cli.main(["run", str(ready), "-o", str(out), "--dry-run"]) == 0
    assert "editflow: ready to run" in capsys.readouterr().out
