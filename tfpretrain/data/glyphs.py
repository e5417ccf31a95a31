"""Printed characters rendered like the UCI handwritten digits: an offline source task with many
classes for supervised image pretraining.

Each image is one character drawn with one of the Latin fonts matplotlib ships (DejaVu Sans, Sans
Mono and Serif and STIX General in four styles each; Computer Modern roman, bold, sans, typewriter,
text italic and math italic), put through a random affine warp (height, aspect, rotation, slant,
position), an elastic displacement field and a random stroke weight onto a 32x32 binary bitmap,
then reduced the way the UCI "optical recognition of handwritten digits" data
(``sklearn.datasets.load_digits``) was made: the number of set pixels in each 4x4 block, 0-16, as
an 8x8 image. Stored as uint8 ``round(count *
255 / 16)``, like the digits builders, so both go through the same input pipeline.

The classes are EMNIST Balanced's 47 (Cohen et al. 2017): the ten digits, the 26 capitals and the
11 lower-case letters whose shape differs from their capital (a b d e f g h n q r t).

Every image is a pure function of its font, character, split and index (the random numbers are
seeded with the SHA-1 of those), so the dataset is the same on every machine.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache

import numpy as np

CLASSES = tuple("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ") + tuple("abdefghnqrt")
FONTS = tuple(f"{family}{style}.ttf" for family, styles in (
    ("DejaVuSans", ("", "-Bold", "-Oblique", "-BoldOblique")),
    ("DejaVuSansMono", ("", "-Bold", "-Oblique", "-BoldOblique")),
    ("DejaVuSerif", ("", "-Bold", "-Italic", "-BoldItalic")),
    ("STIXGeneral", ("", "Bol", "Italic", "BolIta")),
    ("cm", ("r10", "b10", "ss10", "tt10", "ti10", "mi10")),
) for style in styles)
BITMAP = 32  # side of the binary bitmap; 4x4 blocks of it make the 8x8 image
RENDER_SIZE = 96  # pixels per em when drawing a glyph before the warp
ELASTIC = (34.0, 4.0)  # displacement scale and smoothness in bitmap pixels (Simard et al. 2003)


@lru_cache(maxsize=None)
def glyph(font: str, char: str) -> np.ndarray:
    """The antialiased glyph of ``char`` in matplotlib's font file ``font``, cropped to its ink:
    float32 ``[h, w]`` in [0, 1]."""
    import matplotlib
    from matplotlib.ft2font import FT2Font

    face = FT2Font(os.path.join(matplotlib.get_data_path(), "fonts", "ttf", font))
    if not face.get_char_index(ord(char)):
        raise ValueError(f"font {font} has no glyph for {char!r}")
    face.set_size(RENDER_SIZE, 72)
    face.set_text(char)
    face.draw_glyphs_to_bitmap(antialiased=True)
    image = np.asarray(face.get_image(), np.float32) / 255.0
    rows, cols = np.flatnonzero(image.max(1) > 0.5), np.flatnonzero(image.max(0) > 0.5)
    return image[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def render(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random rendering of a cropped glyph: uint8 ``[8, 8, 1]``, 4x4-block counts of a 32x32
    bitmap scaled to 0-255.

    The glyph's height becomes 28-32 pixels of the 32 (the UCI digits fill the height), its width
    follows with an aspect factor in [0.9, 1.4] (at most 30 pixels), then it is rotated by up to
    ±10°, slanted by a shear of up to ±0.3, centred with a shift of up to ±1.5 pixels and
    displaced by a smooth random field (``ELASTIC``; Simard et al. 2003). The stroke weight is
    normalised like a pen's: of the bitmap cut at 0.5, one erosion of it and up to three
    dilations, the one whose share of set pixels is nearest a target drawn from [0.25, 0.36]
    (the 5th-95th percentiles of the UCI digits' mean intensity).
    """
    from scipy import ndimage

    height, width = image.shape
    scale_y = rng.uniform(28, 32) / height
    scale_x = min(scale_y * rng.uniform(0.9, 1.4), 30 / width)
    angle, shear = rng.uniform(-0.175, 0.175), rng.uniform(-0.3, 0.3)
    rotate = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    forward = rotate @ np.array([[1.0, 0.0], [-shear, 1.0]]) @ np.diag([scale_y, scale_x])
    inverse = np.linalg.inv(forward)  # (row, col) of the bitmap → (row, col) of the glyph
    centre_out = (BITMAP - 1) / 2 + rng.uniform(-1.5, 1.5, size=2)
    centre_in = (np.array(image.shape) - 1) / 2
    grid = np.mgrid[0:BITMAP, 0:BITMAP].reshape(2, -1).astype(np.float64)
    if ELASTIC:  # Simard et al. (2003): a smooth random displacement of every bitmap pixel
        alpha, sigma = ELASTIC
        grid += np.stack([ndimage.gaussian_filter(rng.uniform(-1, 1, (BITMAP, BITMAP)), sigma,
                                                  mode="constant").ravel() * alpha
                          for _ in range(2)])
    coords = inverse @ (grid - centre_out[:, None]) + centre_in[:, None]
    warped = ndimage.map_coordinates(image, coords, order=1, cval=0.0).reshape(BITMAP, BITMAP)
    ink = warped > 0.5
    weights = [ndimage.binary_erosion(ink), ink]
    for _ in range(3):
        weights.append(ndimage.binary_dilation(weights[-1]))
    target = rng.uniform(0.25, 0.36)
    ink = min(weights, key=lambda bitmap: abs(bitmap.mean() - target))
    counts = ink.reshape(8, 4, 8, 4).sum(axis=(1, 3))
    return np.round(counts * 255.0 / 16.0).astype(np.uint8)[..., np.newaxis]


def rng_for(*key: object) -> np.random.Generator:
    """A generator seeded with the SHA-1 of ``key`` (the same numbers on every machine)."""
    digest = hashlib.sha1("/".join(str(k) for k in key).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def examples(classes: tuple[str, ...], split: str, per_font: int):
    """``(key, char, image)`` for each font, class and index ``0..per_font - 1`` of ``split``."""
    for font in FONTS:
        for char in classes:
            source = glyph(font, char)
            for index in range(per_font):
                yield f"{font}/{char}/{index}", char, render(source, rng_for(font, char, split,
                                                                             index))
