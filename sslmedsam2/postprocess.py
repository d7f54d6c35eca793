"""Mask clean-up shared by every engine."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 26-connected foreground component: the liver is one organ, and stray
    islands far from it are what inflates the Hausdorff distance. Components tied for largest are
    all kept, so the result never depends on the order the voxel array happens to be stored in."""
    foreground = np.asarray(mask) > 0
    kept = np.zeros(foreground.shape, np.uint8)
    if not foreground.any():
        return kept
    box, labels, _ = _components(foreground)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    kept[box] = np.isin(labels, np.flatnonzero(sizes == sizes.max()))
    return kept


def component_most_like(mask: np.ndarray, guide: np.ndarray) -> np.ndarray:
    """Keep the 26-connected component of ``mask`` that overlaps ``guide`` most (the largest
    where none does): another engine's mask says which object is the liver where a bigger false
    positive would win on size alone."""
    foreground = np.asarray(mask) > 0
    if not foreground.any():
        return np.zeros(foreground.shape, np.uint8)
    box, labels, count = _components(foreground)
    overlap = np.bincount(labels[np.asarray(guide)[box] > 0], minlength=count + 1)
    overlap[0] = 0
    if count < 2 or not overlap.any():
        return largest_component(foreground)
    kept = np.zeros(foreground.shape, np.uint8)
    kept[box] = labels == int(np.argmax(overlap))
    return kept


def _components(foreground: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray, int]:
    """26-connected components of a non-empty mask, labelled only inside its bounding box."""
    box = ndimage.find_objects(foreground.astype(np.uint8))[0]
    labels, count = ndimage.label(foreground[box], structure=np.ones((3, 3, 3), bool))
    return box, labels, count


def binary_entropy(probability: np.ndarray) -> np.ndarray:
    """Per-voxel uncertainty of a fused foreground probability: Bernoulli entropy in bits, 0 where
    every vote agrees, 1 at 50/50. Shared by every few-shot engine so thresholds mean the same."""
    p = np.clip(np.asarray(probability, np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    return np.nan_to_num(entropy, nan=0.0).astype(np.float32)
