"""Masks per second for face parts and garment masks at 512 px on this machine's CPU.

    python -m bench.bench_masks [--n 40] [--size 512]

On the scikit-image astronaut (512 x 512). "cold" = a new image every time (landmarks or pose run,
then the part is drawn: what a run pays per distinct photo); "warm" = the same image and spec again
(the per-actor cache: what every further garment of a catalog try-on pays for its person mask);
"parts only" = the drawing alone, landmarks given. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")
REPO = Path(__file__).resolve().parents[1]

import cv2
import numpy as np

from editflow.masks.auto import AutoMasker, MaskContext
from editflow.masks.spec import parse_mask_spec


def rate(fn, n: int) -> float:
    fn(-1)  # warm-up (model load, first graph run)
    started = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40, help="masks per measurement (default 40)")
    parser.add_argument("--size", type=int, default=512, help="image side in px (default 512)")
    args = parser.parse_args()
    from skimage import data

    image = cv2.resize(data.astronaut(), (args.size, args.size), interpolation=cv2.INTER_AREA)
    masker = AutoMasker()
    results: dict[str, object] = {"size": args.size, "n": args.n, "cpu_count": os.cpu_count()}
    specs = {
        "face:lips+eyes+brows": "face_parts", "face:skin": "face_skin",
        "garment:upper": "garment_upper", "garment:dress": "garment_dress", "person": "person",
    }
    for text, name in specs.items():
        spec = parse_mask_spec(text)
        cold = rate(lambda i: masker.make(spec, image, MaskContext(image_key=f"{name}-{i}")), args.n)
        warm = rate(lambda i: masker.make(spec, image, MaskContext(image_key="same")), args.n * 5)
        results[name] = {"cold_masks_per_s": round(cold, 1), "warm_masks_per_s": round(warm, 1)}
    faces = masker._detect("face", "parts-only", image)
    from editflow.masks.face import face_mask

    results["face_parts"]["parts_only_masks_per_s"] = round(
        rate(lambda i: face_mask(faces, ("lips", "eyes", "brows"), image.shape[:2]), args.n), 1)
    body = masker._detect("pose", "parts-only", image)
    from editflow.masks.body import garment_mask

    results["garment_upper"]["parts_only_masks_per_s"] = round(
        rate(lambda i: garment_mask(body, "upper", image.shape[:2]), args.n), 1)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
