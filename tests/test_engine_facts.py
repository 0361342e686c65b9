"""What the mask stage found travels with the row: the makeup engine uses the face landmarks the
mask stage detected instead of running its own landmarker on the image again, with the same
bytes; and stages close their engines and maskers when a worker is done."""

from __future__ import annotations

import cv2
import numpy as np
from skimage import data as skimage_data

from editflow.engines import EditRequest, get_engine_class
from editflow.masks.auto import AutoMasker, MaskContext
from editflow.masks.spec import parse_mask_spec


def test_makeup_reuses_the_mask_stages_face_landmarks() -> None:
    photo = skimage_data.astronaut()
    target = cv2.resize(photo[0:320, 90:410], (256, 256), interpolation=cv2.INTER_AREA)
    reference = cv2.resize(photo[20:260, 130:370], (224, 224), interpolation=cv2.INTER_AREA)
    masker = AutoMasker()
    context = MaskContext(image_key="astronaut-face")
    mask = masker.make(parse_mask_spec("face:lips"), target, context)
    faces = masker.faces_found(target, context)
    masker.close()
    assert faces is not None and faces.shape[1:] == (478, 2) and faces.dtype == np.float32

    def run(**kwargs):
        engine = get_engine_class("builtin", "makeup")()
        request = EditRequest(id="m", task="makeup", image=target, mask=mask, seed=3, reference=reference,
                              reference_key="ref", image_key="astronaut-face", **kwargs)
        (result,) = engine.edit_batch([request])
        assert not isinstance(result, Exception), result
        calls = engine.face_data.landmarker.calls
        engine.close()
        return result.image, calls

    with_facts, calls_with = run(faces=faces)
    without, calls_without = run()
    assert calls_with == 1 and calls_without == 2  # the reference only, vs reference and image
    np.testing.assert_array_equal(with_facts, without)


def test_edit_stage_closes_its_engines(tmp_path) -> None:
    from editflow.config import RunConfig
    from editflow.runners.stages import EditStage

    stage = EditStage(RunConfig(out_dir=str(tmp_path)))
    engine = stage.engine("builtin", "makeup", None)
    landmarker = engine.face_data.landmarker  # started on first use
    stage.close()
    assert engine.face_data._landmarker is None and stage.engines == {}
    assert landmarker is not None
