"""Small rules that several baselines share: where the head is, where the
decision threshold falls, and which predicted lesions are too small.

numpy and scipy only: the server's environment (no torch) imports the baselines
that use them.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def head_mask(volume: np.ndarray, step: int = 1) -> np.ndarray:
    """Voxels inside the head: above a tenth of the bright-tissue intensity.

    Parameters
    ----------
    volume : ndarray
        A T1w volume (any intensity scale; the background is dark).
    step : int
        Estimate the bright-tissue intensity (the 99th percentile) on every
        ``step``-th voxel per axis: the same value, cheaper on 1 mm volumes.

    Returns
    -------
    ndarray of bool
        Same shape as ``volume``.
    """
    sample = volume[::step, ::step, ::step] if step > 1 else volume
    return volume > 0.1 * np.percentile(sample, 99)


def shift_probability(probability: np.ndarray, threshold: float) -> np.ndarray:
    """Shift probabilities in logit space so that ``threshold`` becomes 0.5.

    The order of the voxels is kept; only where the cut falls changes.

    Parameters
    ----------
    probability : ndarray
        Values in [0, 1].
    threshold : float
        Decision threshold in (0, 1), tuned on training subjects.

    Returns
    -------
    ndarray of float32
    """
    # Subtracting the threshold's logit is dividing the odds p / (1 - p) by
    # the threshold's odds t / (1 - t), so the shifted probability is
    # p (1 - t) / (p (1 - t) + (1 - p) t): no logs or exponentials, and two
    # arrays instead of about nine (5 times faster on a 1 mm volume).
    shifted = np.clip(probability, 1e-6, 1 - 1e-6).astype(np.float32, copy=False)
    denominator = shifted * np.float32(1 - 2 * threshold)
    denominator += np.float32(threshold)
    shifted *= np.float32(1 - threshold)
    shifted /= denominator
    return shifted


def small_components(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    """The voxels of the connected components of ``mask`` smaller than ``min_voxels``.

    Components use face connectivity (6 neighbours), as the scores count
    lesions.

    Parameters
    ----------
    mask : ndarray of bool
    min_voxels : int
        Components of at least this many voxels are kept out of the result;
        1 or less: no component is small.

    Returns
    -------
    ndarray of bool
        Same shape as ``mask``.
    """
    if min_voxels <= 1 or not mask.any():
        return np.zeros(mask.shape, bool)
    labels, count = ndimage.label(mask)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    small = sizes < min_voxels
    small[0] = False
    return small[labels]
