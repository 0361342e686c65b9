"""The engine table and typed row params: one table keyed by (engine, task), each class declaring its
tasks, models and params; unknown or mistyped params fail their row only; a new engine is one class
and one table line; the README's engine table is generated from the same declarations."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from editflow.config import RunConfig
from editflow.engines import ENGINES, EditRequest, EditResult, engine_classes, get_engine_class
from editflow.engines.base import JobEngine
from editflow.engines.params import EngineParams, ParamsError, param
from editflow.runners.local import run_local
from tests.conftest import REPO, textured_image, write_image


def request(engine_task: str = "inpaint", **params) -> EditRequest:
    mask = np.zeros((48, 64), np.float32)
    mask[10:30, 20:40] = 1
    return EditRequest(id="r", task=engine_task, image=textured_image(64, 48), mask=mask, seed=1, params=params)


def test_every_table_row_names_a_class_that_declares_that_engine_and_task() -> None:
    for (name, task), _ in ENGINES.items():
        cls = get_engine_class(name, task)
        assert cls.name == name, (name, task, cls)
        assert task in cls.tasks, (name, task, cls)
        assert issubclass(cls.Params, EngineParams)
    sd = get_engine_class("sd")
    assert sd.default_model() == "stable-diffusion-v1-5/stable-diffusion-inpainting"
    assert get_engine_class("builtin").default_model() is None


def test_unknown_params_key_fails_that_row_naming_the_valid_keys() -> None:
    engine = get_engine_class("opencv")()
    bad, good = engine.edit_batch([request(methd="ns"), request(method="ns")])
    assert isinstance(bad, ParamsError)
    assert "unknown params key 'methd'" in str(bad) and "engine opencv" in str(bad)
    assert "valid keys:" in str(bad) and "method" in str(bad) and "radius" in str(bad)
    assert isinstance(good, EditResult) and good.model == "cv2-ns"


def test_wrong_params_type_names_the_key_and_the_type() -> None:
    engine = get_engine_class("builtin")()
    [bad] = engine.edit_batch([request(max_side="big")])
    assert isinstance(bad, ParamsError)
    assert "params.max_side must be an integer or null" in str(bad) and "str" in str(bad)
    with pytest.raises(ParamsError, match="params.sampler must be a boolean"):
        get_engine_class("sd").Params.parse({"sampler": "yes"}, "sd")
    with pytest.raises(ParamsError, match="params.parts must be a string or a list of strings or null"):
        get_engine_class("builtin", "makeup").Params.parse({"parts": 3}, "builtin")


def test_params_parse_keeps_types_and_defaults_in_one_place() -> None:
    Params = get_engine_class("builtin", "tryon").Params
    p = Params.parse({"keep_shading": 0, "max_side": 128, "face": 0}, "builtin")
    assert p.keep_shading == 0 and p.max_side == 128 and p.face == 0
    assert p.restart == 0.4 and p.start == "warp"  # defaults from the dataclass
    assert p.given() == {"keep_shading": 0, "max_side": 128, "face": 0}
    # the mask stage's keys are every engine's
    for _, _, cls in engine_classes():
        assert {"face", "dress_length"} <= {f.name for f in dataclasses.fields(cls.Params)}


def test_unknown_params_key_is_that_rows_error_in_a_run(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", width=64, height=48, seed=1)
    rows = [
        {"id": "typo", "task": "inpaint", "image": "a.png", "mask": "box:10,10,30,30", "engine": "opencv",
         "params": '{"radius": 3, "metod": "ns"}'},
        {"id": "ok", "task": "inpaint", "image": "a.png", "mask": "box:10,10,30,30", "engine": "opencv",
         "params": '{"radius": 3, "method": "ns"}'},
    ]
    config = RunConfig(out_dir=str(tmp_path / "out"), base_dir=str(tmp_path))
    run_local(rows, config)
    got = {r["id"]: r for r in pq.read_table(tmp_path / "out" / "results").to_pylist()}
    assert got["typo"]["status"] == "error" and got["typo"]["error_stage"] == "edit"
    assert got["typo"]["error_type"] == "ParamsError" and "'metod'" in got["typo"]["error_message"]
    assert got["ok"]["status"] == "ok" and got["ok"]["unmasked_max_diff"] == 0


@dataclasses.dataclass(frozen=True)
class ToyParams(EngineParams):
    level: int = param(128, "the grey level painted into the mask")


class ToyEngine(JobEngine):
    """Paints the mask one grey level: the smallest engine there is."""

    name = "toy"
    tasks = frozenset({"inpaint"})
    Params = ToyParams

    def _run(self, jobs):
        out = []
        for job in jobs:
            image = job.request.image.copy()
            image[job.request.mask > 0] = self.params_of(job.request).level
            out.append(EditResult(image=image, model="toy"))
        return out


def test_a_new_engine_is_one_class_and_one_table_line(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(ENGINES, ("toy", "inpaint"), ToyEngine)  # the one table line
    write_image(tmp_path / "a.png", width=64, height=48, seed=1)
    rows = [{"id": "t", "task": "inpaint", "image": "a.png", "mask": "box:10,10,30,30", "engine": "toy",
             "params": '{"level": 7}'},
            {"id": "bad", "task": "sdedit", "image": "a.png", "mask": "box:10,10,30,30", "engine": "toy"}]
    run_local(rows, RunConfig(out_dir=str(tmp_path / "out"), base_dir=str(tmp_path)))
    got = {r["id"]: r for r in pq.read_table(tmp_path / "out" / "results").to_pylist()}
    assert got["t"]["status"] == "ok", got["t"]["error_message"]
    assert got["t"]["engine"] == "toy" and got["t"]["model"] == "toy"
    assert got["bad"]["status"] == "error" and "runs only inpaint" in got["bad"]["error_message"]
    from PIL import Image

    out = np.asarray(Image.open(tmp_path / "out" / got["t"]["output"]))
    assert (out[12:28, 12:28] == 7).all()


def test_readme_engine_table_is_generated_from_the_engine_classes() -> None:
    from editflow.commands.models import engine_table_markdown

    readme = (REPO / "README.md").read_text()
    begin = readme.index("| engine | weights | tasks | what it does |")
    end = readme.index("<!-- end engine table -->")
    assert readme[begin:end] == engine_table_markdown(), "regenerate with `editflow models --markdown`"
