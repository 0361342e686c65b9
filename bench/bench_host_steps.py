"""CPU seconds per `sd` makeup row that the host step moves out of the GPU edit actor.

    python -m bench.bench_host_steps [--n 8] [--size 512]

On the scikit-image astronaut (size x size) with its mirror image as the makeup reference, the
image's face landmarks given (as the mask stage hands them over in `_faces`):

  * ``host_step_new_reference_s``: the host step with a new reference every row (its face mesh, the
    colour-transfer start, the reference crop): what a run with a different look per row paid in
    the GPU actor before, and now pays in a CPU mask actor;
  * ``host_step_same_reference_s``: the same, one look for every row (reference face cached);
  * ``edit_prepare_without_host_s`` / ``edit_prepare_with_host_s``: the engine's own CPU work per
    row before the sampler (tiny random-weight SD at ``face_size`` = size: the crop, masks, tensors)
    when it makes the start itself vs when the row carries it: the ratio is what the GPU actor no
    longer spends on the CPU.

Prints one JSON object (ratios within one run; figures depend on the machine and its load).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import cv2
import numpy as np


def per_call(fn, n: int) -> float:
    fn(-1)  # warm-up (landmarker graph, caches that a worker keeps)
    started = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - started) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8, help="rows per measurement (default 8)")
    parser.add_argument("--size", type=int, default=512, help="image side in px (default 512)")
    args = parser.parse_args()
    from skimage import data

    from editflow.engines import EditRequest, get_engine_class
    from editflow.engines.makeup_sd_start import SDMakeupStart
    from editflow.masks.auto import AutoMasker, MaskContext
    from editflow.masks.spec import parse_mask_spec

    image = cv2.resize(data.astronaut(), (args.size, args.size), interpolation=cv2.INTER_AREA)
    reference = np.ascontiguousarray(image[:, ::-1])
    masker = AutoMasker()
    context = MaskContext(image_key="bench-face")
    mask = masker.make(parse_mask_spec("face:lips+eyes+brows"), image, context).astype(np.float32)
    faces = masker.faces_found(image, context)
    masker.close()

    def request(i: int, reference_key: str, **kw) -> EditRequest:
        return EditRequest(id=f"r{i}", task="makeup", image=image, mask=mask, seed=i, reference=reference,
                           image_key=f"image-{i}", reference_key=reference_key, faces=faces, **kw)

    step = SDMakeupStart()
    results: dict[str, object] = {"size": args.size, "n": args.n, "cpu_count": os.cpu_count()}
    results["host_step_new_reference_s"] = round(per_call(lambda i: step.run(request(i, f"look-{i}")), args.n), 4)
    results["host_step_same_reference_s"] = round(per_call(lambda i: step.run(request(i, "one-look")), args.n), 4)
    step.close()

    from diffusers import UNet2DConditionModel

    from tests.tiny_models import save_tiny_ip_adapter, save_tiny_models

    folder = Path(tempfile.mkdtemp(prefix="editflow-bench-host-"))
    models = save_tiny_models(folder / "tiny")
    unet = UNet2DConditionModel.from_pretrained(models["sd-inpaint"], subfolder="unet")
    adapter = save_tiny_ip_adapter(folder / "ip_adapter", unet)
    engine = get_engine_class("sd", "makeup").from_pretrained(model=str(models["sd-inpaint"]), device="cpu",
                                                             ip_adapter=str(adapter))
    params = {"face_size": args.size - args.size % engine.multiple}

    def prepared(i: int, host: bool) -> None:
        r = request(i, f"look-{i}", params=params)
        r = dataclasses.replace(r, typed_params=engine.params_of(r))
        if host:
            r = dataclasses.replace(r, host=carried[i])
        engine._prepare(0, r)

    helper = SDMakeupStart()
    carried = {i: helper.run(request(i, f"look-{i}")) for i in range(-1, args.n)}  # made in the "mask stage"
    helper.close()
    without = per_call(lambda i: prepared(i, host=False), args.n)
    with_host = per_call(lambda i: prepared(i, host=True), args.n)
    engine.close()
    results["edit_prepare_without_host_s"] = round(without, 4)
    results["edit_prepare_with_host_s"] = round(with_host, 4)
    results["edit_prepare_ratio"] = round(without / max(with_host, 1e-9), 1)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
