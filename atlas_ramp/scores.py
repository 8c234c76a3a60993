"""Scores of the ATLAS Grand Challenge, on sparse masks.

Every score is computed per subject, then averaged over subjects:

* **Dice** (ranks the leaderboard): ``2 |T ∩ P| / (|T| + |P|)``; two empty masks
  agree perfectly (Dice 1).
* **Lesion-wise F1**: lesions are 3D connected components with face connectivity
  (6 neighbours). A true lesion is detected (true positive) when a predicted
  lesion shares at least one voxel with it; a predicted lesion that touches no
  true lesion is a false positive; an undetected true lesion a false negative.
  ``F1 = 2 TP / (2 TP + FP + FN)``; 1 when neither mask has a lesion.
* **Volume difference**: ``|volume(P) - volume(T)|`` in millilitres (lower is
  better).
* **Lesion-count difference**: ``|#lesions(P) - #lesions(T)|`` (lower is better).

Predictions are probabilities; a voxel is predicted as lesion when its
probability is at least 0.5. Subjects without a prediction (None, e.g. training
subjects the workflow did not predict) are skipped.
"""

from __future__ import annotations

import numpy as np
from rampwf.score_types.base import BaseScoreType

from .masks import SparseMask, SparseProba


def _as_mask(volume) -> SparseMask:
    if isinstance(volume, SparseProba):
        return volume.binarize()
    return volume


def dice(true: SparseMask, pred: SparseMask) -> float:
    """Dice coefficient of two sparse masks (1 when both are empty)."""
    total = true.n_voxels + pred.n_voxels
    if total == 0:
        return 1.0
    overlap = np.intersect1d(true.indices, pred.indices, assume_unique=True).size
    return 2.0 * overlap / total


def lesion_matches(true: SparseMask, pred: SparseMask) -> tuple[np.ndarray, np.ndarray]:
    """Which lesions of each mask share at least one voxel with the other mask.

    Lesions are 3D connected components (face connectivity), in the order of
    :meth:`SparseMask.lesion_labels`.

    Returns
    -------
    found : ndarray of bool, one per true lesion
        True where a predicted lesion touches it.
    real : ndarray of bool, one per predicted lesion
        True where it touches a true lesion.
    """
    n_true, true_labels = true.lesion_labels()
    n_pred, pred_labels = pred.lesion_labels()
    _, in_true, in_pred = np.intersect1d(
        true.indices, pred.indices, assume_unique=True, return_indices=True
    )
    found = np.zeros(n_true, dtype=bool)
    found[true_labels[in_true]] = True
    real = np.zeros(n_pred, dtype=bool)
    real[pred_labels[in_pred]] = True
    return found, real


def lesion_detection_counts(true: SparseMask, pred: SparseMask) -> tuple[int, int, int]:
    """True positive, false positive and false negative lesion counts.

    Returns
    -------
    tp : int
        True lesions touched by at least one predicted lesion.
    fp : int
        Predicted lesions touching no true lesion.
    fn : int
        True lesions touched by no predicted lesion.
    """
    found, real = lesion_matches(true, pred)
    return int(found.sum()), int((~real).sum()), int((~found).sum())


def lesion_f1(true: SparseMask, pred: SparseMask) -> float:
    """Lesion-wise F1 (1 when neither mask has a lesion)."""
    tp, fp, fn = lesion_detection_counts(true, pred)
    if tp + fp + fn == 0:
        return 1.0
    return 2.0 * tp / (2.0 * tp + fp + fn)


def volume_difference_ml(true: SparseMask, pred: SparseMask) -> float:
    """Absolute difference of lesion volumes, in millilitres."""
    return abs(pred.n_voxels - true.n_voxels) * true.voxel_volume_ml


def lesion_count_difference(true: SparseMask, pred: SparseMask) -> float:
    """Absolute difference of lesion counts."""
    return float(abs(pred.n_lesions - true.n_lesions))


class _SubjectAveragedScore(BaseScoreType):
    """A per-subject score averaged over the subjects that have a prediction."""

    subject_score = None  # set by subclasses: (SparseMask, SparseMask) -> float

    def __init__(self, name: str, precision: int = 3):
        self.name = name
        self.precision = precision

    def __call__(self, y_true, y_pred) -> float:
        values = [
            type(self).subject_score(_as_mask(true), _as_mask(pred))
            for true, pred in zip(y_true, y_pred, strict=True)
            if pred is not None and true is not None
        ]
        if not values:
            return float("nan")
        return float(np.mean(values))


class Dice(_SubjectAveragedScore):
    """Mean per-subject Dice (higher is better, in [0, 1])."""

    is_lower_the_better = False
    minimum = 0.0
    maximum = 1.0
    subject_score = staticmethod(dice)

    def __init__(self, name: str = "dice", precision: int = 3):
        super().__init__(name, precision)


class LesionF1(_SubjectAveragedScore):
    """Mean per-subject lesion-wise F1 (higher is better, in [0, 1])."""

    is_lower_the_better = False
    minimum = 0.0
    maximum = 1.0
    subject_score = staticmethod(lesion_f1)

    def __init__(self, name: str = "lesion_f1", precision: int = 3):
        super().__init__(name, precision)


class VolumeDifference(_SubjectAveragedScore):
    """Mean absolute lesion-volume difference in mL (lower is better)."""

    is_lower_the_better = True
    minimum = 0.0
    maximum = float("inf")
    subject_score = staticmethod(volume_difference_ml)

    def __init__(self, name: str = "volume_diff_ml", precision: int = 2):
        super().__init__(name, precision)


class LesionCountDifference(_SubjectAveragedScore):
    """Mean absolute difference in lesion counts (lower is better)."""

    is_lower_the_better = True
    minimum = 0.0
    maximum = float("inf")
    subject_score = staticmethod(lesion_count_difference)

    def __init__(self, name: str = "lesion_count_diff", precision: int = 2):
        super().__init__(name, precision)


def atlas_score_types() -> list[BaseScoreType]:
    """The kit's scores, Dice first (it ranks the leaderboard)."""
    return [Dice(), LesionF1(), VolumeDifference(), LesionCountDifference()]
