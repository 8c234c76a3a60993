"""Prediction for the small CNN: sliding windows over the head, flip averaging,
back to the data's grid, the decision threshold, and weakening unsure lesions.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from scipy import ndimage

from atlas_ramp.machine import available_cpus
from atlas_ramp.rules import shift_probability

from .preparation import pad_to_at_least, prepare

__all__ = [
    "THRESHOLDS",
    "best_threshold",
    "channels_last",
    "final_probability",
    "head_box",
    "pick_device",
    "predict_probability",
    "probability_on_data_grid",
    "weaken_unsure_lesions",
]

#: Decision thresholds tried after training (on training subjects).
THRESHOLDS = (0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)


def channels_last(tensor):
    """Channels-last memory layout: 2-3 times faster 3D convolutions on CPU."""
    return tensor.contiguous(memory_format=torch.channels_last_3d)


def pick_device(name=None):
    """``name`` ("cuda", "cpu"), or None: CUDA when there is a GPU, else CPU."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "small_cnn: device='cuda' but no CUDA GPU is visible here; use "
            "device=None (CUDA when there is one, else CPU) or device='cpu'."
        )
    if device.type == "cpu":
        torch.set_num_threads(available_cpus())
    return device


def head_box(head, margin):
    """Slices of the bounding box of the head, widened by ``margin`` voxels."""
    if not head.any():
        return tuple(slice(0, side) for side in head.shape)
    corners = np.argwhere(head)
    low = np.maximum(corners.min(axis=0) - margin, 0)
    high = np.minimum(corners.max(axis=0) + 1 + margin, head.shape)
    return tuple(slice(a, b) for a, b in zip(low, high, strict=True))


@torch.no_grad()
def predict_probability(
    network, image, head, device, window_size=16, overlap=0.5, windows_per_batch=32
):
    """Lesion probability of every voxel of ``image`` (working resolution).

    Only the box around the head is computed (about half of the MNI grid);
    outside the head the probability is 0. A box larger than ``window_size``
    is cut into overlapping windows whose probabilities MONAI blends with
    Gaussian weights (the centre of a window sees the most context). Windows
    that hold no head voxel are not computed: they would only add weight
    outside the head, where the probability is 0 anyway.
    """
    box = head_box(head, margin=4)
    crop = image[(slice(None), *box)]
    # Sides rounded up to a multiple of what the network pools by (8 for 3
    # poolings by 2; any side for a network that does not pool).
    multiple = getattr(network, "size_multiple", 1)
    sides = [-(-side // multiple) * multiple for side in crop.shape[1:]]
    crop = torch.from_numpy(pad_to_at_least(crop, sides)).to(device)[None]
    head_crop = pad_to_at_least(head[box], sides, "constant")

    def window_probabilities(windows, places):
        # places[k]: (batch, channel, x, y, z) slices of window k in the crop.
        probability = torch.zeros((len(windows), 1, *windows.shape[2:]), device=device)
        in_head = [bool(head_crop[tuple(place[2:])].any()) for place in places]
        if any(in_head):
            chosen = torch.tensor(in_head, device=device)
            logits = network(channels_last(windows[chosen]))
            probability[chosen] = torch.sigmoid(logits)
        return probability

    probability = sliding_window_inference(
        crop,
        roi_size=[min(window_size, side) for side in sides],
        sw_batch_size=windows_per_batch,
        predictor=window_probabilities,
        overlap=overlap,
        mode="gaussian",
        with_coord=True,
    )[0, 0]
    full = torch.zeros(head.shape, device=device)
    full[box] = probability[tuple(slice(0, part.stop - part.start) for part in box)]
    # Lesions are inside the head. Outside, the image is dark and its mirror
    # may be bright (no two heads are exactly symmetric): it looks like a
    # lesion to the network, so rule it out.
    return full * torch.from_numpy(head).to(device)


def weaken_unsure_lesions(probability, min_peak):
    """Halve the probability of predicted lesions that never reach ``min_peak``
    (in place; ``probability`` is returned).

    A predicted lesion is a connected component of ``probability >= 0.5``
    (face connectivity, as scored). Faint blobs far from the lesion are the
    network's typical false positives; halving keeps their order, so that a
    blend of several models can still bring them back.
    """
    if min_peak <= 0.5:
        return probability
    labels, count = ndimage.label(probability >= 0.5)
    if count:
        # The peak of each blob, from its own voxels only (ndimage.maximum
        # would sort the whole volume: a second per subject at 1 mm).
        inside = labels > 0
        peaks = np.zeros(count + 1, probability.dtype)
        np.maximum.at(peaks, labels[inside], probability[inside])
        unsure = peaks < min_peak
        unsure[0] = False
        probability[unsure[labels]] *= 0.5
    return probability


def probability_on_data_grid(
    network,
    volume,
    device,
    *,
    factor,
    data_shape,
    template=None,
    mirror_channel=False,
    correct_bias=True,
    standard_landmarks=None,
    window_size=16,
    overlap=0.5,
    windows_per_batch=32,
    flip_averaging=True,
):
    """Unshifted lesion probability of one volume, on the data's grid.

    The volume is prepared as in training (:func:`~.preparation.prepare`),
    predicted window by window (:func:`predict_probability`), optionally
    averaged with the prediction of its left-right flip, then upsampled
    trilinearly back to the data's grid.

    Parameters
    ----------
    network : torch.nn.Module
        The trained network, in eval mode, on ``device``.
    volume : ndarray
        One subject's T1w volume on the data's grid.
    device : torch.device
    factor : int
        Pooling factor from the data's voxels to the working voxels.
    data_shape : tuple of int
        The data's grid.
    template, mirror_channel, correct_bias, standard_landmarks
        As :func:`~.preparation.prepare` takes them.
    window_size, overlap, windows_per_batch
        As :func:`predict_probability` takes them.
    flip_averaging : bool
        Average with the prediction of the left-right flip.

    Returns
    -------
    torch.Tensor of float32, shape ``data_shape``, on ``device``
        Values in [0, 1].
    """
    image, head = prepare(
        volume,
        factor,
        template,
        mirror_channel,
        correct_bias=correct_bias,
        standard_landmarks=standard_landmarks,
    )
    windows = dict(
        window_size=window_size, overlap=overlap, windows_per_batch=windows_per_batch
    )
    probability = predict_probability(network, image, head, device, **windows)
    if flip_averaging:  # the left-right flip, predicted and flipped back
        flipped = predict_probability(
            network, image[:, ::-1].copy(), head[::-1].copy(), device, **windows
        )
        probability = (probability + flipped.flip(0)) / 2
    if factor > 1:
        # Back to the data's grid: trilinear, then crop the edge padding.
        probability = F.interpolate(
            probability[None, None],
            scale_factor=factor,
            mode="trilinear",
            align_corners=False,
        )[0, 0]
    x, y, z = data_shape
    return probability[:x, :y, :z].clamp(0, 1)


def best_threshold(probability_of, X, y, n_subjects, device, thresholds=THRESHOLDS):
    """The threshold with the best mean Dice on a few training subjects.

    Parameters
    ----------
    probability_of : callable
        ``probability_of(volume)`` gives the probability on the data's grid
        (a tensor on ``device``).
    X, y : image and mask sequences
        The training subjects; ``n_subjects`` of them, evenly spread, are used.
        Dice is computed at the data's resolution, as it is scored.
    n_subjects : int
    device : torch.device
    thresholds : sequence of float, sorted

    Returns
    -------
    threshold : float
    dice : float
        Mean Dice at that threshold.
    dice_at_highest : float
        Mean Dice at the last (highest) threshold, the untuned one.
    n_used : int
        Subjects used.
    """
    count = min(len(X), n_subjects)
    subjects = np.unique(np.linspace(0, len(X) - 1, count).round()).astype(int)
    dice_sums = np.zeros(len(thresholds))
    for i in subjects:
        probability = probability_of(X[i])
        truth = torch.from_numpy(np.asarray(y[i], dtype=bool)).to(device)
        for position, threshold in enumerate(thresholds):
            predicted = probability >= threshold
            total = int(predicted.sum() + truth.sum())
            overlap = int((predicted & truth).sum())
            dice_sums[position] += 1.0 if total == 0 else 2 * overlap / total
    # On a tie, the highest threshold (thresholds are sorted): an untrained
    # network (all Dice 0) keeps 0.5 rather than raising a faint haze
    # everywhere to lesion level.
    best = len(thresholds) - 1 - int(np.argmax(dice_sums[::-1]))
    n_used = len(subjects)
    return thresholds[best], dice_sums[best] / n_used, dice_sums[-1] / n_used, n_used


def final_probability(probability, threshold, min_lesion_peak):
    """What ``predict_proba`` returns: shifted so that ``threshold`` becomes 0.5,
    then unsure lesions weakened (numpy float32 on CPU)."""
    shifted = shift_probability(probability.cpu().numpy(), threshold)
    return weaken_unsure_lesions(shifted, min_lesion_peak)
