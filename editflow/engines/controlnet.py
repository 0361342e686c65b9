"""A face-landmark ControlNet for the SD engines: loading, and the condition image drawn from our
MediaPipe face mesh.

``params.controlnet`` (or the engine option) names a diffusers `ControlNetModel`: a hub id
(``org/name[@rev]``, e.g. one trained on MediaPipe face-mesh drawings), a local folder, or a
subfolder of a hub repo (``org/name/subfolder``). It is loaded with
``ControlNetModel.from_pretrained`` under editflow's offline rules (editflow.models) and kept per
worker. Its condition is `draw_face_mesh`: the 478 face-mesh landmarks drawn on black the way
MediaPipe's own face-mesh drawing does (tesselation in grey, then the coloured contours of the
brows, eyes, lips and face oval, then the irises), in the crop the UNet sees, so the target's
shapes (lids, lip line, jaw) hold while the makeup changes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from editflow.diffusion.device import freeze
from editflow.models import ModelNotAvailableError, hub_cache_dir, is_offline, parse_model_spec

__all__ = ["load_controlnet", "draw_face_mesh", "condition_tensor"]


def load_controlnet(spec: str, dtype: Any, device: str) -> Any:
    """`ControlNetModel.from_pretrained` for a hub id / folder / ``org/name/subfolder``, on `device`."""
    from diffusers import ControlNetModel

    kwargs: dict[str, Any] = {"torch_dtype": dtype}
    try:
        source = parse_model_spec(spec)
        location, subfolder = source.location, None
        hub = source.kind == "hub"
        revision = source.revision
    except ModelNotAvailableError:
        repo, _, revision = str(spec).partition("@")
        parts = repo.split("/")
        if len(parts) < 3 or str(spec).startswith(("/", ".", "~")):
            raise
        location, subfolder, hub = "/".join(parts[:2]), "/".join(parts[2:]), True
    if hub:
        kwargs.update(cache_dir=str(hub_cache_dir()), local_files_only=is_offline())
        if revision:
            kwargs["revision"] = revision
    else:
        kwargs["local_files_only"] = True
    if subfolder:
        kwargs["subfolder"] = subfolder
    try:
        model = ControlNetModel.from_pretrained(location, **kwargs)
    except Exception as exc:
        why = "HF_HUB_OFFLINE is set" if is_offline() else "it could not be loaded"
        raise ModelNotAvailableError(
            f"ControlNet {spec!r} not available ({why}): give params.controlnet as a local diffusers ControlNetModel "
            f"folder or a hub id cached in {hub_cache_dir()} [{type(exc).__name__}: {str(exc)[:200]}]") from exc
    model = model.to(device)
    freeze(model)
    return model


def draw_face_mesh(points: np.ndarray, size: int) -> np.ndarray:
    """size×size×3 uint8 RGB: face-mesh landmarks (478 or 468, pixels in that square) drawn with
    MediaPipe's default face-mesh styles (tesselation, contours, irises) on black."""
    from mediapipe.framework.formats import landmark_pb2
    from mediapipe.python.solutions import drawing_styles, drawing_utils
    from mediapipe.python.solutions import face_mesh_connections as c

    canvas = np.zeros((size, size, 3), np.uint8)
    landmarks = landmark_pb2.NormalizedLandmarkList(
        landmark=[landmark_pb2.NormalizedLandmark(x=float(x) / size, y=float(y) / size, z=0.0) for x, y in points])
    drawing_utils.draw_landmarks(canvas, landmarks, c.FACEMESH_TESSELATION, landmark_drawing_spec=None,
                                 connection_drawing_spec=drawing_styles.get_default_face_mesh_tesselation_style())
    drawing_utils.draw_landmarks(canvas, landmarks, c.FACEMESH_CONTOURS, landmark_drawing_spec=None,
                                 connection_drawing_spec=drawing_styles.get_default_face_mesh_contours_style())
    if len(points) >= 478:
        drawing_utils.draw_landmarks(canvas, landmarks, c.FACEMESH_IRISES, landmark_drawing_spec=None,
                                     connection_drawing_spec=drawing_styles.get_default_face_mesh_iris_connections_style())
    # MediaPipe's styles are BGR (they target cv2.imshow); the ControlNet drawings are RGB images
    return np.ascontiguousarray(canvas[..., ::-1])


def condition_tensor(drawing: np.ndarray) -> torch.Tensor:
    """H×W×3 uint8 -> [1, 3, H, W] float in [0, 1], as diffusers' ControlNet pipelines prepare the image."""
    return torch.from_numpy(drawing).permute(2, 0, 1)[None].float() / 255.0
