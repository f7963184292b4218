"""The PASCAL VOC colour map (256 entries, bit-interleaved) and the 21 class names."""
from __future__ import annotations

import numpy as np

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
IGNORE_LABEL = 255


def voc_colormap(n: int = 256) -> np.ndarray:
    """(n, 3) uint8 colours: class c gets the bits of c spread over R, G, B from the high bit down."""
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


def palette_bytes() -> list:
    """The colour map flattened the way `PIL.Image.putpalette` wants it."""
    return voc_colormap().reshape(-1).tolist()
