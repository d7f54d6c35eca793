"""Mask clean-up shared by every engine."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 26-connected foreground component: the liver is one organ, and stray
    islands far from it are what inflates the Hausdorff distance."""
    labels, count = ndimage.label(mask > 0, structure=np.ones((3, 3, 3), bool))
    if count <= 1:
        return (labels > 0).astype(np.uint8)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return (labels == int(sizes.argmax())).astype(np.uint8)
