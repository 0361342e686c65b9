"""Regenerate the sample catalog's images (committed; run only to change them).

Persons: the scikit-image astronaut (public domain), its mirror image, and the cameraman.
Garments: flat T-shirt silhouettes on white, plain and striped, like catalog product photos.
"""

from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

HERE = Path(__file__).resolve().parent
COLOURS = [(30, 60, 200), (200, 40, 40), (40, 160, 60), (230, 200, 40)]


def garment(colour: tuple[int, int, int], stripes: bool) -> Image.Image:
    img = np.full((160, 160, 3), 255, np.uint8)
    body = np.zeros((160, 160), bool)
    body[40:150, 45:115] = True  # torso
    body[40:80, 15:145] = True  # sleeves
    cloth = np.empty_like(img)
    cloth[:] = colour
    if stripes:
        cloth[np.arange(160) // 8 % 2 == 0] = (255 - np.array(colour)) // 2
    img[body] = cloth[body]
    return Image.fromarray(img)


def main() -> None:
    astronaut = Image.open(HERE.parent / "assets" / "astronaut.png").convert("RGB")
    astronaut.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(HERE / "mirrored.png", optimize=True)
    Image.fromarray(data.camera()).convert("RGB").resize((200, 200), Image.LANCZOS).save(HERE / "cameraman.png",
                                                                                       optimize=True)
    for i, colour in enumerate(COLOURS):
        garment(colour, stripes=i % 2 == 1).save(HERE / f"garment{i}.png", optimize=True)


if __name__ == "__main__":
    main()
