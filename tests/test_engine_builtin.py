"""Tests of the weight-free default engine (editflow.engines.builtin) on a small real photo."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data as skdata

import editflow.engines.builtin as builtin
from editflow.engines import get_engine_class
from editflow.engines.base import EditRequest, EngineError
from editflow.engines.builtin import BuiltinEngine

TASKS = ("inpaint", "sdedit", "repaint", "tryon", "makeup")


@pytest.fixture(scope="module")
def photo() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Astronaut at 80x80 with a 24x28 hole; coffee at 48x64 as the reference."""
    image = cv2.resize(skdata.astronaut(), (80, 80), interpolation=cv2.INTER_AREA)
    mask = np.zeros((80, 80), np.float32)
    mask[30:54, 24:52] = 1.0
    reference = cv2.resize(skdata.coffee(), (64, 48), interpolation=cv2.INTER_AREA)
    return image, mask, reference


@pytest.fixture(scope="module")
def engine() -> BuiltinEngine:
    return BuiltinEngine()


def _request(photo, task: str, seed: int = 0, **kw) -> EditRequest:
    image, mask, reference = photo
    ref = reference if task in ("tryon", "makeup") else None
    return EditRequest(id=f"{task}-{seed}", task=task, image=image, mask=mask, seed=seed, reference=ref, **kw)


def _run(engine: BuiltinEngine, request: EditRequest):
    result = engine.edit_batch([request])[0]
    if isinstance(result, Exception):
        raise result
    return result


def test_registered_as_default_engine():
    assert get_engine_class("builtin") is BuiltinEngine
    assert BuiltinEngine.tasks == frozenset(TASKS)


@pytest.mark.parametrize("task", TASKS)
def test_task_shape_determinism_and_seed(engine, photo, task, monkeypatch):
    image, mask, _ = photo
    reported: list[int] = []
    real = builtin.masked_sample

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        reported.append(out.nfe)
        return out

    monkeypatch.setattr(builtin, "masked_sample", spy)
    first = _run(engine, _request(photo, task, seed=7))
    assert first.image.shape == image.shape and first.image.dtype == np.uint8
    assert first.nfe > 0 and first.nfe == sum(reported)
    assert first.scheduler == "ddim" and first.steps and first.strength
    assert (first.proc_width, first.proc_height) == (80, 80)
    # Only masked pixels change.
    assert np.array_equal(first.image[mask == 0], image[mask == 0])
    again = _run(engine, _request(photo, task, seed=7))
    assert np.array_equal(first.image, again.image)
    other = _run(engine, _request(photo, task, seed=8))
    assert not np.array_equal(first.image, other.image)


def test_task_defaults(engine, photo):
    assert _run(engine, _request(photo, "inpaint")).strength == 1.0
    assert _run(engine, _request(photo, "sdedit")).strength == pytest.approx(0.6)
    assert _run(engine, _request(photo, "sdedit", strength=0.5)).strength == pytest.approx(0.5)
    rp = _run(engine, _request(photo, "repaint"))
    assert (rp.jump_length, rp.jump_n_sample) == builtin.DEFAULT_JUMPS
    plain = _run(engine, _request(photo, "inpaint"))
    assert rp.nfe > plain.nfe  # resampling costs extra denoiser calls


@pytest.mark.parametrize("task", ["tryon", "makeup"])
def test_reference_tasks_need_a_reference(engine, photo, task):
    image, mask, _ = photo
    out = engine.edit_batch([EditRequest(id="x", task=task, image=image, mask=mask, seed=0)])
    assert isinstance(out[0], EngineError)
    assert str(out[0]) == f"task {task} needs a reference image"


def test_bad_rows_fail_alone(engine, photo):
    image, mask, _ = photo
    rows = [
        EditRequest(id="bad-task", task="colorize", image=image, mask=mask, seed=0),
        EditRequest(id="empty", task="inpaint", image=image, mask=np.zeros_like(mask), seed=0),
        EditRequest(id="bad-init", task="inpaint", image=image, mask=mask, seed=0, params={"init": "magic"}),
        _request(photo, "inpaint", seed=3),
    ]
    out = engine.edit_batch(rows)
    assert all(isinstance(r, EngineError) for r in out[:3])
    assert out[3].image.shape == image.shape


def test_row_same_alone_or_in_batch(engine, photo):
    alone = _run(engine, _request(photo, "inpaint", seed=5))
    batch = engine.edit_batch([_request(photo, "inpaint", seed=4), _request(photo, "inpaint", seed=5)])
    assert np.array_equal(batch[1].image, alone.image)
    assert not np.array_equal(batch[0].image, batch[1].image)


def test_telea_init(engine, photo):
    result = _run(engine, _request(photo, "inpaint", params={"init": "telea"}))
    assert result.strength == pytest.approx(0.8)
    assert result.image.shape == photo[0].shape


def test_large_image_is_cropped_and_capped(engine):
    image = cv2.resize(skdata.chelsea(), (600, 400), interpolation=cv2.INTER_AREA)
    mask = np.zeros((400, 600), np.float32)
    mask[150:230, 300:420] = 1.0  # 80 x 120 hole: crop with context, long side capped at 128
    result = _run(engine, EditRequest(id="big", task="inpaint", image=image, mask=mask, seed=0,
                                      params={"max_side": 128}))
    assert result.image.shape == image.shape
    assert max(result.proc_width, result.proc_height) == 128
    assert np.array_equal(result.image[mask == 0], image[mask == 0])
    assert not np.array_equal(result.image[mask > 0], image[mask > 0])


def test_whole_image_sdedit_uses_the_image_itself(engine, photo):
    image = photo[0]
    result = _run(engine, EditRequest(id="all", task="sdedit", image=image, mask=np.ones((80, 80), np.float32),
                                      seed=0, strength=0.4))
    assert result.image.shape == image.shape
    # A light SDEdit of the whole image stays close to it.
    assert np.abs(result.image.astype(int) - image.astype(int)).mean() < 25
