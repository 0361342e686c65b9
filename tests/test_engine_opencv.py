"""The opencv baseline engine and the exact paste-back every engine gets."""

from __future__ import annotations

import numpy as np
import pytest

from editflow.engines import EngineError, get_engine_class
from editflow.engines.base import EditRequest, composite_unmasked, unmasked_max_diff
from tests.conftest import textured_image


def request(task="inpaint", **params):
    image = textured_image(64, 48)
    mask = np.zeros((48, 64), np.float32)
    mask[10:30, 20:40] = 1
    return EditRequest(id="r", task=task, image=image, mask=mask, seed=1, params=params)


@pytest.mark.parametrize("method", ["telea", "ns"])
def test_opencv_fills_only_the_hole(method):
    engine = get_engine_class("opencv")()
    req = request(method=method)
    [result] = engine.edit_batch([req])
    output = composite_unmasked(req.image, result.image, req.mask)
    assert output.shape == req.image.shape
    assert unmasked_max_diff(req.image, output, req.mask) == 0
    hole = req.mask > 0
    assert np.abs(output[hole].astype(int) - req.image[hole].astype(int)).mean() > 1
    assert result.nfe == 0


def test_opencv_reports_bad_requests_per_row():
    engine = get_engine_class("opencv")()
    results = engine.edit_batch([request(method="magic"), request(task="tryon"), request()])
    assert isinstance(results[0], EngineError) and "method" in str(results[0])
    assert isinstance(results[1], EngineError) and "tryon" in str(results[1])
    assert not isinstance(results[2], Exception)


def test_composite_keeps_unmasked_pixels_exactly_with_soft_masks():
    original = textured_image(32, 32, seed=3)
    edited = 255 - original
    mask = np.zeros((32, 32), np.float32)
    mask[8:24, 8:24] = 1
    mask[6:8, 8:24] = 0.5
    out = composite_unmasked(original, edited, mask)
    assert unmasked_max_diff(original, out, mask) == 0
    assert (out[8:24, 8:24] == edited[8:24, 8:24]).all()


def test_unknown_engine_is_a_clear_error():
    with pytest.raises(EngineError, match="unknown engine 'nope'"):
        get_engine_class("nope")
