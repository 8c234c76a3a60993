"""Per-subject preparation for the small CNN: pooling, head, bias field, z-scores,
histogram landmarks, the template channel, and windows cut from volumes.

Kit plumbing rather than modelling: ``submissions/small_cnn/estimator.py``
chooses which of these steps run (its parameters); this module says how.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from nilearn.datasets import struct
from nilearn.image import load_img, resample_img
from scipy import ndimage

from atlas_ramp.rules import head_mask

__all__ = [
    "BIAS_CELL",
    "LANDMARK_LEVELS",
    "bias_on",
    "bias_on_grid",
    "bias_patch",
    "corrected_mirror",
    "corrected_pooled",
    "cut_window",
    "downsample",
    "head_landmarks",
    "head_mask",
    "mirrored_coordinates",
    "pad_to_at_least",
    "pooled_statistics",
    "prepare",
    "shift_without_wrap",
    "standardize_histogram",
    "template_on_grid",
    "white_matter_bias",
    "working_factor",
    "z_scored_channels",
]


def downsample(volume, factor):
    """Average blocks of ``factor`` voxels per axis (a smaller block at odd edges)."""
    if factor > 1 and not any(side % factor for side in volume.shape):
        # A training patch's window (sides that are multiples of the factor):
        # add the strided views of the (memory-mapped) window axis by axis.
        # This skips the contiguous copy that avg_pool3d needs, and costs
        # about half as much (bench/bench_cnn_speed.py).
        for axis in range(3):
            views = [
                volume[(slice(None),) * axis + (slice(start, None, factor),)]
                for start in range(factor)
            ]
            volume = sum(views[1:], np.asarray(views[0], dtype=np.float32))
        return volume * np.float32(1.0 / factor**3)
    volume = np.ascontiguousarray(volume, dtype=np.float32)
    if not volume.flags.writeable:  # a whole read-only memory map: torch warns
        volume = volume.copy()
    volume = torch.from_numpy(volume)
    if factor > 1:
        volume = F.avg_pool3d(volume[None, None], factor, ceil_mode=True)[0, 0]
    return volume.numpy()


def template_on_grid(affine, shape, factor):
    """The MNI152 template on the data's grid, pooled and z-scored like an image.

    The data are registered to MNI space, so the template shows, voxel by voxel,
    what a healthy brain looks like there: a dark voxel where the template is
    bright (white matter) is suspicious, where it is dark (ventricle) it is not.
    """
    template = resample_img(
        load_img(struct.MNI152_FILE_PATH),
        target_affine=affine,
        target_shape=shape,
        interpolation="linear",
        force_resample=True,
        copy_header=True,
    ).get_fdata(dtype=np.float32)
    pooled = downsample(template, factor)
    _, mean, sd = pooled_statistics(pooled)
    return ((pooled - mean) / sd).astype(np.float32)


def pooled_statistics(pooled):
    """Head mask, and mean and sd of the head's intensities, of a pooled volume."""
    head = head_mask(pooled)
    if not head.any():  # a blank volume: nothing to normalize by
        return head, 0.0, 1.0
    values = pooled[head]
    return head, float(values.mean()), max(float(values.std()), 1e-6)


#: Working voxels per cell of the grid the bias field is estimated on (8 mm
#: at 2 mm): a scanner's bias varies over centimetres, not millimetres.
BIAS_CELL = 4


def white_matter_bias(pooled, head, cell=BIAS_CELL, sigma_cells=2.0, rounds=4):
    """Log of a volume's smooth multiplicative bias, estimated on its white matter.

    Receive coils make one part of the head brighter than another (up to 40%
    here). White matter should be one intensity everywhere, so its local mean
    shows the bias: each round takes the bright half of the head (the white
    matter, once corrected by the previous round's estimate; dark lesions are
    left out), averages its log intensity in cells of ``cell`` voxels, smooths
    that over neighbouring cells, and divides it out. (Written by hand: N4, the
    usual tool, lives in ANTs/SimpleITK, and is slower than this whole model's
    prediction; this simple estimate is what we need here.)

    Returns
    -------
    ndarray of float32
        Log bias on the coarse grid (mean 0 over the head); see
        :func:`bias_on`.
    """
    log_image = np.log(np.maximum(pooled, 1e-6))
    head_weight = downsample(head.astype(np.float32), cell)
    log_bias = np.zeros(head_weight.shape, np.float32)
    if not head.any():
        return log_bias
    for _ in range(rounds):  # 0 rounds: no correction
        corrected = log_image - bias_on_grid(log_bias, pooled.shape, cell)
        low, high = np.percentile(corrected[head], [50, 98])
        white = (head & (corrected >= low) & (corrected <= high)).astype(np.float32)
        # Normalized convolution: a weighted local mean, weights = white matter.
        total = ndimage.gaussian_filter(
            downsample(white * log_image, cell), sigma_cells
        )
        weight = ndimage.gaussian_filter(downsample(white, cell), sigma_cells)
        known = weight > 1e-3
        log_bias = np.where(known, total / np.maximum(weight, 1e-3), 0.0)
        if not known.all():  # far from any white matter: the nearest estimate
            nearest = ndimage.distance_transform_edt(
                ~known, return_distances=False, return_indices=True
            )
            log_bias = log_bias[tuple(nearest)]
        log_bias = log_bias - np.average(log_bias, weights=head_weight + 1e-9)
        log_bias = log_bias.astype(np.float32)
    return log_bias


def bias_on_grid(log_bias, shape, cell=BIAS_CELL):
    """The log bias on the whole working grid of ``shape``.

    The same values as :func:`bias_on` at every voxel (trilinear, constant
    beyond the outer cell centres), but 10 times faster: torch's upsampling.
    """
    coarse = torch.from_numpy(np.ascontiguousarray(log_bias, np.float32))
    fine = F.interpolate(
        coarse[None, None], scale_factor=cell, mode="trilinear", align_corners=False
    )[0, 0]
    return fine[: shape[0], : shape[1], : shape[2]].numpy()


def bias_on(log_bias, coordinates, cell=BIAS_CELL):
    """The log bias at working-voxel ``coordinates`` (3 arrays), trilinearly."""
    # Cell k covers working voxels cell*k ... cell*k + cell - 1.
    return ndimage.map_coordinates(
        log_bias,
        [(np.asarray(c, np.float32) + 0.5) / cell - 0.5 for c in coordinates],
        order=1,
        mode="nearest",
    )


def mirrored_coordinates(coordinates, data_side_x, factor):
    """Where, in the unmirrored working grid, the mirror channel's voxels come from.

    The mirror is pooled from the 1 mm volume flipped on x: its working voxel
    ``i`` holds the 1 mm voxels whose centre is at working position
    ``data_side_x / factor - 1 - i``.
    """
    x, *others = coordinates
    return [data_side_x / factor - 1 - np.asarray(x, np.float32), *others]


def corrected_pooled(volume, factor, correct_bias=True):
    """Pool a volume to working resolution and divide it by its bias field.

    Returns
    -------
    corrected : ndarray of float32
        The pooled, bias-corrected volume.
    head : ndarray of bool
        Where the head is.
    statistics : (float, float)
        Mean and sd of the head's corrected intensities (for z-scores).
    log_bias : ndarray of float32
        The log bias field on its coarse grid (zero without ``correct_bias``),
        kept to correct patches and the mirror the same way.
    """
    pooled = downsample(volume, factor)
    rounds = 4 if correct_bias else 0  # no round: a zero field
    log_bias = white_matter_bias(pooled, head_mask(pooled), rounds=rounds)
    corrected = pooled / np.exp(bias_on_grid(log_bias, pooled.shape))
    head, mean, sd = pooled_statistics(corrected)
    return corrected, head, (mean, sd), log_bias


def corrected_mirror(volume, factor, log_bias):
    """The left-right mirror at working resolution, corrected by the mirrored bias.

    Mirrored at 1 mm, then pooled: the MNI grid is symmetric about its middle
    x voxel, so the pooled mirror lines up with the pooled image.
    """
    mirror = downsample(volume[::-1], factor)
    mirrored = mirrored_coordinates(np.indices(mirror.shape), volume.shape[0], factor)
    return mirror / np.exp(bias_on(log_bias, mirrored))


def z_scored_channels(volume, factor, mirror_channel=True, correct_bias=True):
    """Corrected image (and mirror), z-scored inside the head and clipped to +-5.

    Returns
    -------
    image : ndarray of float32, shape (1 or 2, x, y, z)
    head : ndarray of bool
    statistics, log_bias
        As :func:`corrected_pooled` returns them.
    """
    corrected, head, (mean, sd), log_bias = corrected_pooled(
        volume, factor, correct_bias
    )
    channels = [corrected]
    if mirror_channel:
        channels.append(corrected_mirror(volume, factor, log_bias))
    # The mirror is scaled like the image, so that the two compare.
    image = np.clip((np.stack(channels) - mean) / sd, -5.0, 5.0)
    return image.astype(np.float32), head, (mean, sd), log_bias


def prepare(
    volume,
    factor,
    template=None,
    mirror_channel=True,
    correct_bias=True,
    standard_landmarks=None,
):
    """Pool a volume to working resolution, correct and normalize it.

    Returns
    -------
    image : ndarray of float32, shape (channels, x, y, z)
        Bias-corrected intensities, z-scored inside the head (scanners and
        cohorts scale them differently) and, given ``standard_landmarks``,
        histogram-standardized; with ``mirror_channel``, the left-right
        mirror image as a second channel: most strokes are one-sided, so a
        lesion looks unlike its mirror, while ventricles and sulci are about
        symmetric; then the template, when given.
    head : ndarray of bool, shape (x, y, z)
        Where the head is: prediction only looks at the box around it.
    """
    image, head, _, _ = z_scored_channels(volume, factor, mirror_channel, correct_bias)
    if standard_landmarks is not None:
        image = standardize_histogram(
            image, head_landmarks(image[0], head), standard_landmarks
        )
    if template is not None:
        image = np.concatenate([image, template[None]])
    return image.astype(np.float32), head


#: Where the histogram landmarks sit: the 1st, 5th, 10th, 20th ... 90th,
#: 95th and 99th percentiles of the head's intensities.
LANDMARK_LEVELS = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def head_landmarks(image, head):
    """The head's intensities at :data:`LANDMARK_LEVELS`, strictly increasing."""
    values = image[head] if head.any() else image.ravel()
    landmarks = np.quantile(values, LANDMARK_LEVELS)
    # Few distinct intensities can repeat a quantile: keep them apart.
    steps = np.arange(landmarks.size) * 1e-4
    return np.maximum.accumulate(landmarks + steps).astype(np.float32)


def standardize_histogram(image, landmarks, standard_landmarks):
    """Map a head's histogram landmarks onto the training set's, piece by piece.

    Scanners map tissues to intensities by different curves: contrast
    (gamma), grey matter or fluid brighter or darker, scale and offset.
    z-scoring undoes only scale and offset. Histogram standardization (Nyul
    and Udupa, 1999) also bends the curve back: the intensities between two
    landmarks (say the 20th and 30th percentiles of the head) are mapped
    linearly onto the same landmarks of the average training subject, so
    that each tissue lands where it does in training. Beyond the outer
    landmarks the outer pieces continue; the result is clipped to +-5.
    (TorchIO's ``HistogramStandardization`` does this to whole images read
    from files; here the same map is also applied to each training patch,
    with its subject's landmarks, so a few lines of numpy.)
    """
    mapped = np.interp(image, landmarks, standard_landmarks)
    slopes = np.diff(standard_landmarks) / np.diff(landmarks)
    # np.interp holds the end values beyond the outer landmarks: continue the
    # outer pieces there instead (few voxels, so only they are computed).
    below, above = image < landmarks[0], image > landmarks[-1]
    mapped[below] = standard_landmarks[0] + (image[below] - landmarks[0]) * slopes[0]
    mapped[above] = standard_landmarks[-1] + (image[above] - landmarks[-1]) * slopes[-1]
    return np.clip(mapped, -5.0, 5.0).astype(np.float32)


def pad_to_at_least(volume, sizes, mode="edge"):
    """Pad the end of the 3 spatial (last) axes to at least ``sizes`` (or one int)."""
    sizes = np.broadcast_to(sizes, 3)
    padding = [(0, 0)] * (volume.ndim - 3)
    padding += [
        (0, max(0, int(size) - side))
        for size, side in zip(sizes, volume.shape[-3:], strict=True)
    ]
    if not any(after for _, after in padding):
        return volume  # np.pad would copy it
    return np.pad(volume, padding, mode=mode)


def working_factor(voxel_volume_ml, working_voxel_mm):
    """Integer pooling factor from the data's voxel size to ``working_voxel_mm``."""
    voxel_mm = (voxel_volume_ml * 1000.0) ** (1 / 3)
    return max(1, round(working_voxel_mm / voxel_mm))


@functools.lru_cache(maxsize=4096)
def _interpolation_columns(start, side, n_cells, cell, low, high):
    """Linear interpolation weights, shape (side, high - low), of working voxels
    ``start ... start + side - 1`` from coarse cells ``low ... high - 1``
    (clamped at the outer cell centres, as ``map_coordinates(mode="nearest")``).

    Cached: a patch's weights depend only on where it starts, so a training
    run computes each axis's few hundred matrices once.
    """
    position = (np.arange(start, start + side, dtype=np.float64) + 0.5) / cell - 0.5
    position = np.clip(position, 0, n_cells - 1)
    below = np.floor(position).astype(int)
    above = np.minimum(below + 1, n_cells - 1)
    weight = position - below
    matrix = np.zeros((side, n_cells))
    rows = np.arange(side)
    np.add.at(matrix, (rows, below), 1 - weight)
    np.add.at(matrix, (rows, above), weight)
    columns = matrix[:, low:high].astype(np.float32)
    columns.flags.writeable = False  # shared by every call
    return columns


def bias_patch(log_bias, corner, sides, cell=BIAS_CELL):
    """The log bias on one patch of the working grid: :func:`bias_on` of its voxels.

    Trilinear interpolation is separable: one small weight matrix per axis,
    applied to the coarse grid, instead of ``map_coordinates`` on every voxel
    (several times cheaper on a 16-voxel patch).

    Parameters
    ----------
    log_bias : ndarray of float32
        The log bias on its coarse grid (:func:`white_matter_bias`).
    corner : sequence of 3 int
        The patch's first voxel on the working grid.
    sides : sequence of 3 int
        The patch's sides.
    cell : int
        Working voxels per coarse cell.

    Returns
    -------
    ndarray of float32, shape ``sides``
    """
    corner = [int(c) for c in corner]
    sides = [int(s) for s in sides]
    # Only the cells around the patch carry weight.
    low = [max(c // cell - 1, 0) for c in corner]
    high = [
        min((c + s - 1) // cell + 2, n)
        for c, s, n in zip(corner, sides, log_bias.shape, strict=True)
    ]
    result = log_bias[tuple(slice(a, b) for a, b in zip(low, high, strict=True))]
    for axis in range(3):
        columns = _interpolation_columns(
            corner[axis], sides[axis], log_bias.shape[axis], cell, low[axis], high[axis]
        )
        # Contract this axis; the new axis goes last, so after three the
        # axes are back in order.
        result = np.tensordot(result, columns, axes=([0], [1]))
    return result.astype(np.float32)


def cut_window(volume, corner, sides):
    """The window of ``volume`` at ``corner`` (may lie partly outside), edge-padded.

    Parameters
    ----------
    volume : ndarray
        Spatial axes last (any leading channel axes).
    corner : sequence of 3 int
        First voxel of the window; may be negative or run past the far side.
    sides : sequence of 3 int

    Returns
    -------
    ndarray, shape ``(..., *sides)``
        Voxels outside ``volume`` repeat its nearest edge voxel: never the
        opposite side's (no wrap-around).
    """
    shape = volume.shape[-3:]
    low = [min(max(c, 0), n - 1) for c, n in zip(corner, shape, strict=True)]
    high = [
        max(min(c + s, n), a + 1)
        for c, s, n, a in zip(corner, sides, shape, low, strict=True)
    ]
    inside = volume[(..., *(slice(a, b) for a, b in zip(low, high, strict=True)))]
    padding = [(0, 0)] * (volume.ndim - 3) + [
        (a - c, c + s - b) for c, s, a, b in zip(corner, sides, low, high, strict=True)
    ]
    if not any(before or after for before, after in padding):
        return inside
    return np.pad(inside, [(max(p, 0), max(q, 0)) for p, q in padding], mode="edge")[
        (
            ...,
            *(
                slice(max(-p, 0), max(-p, 0) + s)
                for (p, _), s in zip(padding[-3:], sides, strict=True)
            ),
        )
    ]


def shift_without_wrap(array, offsets):
    """Shift the 3 spatial (last) axes by whole voxels, repeating edge voxels.

    ``result[..., i, j, k] = array[..., i - di, j - dj, k - dk]``, with indices
    clipped to the array: what slides out is lost, what slides in repeats the
    edge (``np.roll`` would bring in the opposite face instead).

    Parameters
    ----------
    array : ndarray
    offsets : sequence of 3 int

    Returns
    -------
    ndarray, the shape of ``array``
    """
    if not any(offsets):
        return array
    corner = [-int(o) for o in offsets]
    return cut_window(array, corner, array.shape[-3:])
