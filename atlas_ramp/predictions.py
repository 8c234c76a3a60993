"""Predictions: ramp-workflow's container for sparse lesion probabilities.

ramp-workflow moves predictions around as ``Predictions`` objects whose
``y_pred`` is indexed by subject. Here ``y_pred`` is a 1D numpy object array:
one :class:`~atlas_ramp.masks.SparseProba` per subject, or None where a subject
was not predicted (a training subject outside the scored subset, or a subject
outside the folds combined so far). This keeps memory proportional to lesion
voxels, and gives the contracts that CV bagging and ``ramp-blend`` rely on:

* ``Predictions(y_pred=..., fold_is=...)`` / ``Predictions(y_true=...)`` /
  ``Predictions(n_samples=...)``;
* ``set_valid_in_train``, ``valid_indexes``, ``set_slice``;
* ``combine``: the voxel-wise mean of probabilities, over the predictions that
  cover each subject (the sparse analogue of ``nanmean``).

Ground truth uses the same container with :class:`~atlas_ramp.masks.SparseMask`
entries.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rampwf.prediction_types.base import BasePrediction

from ._io import atomic_path, object_array
from .masks import SparseMask, SparseProba, mean_probabilities


class Predictions(BasePrediction):
    """Per-subject sparse lesion probabilities (or sparse ground-truth masks).

    Parameters
    ----------
    y_pred : sequence of SparseProba or None, optional
        Predictions, one per subject.
    y_true : sequence of SparseMask, optional
        Ground truth, one per subject.
    n_samples : int, optional
        Make an empty container of this many subjects (all None).
    fold_is : array of int, optional
        Keep only these subjects.
    """

    n_columns = 0

    def __init__(self, y_pred=None, y_true=None, n_samples=None, fold_is=None):
        if y_pred is not None:
            values = y_pred
        elif y_true is not None:
            values = y_true
        elif n_samples is not None:
            values = [None] * n_samples
        else:
            raise ValueError("Missing init argument: y_pred, y_true, or n_samples")
        values = values if isinstance(values, np.ndarray) else object_array(values)
        if fold_is is not None:
            values = values[fold_is]
        self.y_pred = object_array(values)
        self.check_y_pred_dimensions()

    def check_y_pred_dimensions(self):
        for position, item in enumerate(self.y_pred):
            if item is not None and not isinstance(item, SparseMask | SparseProba):
                raise ValueError(
                    f"Prediction {position} is a {type(item).__name__}; expected a "
                    "SparseProba (or SparseMask) or None."
                )

    @property
    def valid_indexes(self) -> np.ndarray:
        """Boolean mask of the subjects that have a prediction."""
        return np.array([item is not None for item in self.y_pred], dtype=bool)

    def set_valid_in_train(self, predictions, test_is):
        """Put a fold's predictions at their subjects' positions."""
        self.y_pred[test_is] = predictions.y_pred

    def set_slice(self, valid_indexes):
        """Keep only the subjects in ``valid_indexes``."""
        self.y_pred = object_array(self.y_pred[valid_indexes])

    @classmethod
    def combine(cls, predictions_list, index_list=None):
        """Mean probability over the predictions that cover each subject.

        Parameters
        ----------
        predictions_list : list of Predictions
            All of the same length.
        index_list : list of int, optional
            Which of them to combine; repetitions weight a prediction more (as
            greedy blending does). Default: all.
        """
        if index_list is None:
            index_list = range(len(predictions_list))
        chosen = [predictions_list[i].y_pred for i in index_list]
        combined = []
        for subject_predictions in zip(*chosen, strict=True):
            present = [_as_proba(p) for p in subject_predictions if p is not None]
            combined.append(mean_probabilities(present) if present else None)
        return cls(y_pred=object_array(combined))

    def __str__(self) -> str:
        n_valid = int(self.valid_indexes.sum())
        return f"Predictions({len(self.y_pred)} subjects, {n_valid} predicted)"


def _as_proba(item) -> SparseProba:
    return SparseProba.from_mask(item) if isinstance(item, SparseMask) else item


def save_sparse_probas(y_pred, path: Path | str) -> None:
    """Write per-subject sparse probabilities to one compressed ``.npz`` file.

    All subjects' indices and levels are concatenated, with per-subject counts
    (-1 for a subject without prediction). The file is written under a temporary
    name and renamed, so a crash never leaves a truncated file.
    """
    path = Path(path)
    probas = [None if p is None else _as_proba(p) for p in y_pred]
    present = [p for p in probas if p is not None]
    reference = present[0] if present else None
    counts = np.array([-1 if p is None else p.indices.size for p in probas], np.int64)
    indices = np.concatenate([p.indices for p in present] or [np.zeros(0, np.int32)])
    levels = np.concatenate([p.levels for p in present] or [np.zeros(0, np.uint8)])
    shape = np.array(reference.shape if reference else (0, 0, 0), dtype=np.int64)
    voxel_ml = np.array(reference.voxel_volume_ml if reference else 0.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary, open(temporary, "wb") as stream:
        np.savez_compressed(
            stream,
            counts=counts,
            indices=indices,
            levels=levels,
            shape=shape,
            voxel_volume_ml=voxel_ml,
        )


def load_sparse_probas(path: Path | str) -> np.ndarray:
    """Read a file written by :func:`save_sparse_probas` (object array)."""
    with np.load(path) as archive:
        counts = archive["counts"]
        indices, levels = archive["indices"], archive["levels"]
        shape = tuple(int(s) for s in archive["shape"])
        voxel_ml = float(archive["voxel_volume_ml"])
    items, start = [], 0
    for count in counts:
        if count < 0:
            items.append(None)
            continue
        stop = start + int(count)
        items.append(
            SparseProba(indices[start:stop], levels[start:stop], shape, voxel_ml)
        )
        start = stop
    return object_array(items)
