"""Acceptance for the diffusers engines through `editflow run`: one Ray run, one local rerun.

Rows: sd on a 9-channel model folder (inpaint, and RePaint through the sampler), sd on a
4-channel folder (sdedit, repaint), ddpm repaint, and a row naming a hub model that is not cached
while HF_HUB_OFFLINE=1. Every model row is ok at the input's size (100x72) with exact paste-back
and the sampler's nfe; the hub row fails with a message naming the model and how to get it; the
local rerun (batch size 1: every row alone) gives byte-identical images to the Ray run (batch 4).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from editflow import cli
from editflow.diffusion.sampler import SamplerConfig, make_scheduler, plan_transitions
from tests.conftest import write_image, write_jsonl
from tests.test_run_local import all_result_rows

MISSING = "acme/not-cached-inpainting"


def nfe(steps, strength=1.0, jumps=(1, 1)):
    config = SamplerConfig(steps=steps, strength=strength, jump_length=jumps[0], jump_n_sample=jumps[1])
    return plan_transitions(config, make_scheduler(config)).nfe


@pytest.fixture
def manifest(tmp_path: Path, tiny_models) -> tuple[Path, dict[str, int]]:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(4):
        write_image(folder / f"p{i}.png", width=100, height=72, seed=10 + i)
    sd9, sd4, ddpm = (str(tiny_models[k]) for k in ("sd-inpaint", "sd", "ddpm"))
    base = {"mask": "box:30,20,70,50", "prompt": "a red cat", "steps": 3}
    # four sd 4-channel repaint rows of one size first: one engine call of 4 on Ray (--batch-size 4),
    # four calls of 1 in the local rerun (--batch-size 1)
    rows = [{"id": f"sd4-repaint-{i}", "image": f"p{i}.png", "task": "repaint", "engine": "sd", "model": sd4,
             **base, "prompt": f"cat {i}", "jump_length": 2, "jump_n_sample": 2} for i in range(4)]
    rows += [
        {"id": "sd9-inpaint", "image": "p0.png", "task": "inpaint", "engine": "sd", "model": sd9, **base,
         "negative_prompt": "blurry"},
        {"id": "sd9-repaint", "image": "p1.png", "task": "repaint", "engine": "sd", "model": sd9, **base,
         "jump_length": 2, "jump_n_sample": 2},
        {"id": "sd4-sdedit", "image": "p2.png", "task": "sdedit", "engine": "sd", "model": sd4, **base,
         "steps": 4, "strength": 0.5},
        {"id": "ddpm-repaint", "image": "p3.png", "task": "repaint", "engine": "ddpm", "model": ddpm, **base,
         "jump_length": 2, "jump_n_sample": 2},
        {"id": "hub-missing", "image": "p0.png", "task": "inpaint", "engine": "sd", "model": MISSING, **base},
    ]
    expected_nfe = {"sd9-inpaint": 3, "sd9-repaint": nfe(3, jumps=(2, 2)), "sd4-sdedit": nfe(4, 0.5),
                    "ddpm-repaint": nfe(3, jumps=(2, 2))}
    expected_nfe.update({f"sd4-repaint-{i}": nfe(3, jumps=(2, 2)) for i in range(4)})
    return write_jsonl(folder / "manifest.jsonl", rows), expected_nfe


@pytest.mark.slow
def test_diffusers_engines_on_ray_then_local_byte_identical(tmp_path, manifest, empty_hub_cache, capsys):
    path, expected_nfe = manifest
    # (the edit stage pins torch's CPU thread count, so Ray actors and the local run compute alike)
    ray_out, local_out = tmp_path / "ray", tmp_path / "local"
    code = cli.main(["run", str(path), "-o", str(ray_out), "--executor", "ray", "--quiet",
                     "--batch-size", "4", "--rows-per-block", "16"])
    assert code == 2
    assert "ModelNotAvailableError" in capsys.readouterr().err
    rows = {r["id"]: r for r in all_result_rows(ray_out)}
    assert set(rows) == {json.loads(line)["id"] for line in path.read_text().splitlines()}

    missing = rows.pop("hub-missing")
    assert missing["status"] == "error" and missing["error_type"] == "ModelNotAvailableError"
    assert MISSING in missing["error_message"] and f"hf download {MISSING}" in missing["error_message"]
    assert str(empty_hub_cache) in missing["error_message"]

    for rid, row in rows.items():
        assert row["status"] == "ok", (rid, row.get("error_message"))
        assert (row["width"], row["height"]) == (100, 72)
        assert row["unmasked_max_diff"] == 0
        assert row["nfe"] == expected_nfe[rid], rid
        with Image.open(ray_out / row["output"]) as im:
            assert im.size == (100, 72)
    # the four same-size repaint rows went through one engine call (the stage records the call's time per row)
    assert len({rows[f"sd4-repaint-{i}"]["t_edit_s"] for i in range(4)}) == 1
    assert rows["sd9-inpaint"]["scheduler"] == "DDIMScheduler"
    assert rows["sd4-sdedit"]["strength"] == 0.5 and rows["sd9-repaint"]["jump_n_sample"] == 2

    code = cli.main(["run", str(path), "-o", str(local_out), "--executor", "local", "--quiet", "--batch-size", "1"])
    assert code == 2
    local = {r["id"]: r for r in all_result_rows(local_out)}
    for rid, row in rows.items():
        assert local[rid]["output_sha256"] == row["output_sha256"], rid
        a = np.asarray(Image.open(ray_out / row["output"]))
        b = np.asarray(Image.open(local_out / local[rid]["output"]))
        assert np.array_equal(a, b), rid


def test_missing_model_row_fails_and_the_others_finish_locally(tmp_path, tiny_models, empty_hub_cache, capsys):
    """In-process: a hub model that is not cached fails its own row with the fetch hint; the job goes on."""
    folder = tmp_path / "in"
    folder.mkdir()
    write_image(folder / "p.png", width=61, height=45, seed=1)
    base = {"image": "p.png", "mask": "box:10,10,40,30", "steps": 2}
    path = write_jsonl(folder / "m.jsonl", [
        {"id": "ok-ddpm", "task": "repaint", "engine": "ddpm", "model": str(tiny_models["ddpm"]), **base,
         "jump_length": 1, "jump_n_sample": 1},
        {"id": "missing", "task": "inpaint", "engine": "sd", **base},  # the run's --model, not cached
    ])
    out = tmp_path / "out"
    code = cli.main(["run", str(path), "-o", str(out), "--executor", "local", "--quiet", "--model", MISSING])
    assert code == 2
    assert "ModelNotAvailableError" in capsys.readouterr().err
    rows = {r["id"]: r for r in all_result_rows(out)}
    assert rows["ok-ddpm"]["status"] == "ok" and rows["ok-ddpm"]["unmasked_max_diff"] == 0
    assert rows["ok-ddpm"]["model"] == str(tiny_models["ddpm"])
    assert rows["missing"]["status"] == "error" and rows["missing"]["error_stage"] == "edit"
    assert f"hf download {MISSING}" in rows["missing"]["error_message"]
