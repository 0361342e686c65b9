"""Builtin (patch prior) vs OpenCV Telea on three test photos with a centred 25 %-area hole.

Saves a contact sheet (rows: astronaut, coffee, chelsea; columns: masked input, Telea, builtin,
original) and prints, per image and method, how far the fill's statistics are from those of a
ring around the hole: mean Sobel gradient magnitude (texture energy), colour mean and colour std.
Distance (lower = better) = |g_fill - g_ring| / g_ring + |mean_fill - mean_ring| / |std_ring|
+ |std_fill - std_ring| / |std_ring| (colour vectors in RGB, norms Euclidean).

    python -m bench.quality_sheet [--out bench/out/quality_sheet.png] [--size 256] [--seed 0] [--params '{}']
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
from skimage import data as skdata

from editflow.engines.base import EditRequest, composite_unmasked
from editflow.engines.builtin import BuiltinEngine

IMAGES = ("astronaut", "coffee", "chelsea")


def test_image(name: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The skimage photo resized to `size` on its long side, and a centred hole of 25 % area."""
    image = getattr(skdata, name)()
    h, w = image.shape[:2]
    s = size / max(h, w)
    image = cv2.resize(image, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
    h, w = image.shape[:2]
    mask = np.zeros((h, w), np.float32)
    mask[h // 4 : h // 4 + h // 2, w // 4 : w // 4 + w // 2] = 1.0
    return image, mask


def region_stats(image: np.ndarray, region: np.ndarray) -> dict[str, np.ndarray | float]:
    """Mean gradient magnitude, colour mean and colour std of `image` over `region`."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gx, gy = cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1)
    pixels = image[region].astype(np.float32)
    return {"grad": float(np.sqrt(gx**2 + gy**2)[region].mean()), "mean": pixels.mean(0), "std": pixels.std(0)}


def fill_distance(image: np.ndarray, mask: np.ndarray, ring_px: int = 16) -> tuple[float, dict, dict]:
    """Distance of the hole's statistics to the surrounding ring's (see module docstring)."""
    hole = mask > 0
    # Sobel reads 1 px around; keep the hole's stats inside it and the ring clear of the seam.
    inner = cv2.erode(hole.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    outer = cv2.dilate(hole.astype(np.uint8), np.ones((2 * ring_px + 1,) * 2, np.uint8)) > 0
    near = cv2.dilate(hole.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    ring = outer & ~near
    f, r = region_stats(image, inner), region_stats(image, ring)
    scale = float(np.linalg.norm(r["std"])) + 1e-6
    d = (abs(f["grad"] - r["grad"]) / (r["grad"] + 1e-6)
         + float(np.linalg.norm(f["mean"] - r["mean"])) / scale
         + float(np.linalg.norm(f["std"] - r["std"])) / scale)
    return d, f, r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/out/quality_sheet.png")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--params", default="{}", help="JSON row params for the builtin engine")
    args = parser.parse_args()

    engine = BuiltinEngine()
    rows, wins = [], 0
    print(f"{'image':10s} {'method':8s} {'dist':>6s} {'grad':>6s} {'ring':>6s}  mean(fill|ring)            std(fill|ring)")
    for name in IMAGES:
        image, mask = test_image(name, args.size)
        hole = (mask > 0).astype(np.uint8) * 255
        telea = cv2.inpaint(image, hole, 5, cv2.INPAINT_TELEA)
        t0 = time.perf_counter()
        result = engine.edit_batch([EditRequest(id=name, task="inpaint", image=image, mask=mask, seed=args.seed,
                                                 params=json.loads(args.params))])[0]
        if isinstance(result, Exception):
            raise result
        seconds = time.perf_counter() - t0
        builtin = composite_unmasked(image, result.image, mask)
        scores = {}
        for method, out in (("telea", telea), ("builtin", builtin)):
            d, f, r = fill_distance(out, mask)
            scores[method] = d
            print(f"{name:10s} {method:8s} {d:6.3f} {f['grad']:6.1f} {r['grad']:6.1f}  "
                  f"{np.round(f['mean']).astype(int)}|{np.round(r['mean']).astype(int)}  "
                  f"{np.round(f['std']).astype(int)}|{np.round(r['std']).astype(int)}")
        winner = min(scores, key=scores.get)
        wins += winner == "builtin"
        print(f"{name:10s} winner: {winner} (builtin {seconds:.2f} s, nfe {result.nfe})")
        masked = image.copy()
        masked[mask > 0] = (128, 128, 128)
        rows.append(np.concatenate([masked, telea, builtin, image], axis=1))
    print(f"builtin beats Telea on {wins} of {len(IMAGES)} images")

    width = max(r.shape[1] for r in rows)
    sheet = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows], axis=0)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
