"""What the `compile` switch costs and changes: the first and second row through the `sd` engine with
the UNet compiled by each torch.compile mode / backend, against the uncompiled engine.

    python -m bench.bench_compile                          # tiny test models on the CPU
    python -m bench.bench_compile --compile off aot_eager  # only these settings
    python -m bench.bench_compile --device cuda            # on a GPU

Per setting it prints the seconds of the first row on each path (the compile: dynamo tracing, and for
inductor modes the code generation, C++ on the CPU, Triton on CUDA), of a second row (steady state),
and the largest pixel difference from the uncompiled row. Set TORCHINDUCTOR_CACHE_DIR to a fresh
folder for a cold compile (inductor caches its kernels on disk between processes).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

SETTINGS = ("off", "aot_eager", "default", "max-autotune-no-cudagraphs")


def main() -> None:
    import torch._dynamo

    from editflow.engines.base import EditRequest
    from editflow.engines.sd import SDEngine
    from tests.conftest import textured_image
    from tests.tiny_models import save_tiny_models

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compile", nargs="+", default=list(SETTINGS), help="settings to time (off = uncompiled)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    model = str(save_tiny_models(Path(tempfile.mkdtemp()) / "tiny")["sd-inpaint"])
    image = textured_image(64, 56, seed=31)
    mask = np.zeros((56, 64), np.float32)
    mask[14:46, 12:52] = 1
    paths = {"sampler": "repaint", "pipeline": "inpaint"}

    def row(task: str, seed: int) -> EditRequest:
        return EditRequest(id="r", task=task, image=image, mask=mask, seed=seed, steps=3, prompt="a red cat")

    def run(engine: SDEngine, request: EditRequest) -> tuple[float, np.ndarray]:
        t0 = time.perf_counter()
        (result,) = engine.edit_batch([request])
        if isinstance(result, Exception):
            raise result
        return round(time.perf_counter() - t0, 2), result.image

    baseline: dict[str, np.ndarray] = {}
    for setting in ["off"] + [s for s in args.compile if s != "off"]:
        torch._dynamo.reset()
        engine = SDEngine.from_pretrained(model=model, device=args.device,
                                          compile=None if setting == "off" else setting)
        report: dict = {"compile": setting}
        for path, task in paths.items():
            first, image_out = run(engine, row(task, 7))
            second, _ = run(engine, row(task, 8))
            baseline.setdefault(path, image_out)
            diff = int(np.abs(image_out.astype(int) - baseline[path].astype(int)).max())
            report[path] = {"first_row_s": first, "second_row_s": second, "max_pixel_diff_vs_off": diff}
        if setting in args.compile:
            print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
