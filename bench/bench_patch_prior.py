"""Speed of the builtin engine (patch prior) on a 256 px image with a centred 25 %-area hole.

Prints the median seconds per image over `--runs` runs (default parameters), the time spent in
patch matching (denoiser.predict), its effective GFLOP/s (2·M·N·D per logits GEMM + 2·M·N·D per
weighted average) and that rate as a fraction of `torch.mm` GFLOP/s measured in the same run on
the same kind of shape (queries × data with inner dimension D = 147).

    python -m bench.bench_patch_prior [--runs 5] [--size 256] [--device cpu] [--task inpaint]
"""

from __future__ import annotations

import argparse
import statistics
import time

import cv2
import numpy as np
import torch
from skimage import data as skdata

from editflow.engines.base import EditRequest
from editflow.engines.builtin import BuiltinEngine


def mm_gflops(m: int, n: int, d: int, device: str, repeats: int = 10) -> float:
    """torch.mm rate on an [m, d] × [d, n] product (the logits GEMM's shape)."""
    a, b = torch.randn(m, d, device=device), torch.randn(d, n, device=device)
    for _ in range(3):
        torch.mm(a, b)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * m * n * d / statistics.median(times) / 1e9


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--task", default="inpaint", choices=["inpaint", "sdedit", "repaint"])
    args = parser.parse_args()

    image = cv2.resize(skdata.astronaut(), (args.size, args.size), interpolation=cv2.INTER_AREA)
    side = args.size // 2
    mask = np.zeros((args.size, args.size), np.float32)
    mask[args.size // 4 : args.size // 4 + side, args.size // 4 : args.size // 4 + side] = 1.0
    engine = BuiltinEngine(device=args.device)
    den = engine.denoiser
    predict = den.predict
    spent = [0.0]

    def timed_predict(*a, **k):  # time the matching only
        _sync(args.device)
        t0 = time.perf_counter()
        out = predict(*a, **k)
        _sync(args.device)
        spent[0] += time.perf_counter() - t0
        return out

    den.predict = timed_predict
    request = EditRequest(id="bench", task=args.task, image=image, mask=mask, seed=0)
    engine.edit_batch([request])  # warm-up
    totals, match_s, flops = [], [], []
    for _ in range(args.runs):
        den.flops, spent[0] = 0, 0.0
        t0 = time.perf_counter()
        result = engine.edit_batch([request])[0]
        totals.append(time.perf_counter() - t0)
        if isinstance(result, Exception):
            raise result
        match_s.append(spent[0])
        flops.append(den.flops)
    total, matching = statistics.median(totals), statistics.median(match_s)
    rate = statistics.median(f / s for f, s in zip(flops, match_s)) / 1e9
    ref = mm_gflops(1024, 4096, 147, args.device)
    print(f"task {args.task}, device {args.device}, threads {torch.get_num_threads()}, image {args.size}x{args.size}, hole 25 % area")
    print(f"nfe {result.nfe}, proc {result.proc_width}x{result.proc_height}, steps {result.steps}")
    print(f"seconds per image: median {total:.3f} (runs: {', '.join(f'{t:.3f}' for t in totals)})")
    print(f"patch matching: {matching:.3f} s, {flops[0] / 1e9:.1f} GFLOP, {rate:.1f} GFLOP/s")
    print(f"torch.mm [1024x147]x[147x4096]: {ref:.1f} GFLOP/s -> matching at {100 * rate / ref:.0f} % of torch.mm")


if __name__ == "__main__":
    main()
