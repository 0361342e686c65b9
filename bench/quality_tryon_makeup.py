"""Before/after sheets of the weight-free try-on and makeup engines (engine builtin).

Renders, with the code in this checkout ("after") and, given `--rev`, with that git revision's
`editflow` package ("before", exported by `git archive` into a temporary folder and run in a
subprocess with it first on PYTHONPATH), each revision's own masks and engine:

* try-on: the astronaut (manifests/assets/astronaut.png) in the checked T-shirt
  (manifests/assets/garment_tshirt_checked.png), mask `garment:upper`; columns: garment | mask
  before | result before | mask after | result after;
* makeup: her face (a crop) made up after a reference with plum lips, blue eyeshadow, dark liner
  and green eyeballs (made here from makeup_reference.png with this checkout's face masks, so both
  revisions get the same reference), mask `face:lips+eyes+eyeshadow+brows`; columns: reference |
  before | after, then the eyes zoomed 3x (target | before | after).

Prints, per revision: try-on — seconds per row (`fit` box, then the default),  the share of the mask that turned garment-blue, how much of the mask
lies above the shoulders (hair, neck) and beside the torso; makeup — the largest and mean change of
the eyeball pixels (this checkout's `eye_opening`), the eyeshadow's and lips' (a, b) distance to
the reference's.

    python -m bench.quality_tryon_makeup --rev 5038769 [--out bench/out] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "manifests" / "assets"
MAKEUP_SPEC = "face:lips+eyes+eyeshadow+brows"
SHADOW_AB, EYEBALL_AB = (5.0, -45.0), (-60.0, 40.0)


def _rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _lab(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)


def _face_crop() -> np.ndarray:
    return cv2.resize(_rgb(ASSETS / "astronaut.png")[0:160, 45:205], (256, 256), interpolation=cv2.INTER_CUBIC)


def make_reference(folder: Path) -> np.ndarray:
    """The makeup reference with eye makeup and coloured eyeballs painted on (this checkout's masks)."""
    from editflow.masks.face import FaceLandmarker, part_masks

    reference = _rgb(ASSETS / "makeup_reference.png")
    landmarker = FaceLandmarker()
    try:
        parts = part_masks(landmarker.detect(reference)[0], reference.shape[:2])
    finally:
        landmarker.close()
    values = _lab(reference)
    values[parts["eyeshadow"] > 0, 1:] = SHADOW_AB
    values[parts["eyes"] > 0, 0] *= 0.3
    values[parts["eye_opening"] > 0, 1:] = EYEBALL_AB
    out = np.clip(np.rint(cv2.cvtColor(values, cv2.COLOR_LAB2RGB) * 255), 0, 255).astype(np.uint8)
    cv2.imwrite(str(folder / "reference.png"), cv2.cvtColor(out, cv2.COLOR_RGB2BGR))
    return out


def render(folder: Path, seed: int) -> None:
    """Masks and outputs of the importable `editflow` (whichever revision PYTHONPATH gives)."""
    from editflow.engines import EditRequest, get_engine_class
    from editflow.engines.base import composite_unmasked
    from editflow.masks.auto import AutoMasker, MaskContext
    from editflow.masks.spec import parse_mask_spec

    masker = AutoMasker()
    person, garment = _rgb(ASSETS / "astronaut.png"), _rgb(ASSETS / "garment_tshirt_checked.png")
    mask = masker.make(parse_mask_spec("garment:upper"), person, MaskContext(image_key="person"))
    tryon = get_engine_class("builtin", "tryon")()
    seconds = {}
    for fit in ("box", "pose"):  # `fit` is this param: an older engine ignores it
        started = time.perf_counter()
        result = tryon.edit_batch([EditRequest(id="t", task="tryon", image=person, mask=mask, seed=seed,
                                               reference=garment, category="upper", reference_key="g",
                                               image_key="person", params={"fit": fit})])[0]
        seconds[fit] = time.perf_counter() - started
        if isinstance(result, Exception):
            raise result
    print(f"{folder.name:7s} try-on seconds per row: params.fit box {seconds['box']:.1f}, "
          f"default (pose) {seconds['pose']:.1f} (the first call also prepares the garment)")
    np.save(folder / "tryon_mask.npy", mask)
    np.save(folder / "tryon.npy", composite_unmasked(person, result.image, mask))

    face, reference = _face_crop(), _rgb(folder.parent / "reference.png")
    face_mask = masker.make(parse_mask_spec(MAKEUP_SPEC), face, MaskContext(image_key="face"))
    makeup = get_engine_class("builtin", "makeup")()
    result = makeup.edit_batch([EditRequest(id="m", task="makeup", image=face, mask=face_mask, seed=seed,
                                            reference=reference, reference_key="r", image_key="face")])[0]
    if isinstance(result, Exception):
        raise result
    np.save(folder / "makeup_mask.npy", face_mask)
    np.save(folder / "makeup.npy", composite_unmasked(face, result.image, face_mask))
    masker.close()


def _overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = image.astype(np.float32)
    on = mask > 0
    out[on] = 0.5 * out[on] + 0.5 * np.array([0, 255, 0], np.float32)
    return out.astype(np.uint8)


def _measure(name: str, folder: Path, parts: dict[str, np.ndarray], shoulders_y: float) -> None:
    person, face = _rgb(ASSETS / "astronaut.png"), _face_crop()
    reference = _rgb(folder.parent / "reference.png")
    mask, out = np.load(folder / "tryon_mask.npy") > 0, np.load(folder / "tryon.npy")
    blue = _lab(out)[..., 2] < -25
    print(f"{name:7s} try-on: mask {mask.mean():.3f} of the picture, {blue[mask].mean():.3f} of it garment-blue, "
          f"{mask[: int(shoulders_y)].sum()} mask px above the shoulder line")
    made = np.load(folder / "makeup.npy")
    eyeball = parts["eye_opening"] > 0
    change = np.abs(made.astype(int) - face.astype(int))[eyeball]
    lab_out, lab_face = _lab(made), _lab(face)
    shadow = parts["eyeshadow"] > 0
    ref_lips = _lab(reference)[parts["ref_lips"] > 0][:, 1:].mean(axis=0)
    print(f"{name:7s} makeup: eyeball change max {change.max()} mean {change.mean():.2f}; eyeball (a,b) "
          f"{np.round(lab_out[eyeball][:, 1:].mean(axis=0), 1)} (target's {np.round(lab_face[eyeball][:, 1:].mean(axis=0), 1)}); "
          f"eyeshadow (a,b) distance to the reference's {np.linalg.norm(lab_out[shadow][:, 1:].mean(0) - SHADOW_AB):.1f} "
          f"(target's {np.linalg.norm(lab_face[shadow][:, 1:].mean(0) - SHADOW_AB):.1f}); lips "
          f"{np.linalg.norm(lab_out[parts['lips'] > 0][:, 1:].mean(0) - ref_lips):.1f} "
          f"(target's {np.linalg.norm(lab_face[parts['lips'] > 0][:, 1:].mean(0) - ref_lips):.1f})")


def _sheets(folders: dict[str, Path], out_dir: Path, eye_box: tuple[int, int, int, int]) -> None:
    person, garment, face = (_rgb(ASSETS / "astronaut.png"), _rgb(ASSETS / "garment_tshirt_checked.png"),
                             _face_crop())
    reference = _rgb(next(iter(folders.values())).parent / "reference.png")
    row = [cv2.resize(garment, person.shape[1::-1])]
    for folder in folders.values():
        row += [_overlay(person, np.load(folder / "tryon_mask.npy")), np.load(folder / "tryon.npy")]
    tryon = np.concatenate(row, axis=1)
    faces = [cv2.resize(reference, face.shape[1::-1])] + [np.load(f / "makeup.npy") for f in folders.values()]
    y0, y1, x0, x1 = eye_box
    eyes = [cv2.resize(img[y0:y1, x0:x1], None, fx=3, fy=3, interpolation=cv2.INTER_NEAREST)
            for img in [face] + faces[1:]]
    eyes = np.concatenate(eyes, axis=1)
    width = max(eyes.shape[1], 256 * len(faces))
    pad = lambda a: np.pad(a, ((0, 0), (0, width - a.shape[1]), (0, 0)), constant_values=255)  # noqa: E731
    makeup = np.concatenate([pad(np.concatenate(faces, axis=1)), pad(eyes)], axis=0)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, sheet in (("quality_tryon.png", tryon), ("quality_makeup.png", makeup)):
        cv2.imwrite(str(out_dir / name), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
        print(f"wrote {out_dir / name} ({' | '.join(folders)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", help="git revision to render as 'before' (e.g. the merge-base)")
    parser.add_argument("--out", default="bench/out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--render", help=argparse.SUPPRESS)  # internal: render into this folder
    args = parser.parse_args()
    if args.render:
        render(Path(args.render), args.seed)
        return
    with tempfile.TemporaryDirectory(prefix="quality-") as tmp:
        tmp_path = Path(tmp)
        make_reference(tmp_path)
        folders: dict[str, Path] = {}
        if args.rev:
            source = tmp_path / "source"
            source.mkdir()
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.rev, "editflow"],
                                     check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
            folders["before"] = tmp_path / "before"
            folders["before"].mkdir()
            env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(source), str(ROOT)]))
            subprocess.run([sys.executable, __file__, "--render", str(folders["before"]), "--seed", str(args.seed)],
                           check=True, env=env, cwd=str(source))
        folders["after"] = tmp_path / "after"
        folders["after"].mkdir()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        subprocess.run([sys.executable, __file__, "--render", str(folders["after"]), "--seed", str(args.seed)],
                       check=True, env=env, cwd=str(ROOT))

        from editflow.masks.body import PoseModel
        from editflow.masks.face import FaceLandmarker, part_masks

        landmarker = FaceLandmarker()
        parts = part_masks(landmarker.detect(_face_crop())[0], (256, 256))
        reference = _rgb(tmp_path / "reference.png")
        parts["ref_lips"] = part_masks(landmarker.detect(reference)[0], reference.shape[:2])["lips"]
        landmarker.close()
        pose = PoseModel()
        body = pose.detect(_rgb(ASSETS / "astronaut.png"))
        pose.close()
        shoulders_y = float(body.mid(11, 12)[1])
        for name, folder in folders.items():
            _measure(name, folder, parts, shoulders_y)
        ys, xs = np.nonzero(parts["eye_opening"])
        eye_box = (max(0, ys.min() - 12), ys.max() + 12, max(0, xs.min() - 10), xs.max() + 10)
        _sheets(folders, Path(args.out), eye_box)
        print(json.dumps({"rev": args.rev, "seed": args.seed}))


if __name__ == "__main__":
    main()
