"""Model-backed masks through the runners: task defaults, per-actor reuse, OUT/masks, error rows,
SAM prompts via the manifest, and `editflow masks` previews."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from editflow.config import RunConfig
from editflow.commands import masks as preview
from editflow.runners import local as local_runner
from editflow.runners.stages import MaskStage, PrepareStage, new_row
from tests.conftest import write_image, write_jsonl
from tests.test_masks_sam import TINY_BUILDER, tiny_sam

from skimage import data as skimage_data  # noqa: E402


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(skimage_data.astronaut()).save(folder / "astronaut.png")
    Image.fromarray(skimage_data.coffee()).save(folder / "coffee.png")
    write_image(folder / "plain.png", width=120, height=90, seed=4)
    return folder


def masked(rows: list[dict], config: RunConfig, stage: MaskStage | None = None) -> tuple[list[dict], MaskStage]:
    stage = stage or MaskStage(config)
    return stage(PrepareStage(config)([new_row(r, config.run_id) for r in rows])), stage


def test_task_defaults_and_reuse_across_rows(photos: Path, tmp_path: Path) -> None:
    config = RunConfig(out_dir=str(tmp_path), base_dir=str(photos))
    garments = [{"id": f"tryon-{i}", "task": "tryon", "image": "astronaut.png", "category": "upper",
                 "reference": "plain.png"} for i in range(4)]  # a catalog: one person, many garments
    rows, stage = masked(garments + [{"id": "makeup", "task": "makeup", "image": "astronaut.png", "reference": "plain.png"}], config)
    assert all(r["status"] == "ok" for r in rows), [r.get("error_message") for r in rows]
    assert [r["mask_spec"] for r in rows] == ["garment:upper"] * 4 + ["face:lips+eyes+brows"]
    for row in rows[1:4]:
        np.testing.assert_array_equal(row["_mask"], rows[0]["_mask"])
    stats = stage.auto.stats
    assert stats["pose_runs"] == 1 and stats["face_runs"] == 1
    assert stats["mask_misses"] == 2 and stats["mask_hits"] == 3
    # a later batch on the same actor still reuses them
    again, _ = masked([{"id": "tryon-9", "task": "tryon", "image": "astronaut.png", "category": "upper", "reference": "plain.png"}], config, stage)
    assert again[0]["status"] == "ok" and stage.auto.stats["pose_runs"] == 1


def test_local_run_writes_masks_and_areas_and_error_rows(photos: Path, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    base = {"task": "inpaint", "engine": "opencv", "image": "astronaut.png"}
    manifest = write_jsonl(photos / "masks.jsonl", [
        {"id": "lips", **base, "mask": "face:lips"},
        {"id": "skin", **base, "mask": "face:skin", "mask_grow": 2},
        {"id": "upper", **base, "mask": "garment:upper"},
        {"id": "person", **base, "mask": "person"},
        {"id": "coffee-face", **base, "image": "coffee.png", "mask": "face:lips"},
        {"id": "coffee-person", **base, "image": "coffee.png", "mask": "garment:upper"},
    ])
    from editflow.manifest import read_manifest
    from editflow.runners.driver import run_manifest

    out = tmp_path / "out"
    summary = run_manifest(read_manifest(manifest), RunConfig(out_dir=str(out), base_dir=str(photos)),
                           executor="local", progress=False)
    rows = {r["id"]: r for p in sorted((out / "results").glob("*.parquet")) for r in pq.read_table(p).to_pylist()}
    assert summary["exit_code"] == 2
    for key in ("lips", "skin", "upper", "person"):
        row = rows[key]
        assert row["status"] == "ok", row["error_message"]
        mask = np.asarray(Image.open(out / row["mask_output"]))
        assert mask.shape == (512, 512)
        assert abs((mask > 127).mean() - row["mask_area"]) < 0.01 and row["mask_area"] > 0
    assert rows["lips"]["mask_area"] < 0.003 < rows["skin"]["mask_area"] < rows["upper"]["mask_area"]
    assert (rows["coffee-face"]["status"], rows["coffee-face"]["error_stage"]) == ("error", "mask")
    assert "no face found" in rows["coffee-face"]["error_message"]
    assert "no person found" in rows["coffee-person"]["error_message"]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    import torch

    path = tmp_path_factory.mktemp("sam-ckpt") / "tiny_sam.pth"
    torch.save(tiny_sam().state_dict(), path)
    return path


def test_sam_prompts_through_the_manifest_runner(photos: Path, tmp_path: Path, tiny_checkpoint: Path) -> None:
    config = RunConfig(out_dir=str(tmp_path / "out"), base_dir=str(photos), engine="opencv",
                       sam_checkpoint=str(tiny_checkpoint), sam_model_type=TINY_BUILDER)
    base = {"task": "inpaint", "image": "plain.png"}
    raws = [
        {"id": "pt", **base, "mask": "sam:points=30,40,1"},
        {"id": "pts", **base, "mask": "sam:points=30,40,1;100,70,0"},
        {"id": "box", **base, "mask": "sam:box=10,10,80,70"},
    ]
    rows, stage = masked(raws, config)
    assert all(r["status"] == "ok" for r in rows), [r.get("error_message") for r in rows]
    assert all(r["_mask"].shape == (90, 120) for r in rows)
    assert stage.auto.sam.embeddings_computed == 1  # one embedding for the three prompts on one image
    # and end to end through the local runner: masks written at the image's size
    local_runner.run_local(raws, config)
    written = sorted((tmp_path / "out" / "masks").glob("*.png"))
    assert len(written) == 3 and all(Image.open(p).size == (120, 90) for p in written)


def test_sam_without_checkpoint_is_a_row_error(photos: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("EDITFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EDITFLOW_SAM_CHECKPOINT", raising=False)
    config = RunConfig(out_dir=str(tmp_path), base_dir=str(photos))
    rows, _ = masked([{"id": "s", "task": "inpaint", "image": "plain.png", "mask": "sam:box=1,1,50,50"},
                      {"id": "b", "task": "inpaint", "image": "plain.png", "mask": "box:1,1,50,50"}], config)
    assert rows[0]["status"] == "error" and rows[0]["error_type"] == "SamCheckpointError"
    assert "sam_vit_b_01ec64.pth" in rows[0]["error_message"] and "sam_checkpoint" in rows[0]["error_message"]
    assert rows[1]["status"] == "ok"


def test_masks_command_writes_masks_and_overlays(photos: Path, tmp_path: Path) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    preview.add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "previews"
    args = parser.parse_args(["masks", str(photos / "astronaut.png"), "--mask", "face:lips", "--mask", "garment:upper",
                              "-o", str(out)])
    assert preview.run(args) == 0
    records = [json.loads(line) for line in (out / "masks.jsonl").read_text().splitlines()]
    assert [r["mask_spec"] for r in records] == ["face:lips", "garment:upper"]
    for record in records:
        over = np.asarray(Image.open(out / record["overlay"])).astype(int)
        mask = np.asarray(Image.open(out / record["mask"])) > 127
        photo = skimage_data.astronaut().astype(int)
        assert over.shape == photo.shape
        assert np.abs(over - photo)[mask].mean() > 20  # tinted where the mask is
        outside = np.ones_like(mask)
        outside[max(0, np.nonzero(mask)[0].min() - 4):np.nonzero(mask)[0].max() + 5] = False
        assert np.abs(over - photo)[outside].max() == 0  # untouched far from it
    # a manifest source: each row's own mask; failures are listed and give exit code 2
    manifest = write_jsonl(photos / "preview.jsonl", [
        {"id": "a", "task": "makeup", "image": "astronaut.png", "reference": "plain.png"},
        {"id": "c", "task": "inpaint", "image": "coffee.png", "mask": "face:lips"},
    ])
    args = parser.parse_args(["masks", str(manifest), "-o", str(tmp_path / "p2")])
    assert preview.run(args) == 2
    records = [json.loads(line) for line in (tmp_path / "p2" / "masks.jsonl").read_text().splitlines()]
    assert records[0]["status"] == "ok" and records[0]["mask_spec"] == "face:lips+eyes+brows"
    assert records[1]["status"] == "error" and "no face found" in records[1]["error"]
