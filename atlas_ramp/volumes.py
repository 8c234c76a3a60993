"""Lazy access to the volumes of a split: ``X`` (images) and ``y`` (masks).

``X`` is an :class:`ImageSequence`: it behaves like a sequence of float32 3D
arrays, but holds only file names. ``X[i]`` reads one volume; ``X[[0, 3, 5]]``
(or a boolean mask, or a slice) gives another lazy sequence. Memory does not grow
with the number of subjects. As for an array, ``X.shape`` is
``(n_subjects, *X.volume_shape)``, so scikit-learn's splitters accept ``X``;
``np.asarray(X)`` refuses (it would load every volume at once).

Every volume is checked when it is first decoded: a truncated or unreadable file,
NaN or infinite voxels raise a :class:`~atlas_ramp.bids.DataError` naming the
file (a data problem, never the submission's fault).

The first read of a volume also writes it, decompressed, to an on-disk cache
(:mod:`atlas_ramp.volume_cache`), so that cross-validation folds and training
epochs do not pay gzip decoding again.

``y`` is a 1D numpy object array of :class:`~atlas_ramp.masks.SparseMask`, built
by :func:`load_masks` (also cached). Estimators see it through
:class:`MaskSequence`, which turns one mask at a time into a boolean array.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ._io import object_array
from .bids import DataError, Subject, find_subjects, no_masks_error, read_header
from .grids import check_same_grid, check_split
from .masks import SparseMask
from .volume_cache import VolumeCache, default_cache_dir, read_nifti


class ImageSequence(Sequence):
    """A lazy sequence of T1w volumes (float32 3D arrays), one per subject.

    Parameters
    ----------
    subjects : list of Subject
        The subjects, in order.
    volume_shape : tuple of int
        The common volume shape (the grid).
    affine : ndarray of shape (4, 4)
        The common voxel-to-world affine (MNI152NLin2009aSym).
    cache_dir : path or None
        Decompressed volume cache; None disables it.

    Examples
    --------
    >>> X = ImageSequence.from_folder("data/train")  # doctest: +SKIP
    >>> volume = X[0]                                # one float32 3D array
    >>> X_fold = X[[0, 2, 5]]                        # another lazy sequence
    >>> X_fold.subject_ids, X_fold.cohorts           # who they are
    >>> X.shape == (len(X), *X.volume_shape)         # as for an array
    True
    """

    def __init__(self, subjects, volume_shape, affine, cache_dir=None):
        self.subjects = list(subjects)
        self.volume_shape = tuple(int(n) for n in volume_shape)
        self.affine = np.asarray(affine, dtype=float)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self._cache = VolumeCache(self.cache_dir)

    @classmethod
    def from_folder(cls, split_dir: Path | str, cache_dir="default") -> ImageSequence:
        """Discover the subjects of a split folder and check their headers.

        Parameters
        ----------
        split_dir : path
            E.g. ``data/train``; any layout that :func:`~atlas_ramp.bids.find_subjects`
            understands.
        cache_dir : path, None or "default"
            "default" is ``<data>/.cache/<split>``.
        """
        subjects = find_subjects(split_dir)
        shape, affine = check_split(subjects)
        if cache_dir == "default":
            cache_dir = default_cache_dir(split_dir)
        return cls(subjects, shape, affine, cache_dir)

    def __len__(self) -> int:
        return len(self.subjects)

    def __getitem__(self, index):
        if isinstance(index, int | np.integer):
            subject = self.subjects[index]
            return self._cache.load(subject.t1w_path, np.float32)
        if isinstance(index, slice):
            chosen = self.subjects[index]
        else:
            positions = np.arange(len(self.subjects))[np.asarray(index)]
            chosen = [self.subjects[i] for i in np.atleast_1d(positions)]
        return ImageSequence(chosen, self.volume_shape, self.affine, self.cache_dir)

    def __iter__(self):
        for position in range(len(self)):
            yield self[position]

    def without_masks(self) -> ImageSequence:
        """The same images, with no subject pointing to its lesion mask.

        What a submission receives: it learns masks from ``y`` only, and a
        ``predict`` cannot follow ``mask_path`` to the answers.
        """
        subjects = [dataclasses.replace(s, mask_path=None) for s in self.subjects]
        return ImageSequence(subjects, self.volume_shape, self.affine, self.cache_dir)

    @property
    def shape(self) -> tuple[int, ...]:
        """``(n_subjects, *volume_shape)``, as the array ``X`` stands for."""
        return (len(self), *self.volume_shape)

    def __array__(self, dtype=None, copy=None):
        # Without this, numpy would iterate and stack every volume: 655 subjects
        # at 1 mm are 23 GB. Refuse, and say what to do instead.
        raise TypeError(
            f"X is a lazy sequence of {len(self)} volumes of shape "
            f"{self.volume_shape}; np.asarray(X) would load them all at once "
            f"({len(self) * np.prod(self.volume_shape) * 4 / 1e9:.1f} GB as float32). "
            "Read one volume at a time with X[i] (or X[indices] for a lazy subset); "
            "if you really want them all: np.stack([X[i] for i in range(len(X))])."
        )

    def __repr__(self) -> str:
        return f"ImageSequence({len(self)} subjects, volume_shape={self.volume_shape})"

    @property
    def subject_ids(self) -> np.ndarray:
        """Subject IDs (``sub-r001s001``), as an array of str.

        The sessions of one subject share its ID: use it as ``groups`` to keep
        them together (the kit's cross-validation does).
        """
        return np.array([s.subject_id for s in self.subjects])

    @property
    def sessions(self) -> np.ndarray:
        """Session of each entry (``1`` for ATLAS), as an array of str."""
        return np.array([s.session for s in self.subjects])

    @property
    def cohorts(self) -> np.ndarray:
        """Cohort of each subject (``R001``), as an array of str."""
        return np.array([s.cohort for s in self.subjects])

    @property
    def t1w_paths(self) -> list[Path]:
        return [s.t1w_path for s in self.subjects]

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres (0.001 at 1 mm isotropic)."""
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0

    @property
    def is_labelled(self) -> bool:
        return all(s.mask_path is not None for s in self.subjects)


def _load_mask_array(path: Path) -> np.ndarray:
    volume = read_nifti(path, np.float32)
    values = np.unique(volume)
    if not np.all(np.isin(values, (0.0, 1.0))):
        shown = ", ".join(f"{v:g}" for v in values[:6])
        raise DataError(
            f"{path} has values {shown}{'...' if values.size > 6 else ''}; a lesion "
            "mask must hold only 0 and 1. Binarize it (e.g. > 0.5) or rebuild it."
        )
    return volume > 0.5


def load_mask(
    subject: Subject, shape, voxel_volume_ml: float, cache_dir=None
) -> SparseMask:
    """Read one subject's lesion mask as a :class:`SparseMask` (cached).

    ``shape`` is the grid of the split, which every mask was checked to be on
    when the split was read (:mod:`atlas_ramp.grids`).
    """
    path = Path(subject.mask_path)
    indices = VolumeCache(cache_dir).cached(
        path, ".idx", lambda: np.flatnonzero(_load_mask_array(path)).astype(np.int32)
    )
    return SparseMask(indices, shape, voxel_volume_ml)


def load_masks(X: ImageSequence, split_dir: Path | str | None = None) -> np.ndarray:
    """The lesion masks of a labelled split, as an object array of SparseMask.

    Parameters
    ----------
    X : ImageSequence
    split_dir : path, optional
        The split's folder, named in the error when it has no masks (by
        default the folder that holds all the images).

    Raises
    ------
    DataError
        If the split is unlabelled (naming the folder, the mask name expected
        and the mask-like files found), or a mask is unreadable or not binary.
    """
    if not X.is_labelled:
        if split_dir is None:
            split_dir = os.path.commonpath([str(p.parent) for p in X.t1w_paths])
        raise no_masks_error(split_dir, X.subjects[0])
    return object_array(
        load_mask(subject, X.volume_shape, X.voxel_volume_ml, X.cache_dir)
        for subject in X.subjects
    )


class MaskSequence(Sequence):
    """What an estimator's ``fit`` receives as ``y``: boolean 3D masks, lazily.

    ``y[i]`` is a dense boolean array of the volume shape, made on access from
    the sparse mask, so only one dense mask exists at a time.

    Parameters
    ----------
    masks : sequence of SparseMask
    """

    def __init__(self, masks):
        self.masks = object_array(masks)

    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, index):
        if isinstance(index, int | np.integer):
            return self.masks[index].to_dense()
        return MaskSequence(self.masks[index])

    def __iter__(self):
        for position in range(len(self)):
            yield self[position]

    @property
    def volumes_ml(self) -> np.ndarray:
        """Lesion volume of each subject in mL (cheap: no dense mask made)."""
        return np.array([mask.volume_ml for mask in self.masks])

    @property
    def sparse(self) -> np.ndarray:
        """The underlying sparse masks (flat voxel indices), for fast code."""
        return self.masks

    def __repr__(self) -> str:
        return f"MaskSequence({len(self)} masks)"


def quick_subset(X: ImageSequence, n_subjects: int) -> np.ndarray:
    """Positions of at most ``n_subjects`` subjects, taken cohort by cohort.

    Round-robin over cohorts (in subject order), so a small subset still shows
    every cohort; deterministic.
    """
    by_cohort: dict[str, list[int]] = {}
    for position, cohort in enumerate(X.cohorts):
        by_cohort.setdefault(cohort, []).append(position)
    chosen = []
    while len(chosen) < min(n_subjects, len(X)):
        for members in by_cohort.values():
            if members and len(chosen) < n_subjects:
                chosen.append(members.pop(0))
    return np.sort(np.asarray(chosen, dtype=int))


def check_against_split(X: ImageSequence, split_dir: Path | str, name: str) -> None:
    """Refuse ``X`` if it is not on the grid of another split, or shares subjects.

    Reads the headers of the other split's first subject only (that split checks
    its own subjects when it is loaded).

    Raises
    ------
    DataError
        Naming both grids, or the subjects found in both splits.
    """
    split_dir = Path(split_dir)
    others = find_subjects(split_dir)
    reference = read_header(others[0].t1w_path)
    check_same_grid(
        (str(split_dir), tuple(reference.shape), reference.affine),
        (name, X.volume_shape, X.affine),
    )
    shared = sorted(set(X.subject_ids) & {s.subject_id for s in others})
    if shared:
        raise DataError(
            f"{len(shared)} subject(s) are both in {split_dir} and in {name} (e.g. "
            f"{shared[0]}): a subject must be on one side only, or the test scores "
            "measure memory, not generalization. Rebuild the hold-out."
        )


def load_split(
    data_dir: Path | str,
    split: str,
    max_subjects: int | None = None,
    same_grid_as: str | None = None,
    labelled: bool = True,
):
    """Load a labelled split folder ``<data_dir>/<split>`` as ``(X, y)``.

    Parameters
    ----------
    data_dir : path
        The data folder (``data``), holding ``train/`` and ``test/``.
    split : str
        ``"train"`` or ``"test"``.
    max_subjects : int, optional
        Keep a small cohort-balanced subset (quick tests).
    same_grid_as : str, optional
        Another split of ``data_dir`` (``"train"``) that this one must match: same
        grid, no subject in common. Checked before any volume is read.
    labelled : bool
        False: read the images only, whether or not masks are on disk (the
        course server's sandbox holds none of the test masks); ``y`` is then
        None for every subject, and scores on it are NaN.

    Returns
    -------
    X : ImageSequence
    y : ndarray of SparseMask (or of None when not ``labelled``)
    """
    split_dir = Path(data_dir) / split
    X = ImageSequence.from_folder(split_dir)
    if same_grid_as is not None:
        check_against_split(X, Path(data_dir) / same_grid_as, str(split_dir))
    if max_subjects is not None:
        X = X[quick_subset(X, max_subjects)]
    if not labelled:
        return X.without_masks(), object_array([None] * len(X))
    return X, load_masks(X, split_dir)
