"""Training patches for the small CNN: what ``fit`` keeps of each subject (a few
hundred kB), patches cut on demand, and a ``torch.utils.data`` pipeline that
prepares them in worker processes.
"""

from __future__ import annotations

import multiprocessing
import os
import random

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import DataLoader, Dataset

from .preparation import (
    bias_on,
    bias_patch,
    downsample,
    head_landmarks,
    mirrored_coordinates,
    z_scored_channels,
)

__all__ = [
    "PatchDataset",
    "TrainingSubjects",
    "blank_random_box",
    "fade_lesions",
    "is_memory_mapped",
    "lesion_indices",
    "patch_loader",
    "pooled_lesions",
    "seed_worker",
]


def is_memory_mapped(array):
    """Whether ``array`` is a view of a memory-mapped file (cheap to re-read)."""
    return mapped_file(array) is not None


def mapped_file(array):
    """How to map ``array`` again: ``np.memmap`` arguments, or None if not mapped.

    Only for a whole mapped array (not a slice of one): its file name,
    offset, dtype, shape and order.
    """
    while array is not None:
        if isinstance(array, np.memmap):
            if array.filename is None:
                return None
            order = "F" if array.flags.f_contiguous and array.ndim > 1 else "C"
            return dict(
                # A string: np.memmap resolves a Path's links at every call.
                filename=os.fspath(array.filename),
                dtype=array.dtype,
                mode="r",
                offset=array.offset,
                shape=array.shape,
                order=order,
            )
        array = getattr(array, "base", None)
    return None


def lesion_indices(y, i):
    """Flat indices of the lesion voxels of ``y[i]``, without a dense copy if we can.

    The kit's ``y`` keeps its masks sparse (``y.sparse``); any other sequence
    of boolean masks works too.
    """
    sparse = getattr(y, "sparse", None)
    if sparse is not None:
        return np.asarray(sparse[i].indices)
    return np.flatnonzero(np.asarray(y[i]))


def pooled_lesions(indices, data_shape, factor):
    """The lesion at working resolution, grouped lesion by lesion.

    Parameters
    ----------
    indices : ndarray of int
        Flat indices of the lesion voxels on the data's grid.
    data_shape : tuple of int
    factor : int
        Pooling factor (blocks of ``factor`` voxels per axis, smaller at the
        far edges, as :func:`downsample` pools).

    Returns
    -------
    voxels : ndarray of int32
        Flat working-grid indices of the voxels that hold some lesion, sorted
        by lesion (3D connected component, face connectivity).
    fractions : ndarray of uint8
        Share of each of these voxels that is lesion, in 255ths (8 bits are
        plenty for a share of 8, 27 or 64 small voxels).
    starts : ndarray of int32
        Lesion ``k`` is ``voxels[starts[k]:starts[k + 1]]``. Patch centres are
        drawn lesion by lesion: drawn voxel by voxel, a 100 mL lesion would be
        picked 500 times as often as a 0.2 mL one.
    """
    data_shape = np.asarray(data_shape)
    shape = -(-data_shape // factor)
    blocks = np.stack(np.unravel_index(indices, tuple(data_shape))) // factor
    flat = np.ravel_multi_index(tuple(blocks), tuple(shape))
    counts = np.bincount(flat, minlength=int(np.prod(shape))).reshape(shape)
    # Voxels per block: factor**3, fewer at the far edge of an odd side.
    sides = [
        np.minimum(factor, n - factor * np.arange(m))
        for n, m in zip(data_shape, shape, strict=True)
    ]
    fraction = counts / np.einsum("i,j,k->ijk", *sides)
    labels, count = ndimage.label(counts > 0)
    voxels = np.flatnonzero(labels)
    voxels = voxels[np.argsort(labels.ravel()[voxels], kind="stable")]
    starts = np.searchsorted(labels.ravel()[voxels], np.arange(1, count + 2))
    fractions = np.round(fraction.ravel()[voxels] * 255).astype(np.uint8)
    return voxels.astype(np.int32), fractions, starts.astype(np.int32)


class TrainingSubjects:
    """What ``fit`` keeps of each training subject, and patches cut on demand.

    Each subject keeps a few hundred kB: its head mask (one bit a working
    voxel), its bias field (coarse cells), the mean and sd of its head's
    intensities, its histogram landmarks and its lesion voxels (sparse).
    Whole volumes at 2 mm would take about 10 MB a subject, 6 GB for a fold of
    ATLAS's training set. A patch is cut from ``X[i]`` when it is drawn: the
    kit's volume cache maps a decompressed ``.npy`` file, so this reads a few
    MB from the page cache, not the whole volume. Where the volumes are not
    memory-mapped, pooled copies are kept instead (about 2 MB a channel and
    subject at 2 mm).

    Parameters
    ----------
    X, y : image and mask sequences
    factor : int
        Pooling factor from the data's voxels to working voxels.
    correct_bias : bool
        Divide each image by its bias field (:func:`white_matter_bias`).
    mirror_channel : bool
        Patches will carry the left-right mirror channel (only the pooled
        copies depend on it).
    """

    def __init__(self, X, y, factor, correct_bias=True, mirror_channel=True):
        self.X, self.factor = X, factor
        self.landmarks = []
        self.stored_images = None  # working-resolution copies, when X is not mapped
        self.head_bits, self.head_boxes, self.statistics = [], [], []
        self.lesion_voxels, self.lesion_fractions = [], []
        self.lesion_starts, self.lesion_coordinates = [], []
        self.log_biases = []
        X[0]  # the first read of a volume fills the cache; the second maps it
        first = X[0]
        if not is_memory_mapped(first):
            # Volumes decoded at every read (no writable cache): keep pooled
            # copies instead, about 2 MB a channel and subject at 2 mm.
            print(
                "small_cnn: the volumes are not memory-mapped; keeping "
                "pooled copies in memory",
                flush=True,
            )
            self.stored_images = []
        # Each volume's file, mapped again for each patch: cheaper than
        # X[i], which checks the cache entry against its source every time.
        self.mapped_files = []
        for i in range(len(X)):
            volume = first if i == 0 else X[i]
            file = mapped_file(volume)
            if file is not None and file["shape"] != volume.shape:
                file = None  # a view of part of a file: read through X
            self.mapped_files.append(file)
            stored_mirror = mirror_channel and self.stored_images is not None
            image, head, statistics, log_bias = z_scored_channels(
                volume, factor, stored_mirror, correct_bias
            )
            self.shape, self.data_side_x = head.shape, volume.shape[0]
            self.log_biases.append(log_bias)
            self.statistics.append(statistics)
            self.landmarks.append(head_landmarks(image[0], head))
            self.head_bits.append(np.packbits(head.ravel()))
            corners = np.argwhere(head) if head.any() else np.zeros((1, 3), int)
            self.head_boxes.append((corners.min(axis=0), corners.max(axis=0) + 1))
            voxels, fractions, starts = pooled_lesions(
                lesion_indices(y, i), volume.shape, factor
            )
            self.lesion_voxels.append(voxels)
            # Their (x, y, z) too, so that a patch need not unravel them all.
            coordinates = np.unravel_index(voxels, self.shape)
            self.lesion_coordinates.append(np.stack(coordinates).astype(np.int16))
            self.lesion_fractions.append(fractions)
            self.lesion_starts.append(starts)
            if self.stored_images is not None:
                self.stored_images.append(image.astype(np.float16))

    def __len__(self):
        return len(self.head_bits)

    def held_bytes(self):
        """Bytes held per subject (what grows with the training set)."""
        arrays = [*self.head_bits, *self.lesion_voxels, *self.lesion_fractions]
        arrays += [*self.lesion_coordinates, *self.log_biases]
        arrays += self.stored_images or []
        return sum(array.nbytes for array in arrays) / len(self.head_bits)

    def random_centre(self, subject, rng, lesion_fraction):
        """A lesion voxel (with probability ``lesion_fraction``), else a head voxel."""
        lesion = self.lesion_voxels[subject]
        if lesion.size and rng.random() < lesion_fraction:
            starts = self.lesion_starts[subject]
            which = rng.integers(len(starts) - 1)
            voxel = lesion[rng.integers(starts[which], starts[which + 1])]
            return np.unravel_index(voxel, self.shape)
        low, high = self.head_boxes[subject]
        bits = self.head_bits[subject]
        for _ in range(100):  # the head fills about half of its box
            centre = rng.integers(low, np.maximum(high, low + 1))
            flat = np.ravel_multi_index(centre, self.shape)
            if bits[flat >> 3] & (128 >> (flat & 7)):
                return tuple(centre)
        return tuple(centre)

    def image_patch(self, subject, corner, size, mirror_channel):
        """Normalized image (and mirror) channels of a patch, shape (c, <=size...)."""
        window = tuple(slice(c, c + size) for c in corner)
        if self.stored_images is not None:
            image = self.stored_images[subject][(slice(None), *window)]
            return image[: 1 + mirror_channel].astype(np.float32)
        f = self.factor
        file = self.mapped_files[subject]
        volume = np.memmap(**file) if file else self.X[subject]
        window_1mm = tuple(slice(c * f, (c + size) * f) for c in corner)
        # Blocks start at multiples of f: the same pooling as the whole volume.
        image = downsample(volume[window_1mm], f)
        log_bias = self.log_biases[subject]
        channels = [image / np.exp(bias_patch(log_bias, corner, image.shape))]
        if mirror_channel:
            grid = np.indices(image.shape) + np.reshape(corner, (3, 1, 1, 1))
            mirrored = mirrored_coordinates(grid, self.data_side_x, f)
            mirror = downsample(volume[::-1][window_1mm], f)
            channels.append(mirror / np.exp(bias_on(log_bias, mirrored)))
        mean, sd = self.statistics[subject]
        return np.clip((np.stack(channels) - mean) / sd, -5.0, 5.0)

    def target_patch(self, subject, corner, sides):
        """Lesion fraction of the patch's voxels, from the sparse lesion voxels."""
        target = np.zeros(sides, np.float32)
        coordinates = self.lesion_coordinates[subject]
        offset = coordinates - np.asarray(corner)[:, None]
        inside = np.all((offset >= 0) & (offset < np.asarray(sides)[:, None]), axis=0)
        target[tuple(offset[:, inside])] = self.lesion_fractions[subject][inside] / 255
        return target


def fade_lesions(image, target, max_fade, rng):
    """Bring lesion voxels part of the way to the tissue around them.

    Chronic lesions range from cavities as dark as fluid to gliotic scars
    not far from grey matter, and some cohorts' contrast leaves them faint.
    A fade ``u`` drawn in ``[0, max_fade]`` moves each lesion voxel's
    intensity by ``u`` times its lesion fraction towards the median of a
    2-voxel ring around the lesion (image channel only); the border is
    sometimes blurred, as in more diffuse lesions. The target does not
    change: a faint lesion is still a lesion.
    """
    lesion = target > 0.5
    if max_fade <= 0 or not lesion.any():
        return image
    # Tissue only: partial-volume border voxels (0 < fraction <= 0.5) are left out.
    ring = ndimage.binary_dilation(lesion, iterations=2) & (target == 0)
    if not ring.any():
        return image
    weight = target * rng.uniform(0.0, max_fade)
    if rng.random() < 0.5:
        weight = ndimage.gaussian_filter(weight, rng.uniform(0.3, 1.0))
    level = np.median(image[0][ring])
    image = image.copy()
    image[0] += weight * (level - image[0])
    return image


def blank_random_box(volume, low, high, rng):
    """A copy of ``volume`` with one random box set to 0 (cutout).

    Written here rather than taken from MONAI's ``RandCoarseDropout``, which
    draws from its own random state: a training patch must draw everything from
    its own generator, to be the same whatever the number of workers.

    Parameters
    ----------
    volume : ndarray, shape (x, y, z)
    low, high : float
        Each side of the box is drawn between these shares of the volume's.
    rng : numpy.random.Generator

    Returns
    -------
    ndarray
        A blanked copy; ``volume`` is left alone.
    """
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(
            f"blank_random_box: the box's sides are shares of the volume's, so "
            f"0 <= low <= high <= 1 (got low={low}, high={high}); check the "
            f'"template_cutout" entry of AUGMENTATION in estimator.py.'
        )
    shape = np.array(volume.shape)
    sides = rng.integers((low * shape).astype(int), (high * shape).astype(int) + 1)
    corner = [rng.integers(0, n - s + 1) for n, s in zip(shape, sides, strict=True)]
    blanked = np.array(volume)
    blanked[tuple(slice(c, c + s) for c, s in zip(corner, sides, strict=True))] = 0.0
    return blanked


class PatchDataset(Dataset):
    """Training patches as a ``torch.utils.data`` dataset, one seed per patch.

    Patch ``k`` is ``make_patch(subjects, rng)`` with ``rng`` seeded by
    ``(seed, k)``: the patches, and so the fit, are the same whatever the
    number of worker processes that prepare them, and in whatever order the
    workers finish.

    Parameters
    ----------
    subjects : TrainingSubjects
    make_patch : callable
        ``make_patch(subjects, rng)`` returns ``(patch, target)``: float32
        arrays of shape ``(channels, x, y, z)`` and ``(x, y, z)``. The
        submission's own function, so that a student changes the sampling
        and augmentation in ``estimator.py``.
    n_patches : int
        Patches in the whole training (every epoch's).
    seed : int
    """

    def __init__(self, subjects, make_patch, n_patches, seed):
        self.subjects, self.make_patch = subjects, make_patch
        self.n_patches, self.seed = int(n_patches), int(seed)

    def __len__(self):
        return self.n_patches

    def __getitem__(self, index):
        rng = np.random.default_rng((self.seed, int(index)))
        patch, target = self.make_patch(self.subjects, rng)
        return torch.from_numpy(patch), torch.from_numpy(target[None])


def seed_worker(worker_id):
    """Seed a worker's global generators from the seed torch gave it.

    ``PatchDataset`` does not use them, but a ``make_patch`` that calls
    ``np.random`` or ``random`` is then repeatable too. One thread per
    worker: the workers are the parallelism.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)  # noqa: NPY002 (the global generator, on purpose)
    random.seed(seed)
    torch.set_num_threads(1)


def patch_loader(dataset, batch_size, workers, seed, pin_memory=False):
    """A ``DataLoader`` over ``dataset`` in order, ``workers`` processes preparing it.

    Parameters
    ----------
    dataset : PatchDataset
    batch_size : int
    workers : int
        0: patches are prepared in the training loop's process.
    seed : int
        Seeds the loader's generator (and so each worker's base seed).
    pin_memory : bool
        Page-locked batches, for non-blocking copies to a CUDA device.

    Returns
    -------
    torch.utils.data.DataLoader
    """
    options = {}
    if workers:
        # fork shares the subjects' arrays with the workers instead of
        # pickling them, and works with a submission loaded from a file.
        if "fork" in multiprocessing.get_all_start_methods():
            options["multiprocessing_context"] = "fork"
        options.update(worker_init_fn=seed_worker, prefetch_factor=4)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),
        **options,
    )
