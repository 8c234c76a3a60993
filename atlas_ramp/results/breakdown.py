"""Score breakdowns: per subject, per lesion size, per cohort.

The leaderboard gives four numbers, means over subjects. This module keeps what
they are made of: for each subject the four challenge scores and, lesion by
lesion, which true lesions were found and which predicted ones are false, by
lesion size. :mod:`atlas_ramp.results.report` turns these tables into figures and HTML.

Lesion sizes
------------
Lesions are the 3D connected components (face connectivity) that the scores use
(:meth:`atlas_ramp.masks.SparseMask.lesion_labels`), and a true lesion is
*found* when it shares at least one voxel with the prediction, the matching rule
of the lesion-wise F1 (:func:`atlas_ramp.scores.lesion_detection_counts`). True
lesions are binned by their own volume; so are predicted lesions, a predicted
lesion being *false* when it shares no voxel with the truth. The bins are tiny
(< 0.1 mL), small (0.1 to 1 mL), medium (1 to 10 mL) and large (≥ 10 mL); a
lesion exactly on an edge goes to the upper bin (100 voxels of 1 mm³ make a
"small" lesion). Volumes are rounded to 1e-9 mL before binning, so that
floating-point error cannot move a lesion that lies on an edge.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..masks import SparseMask
from ..scores import atlas_score_types, lesion_matches

#: Size bins of lesions, with their upper edges in mL (the last is open).
SIZE_BINS = ("tiny", "small", "medium", "large")
SIZE_EDGES_ML = (0.1, 1.0, 10.0)
SIZE_LABELS = {
    "tiny": "tiny < 0.1 mL",
    "small": "small 0.1–1 mL",
    "medium": "medium 1–10 mL",
    "large": "large ≥ 10 mL",
}
#: The per-subject score columns, Dice first (it ranks the leaderboard).
_SCORES = {score.name: score.subject_score for score in atlas_score_types()}
SCORE_NAMES = tuple(_SCORES)


def size_bin(volumes_ml) -> np.ndarray:
    """Index in :data:`SIZE_BINS` of each volume; an edge goes to the upper bin."""
    rounded = np.round(np.asarray(volumes_ml, dtype=float), 9)
    return np.digitize(rounded, SIZE_EDGES_ML, right=False)


def lesion_volumes_ml(mask: SparseMask) -> np.ndarray:
    """Volume (mL) of each lesion of a mask, in the order of its lesion labels."""
    n_lesions, labels = mask.lesion_labels()
    return np.bincount(labels, minlength=n_lesions) * mask.voxel_volume_ml


def detection_by_size(truth: SparseMask, predicted: SparseMask) -> dict:
    """Lesion counts per size bin for one subject.

    Returns
    -------
    dict of str -> ndarray of int, one value per bin of :data:`SIZE_BINS`
        ``true_lesions``; ``found`` (true lesions sharing a voxel with the
        prediction); ``predicted_lesions``; ``false_lesions`` (predicted lesions
        sharing no voxel with the truth).
    """
    found, real = lesion_matches(truth, predicted)
    true_bins = size_bin(lesion_volumes_ml(truth))
    predicted_bins = size_bin(lesion_volumes_ml(predicted))
    n_bins = len(SIZE_BINS)
    return {
        "true_lesions": np.bincount(true_bins, minlength=n_bins),
        "found": np.bincount(true_bins[found], minlength=n_bins),
        "predicted_lesions": np.bincount(predicted_bins, minlength=n_bins),
        "false_lesions": np.bincount(predicted_bins[~real], minlength=n_bins),
    }


def subject_row(subject_id, cohort, truth: SparseMask, predicted: SparseMask) -> dict:
    """One row of the per-subject table: scores, volumes and lesion counts."""
    row = {"subject": subject_id, "cohort": cohort}
    for name, function in _SCORES.items():
        row[name] = function(truth, predicted)
    row.update(
        true_volume_ml=truth.volume_ml,
        predicted_volume_ml=predicted.volume_ml,
        true_lesions=truth.n_lesions,
        predicted_lesions=predicted.n_lesions,
    )
    for column, counts in detection_by_size(truth, predicted).items():
        for name, count in zip(SIZE_BINS, counts, strict=True):
            row[f"{column}_{name}"] = int(count)
    return row


@dataclass
class WorstCase:
    """A subject drawn in the report's worst-subjects figure."""

    position: int
    subject_id: str
    cohort: str
    truth: SparseMask
    predictions: dict = field(default_factory=dict)  # submission -> SparseMask
    dice: dict = field(default_factory=dict)  # submission -> float
    image: np.ndarray | None = None


def score_subjects(subjects, n_worst: int = 0):
    """Score a stream of subjects, keeping only the ``n_worst`` worst predictions.

    Memory stays flat in the number of subjects: one row per subject, and the
    masks of at most ``n_worst`` subjects.

    Parameters
    ----------
    subjects : iterable of (subject_id, cohort, truth, predicted)
        ``truth`` a SparseMask; ``predicted`` a SparseMask or SparseProba
        (thresholded at 0.5, as the scores do).
    n_worst : int
        How many lowest-Dice subjects to keep, for the figure.

    Returns
    -------
    table : pandas DataFrame
        One row per subject (:func:`subject_row`), in input order.
    worst : list of (position, subject_id, cohort, truth, predicted, dice)
        Lowest Dice first.
    """
    rows, heap = [], []
    for position, (subject_id, cohort, truth, predicted) in enumerate(subjects):
        if not isinstance(predicted, SparseMask):
            predicted = predicted.binarize()
        row = subject_row(subject_id, cohort, truth, predicted)
        rows.append(row)
        if n_worst:
            # A heap of the n_worst lowest Dice: its top is the best of them.
            item = (-row["dice"], -position, subject_id, cohort, truth, predicted)
            heapq.heappush(heap, item)
            if len(heap) > n_worst:
                heapq.heappop(heap)
    worst = sorted(
        ((-p, s, c, t, m, -d) for d, p, s, c, t, m in heap),
        key=lambda w: (w[-1], w[0]),  # lowest Dice first; ties in subject order
    )
    return pd.DataFrame(rows), worst


def select_worst(tables: dict, n_worst: int) -> np.ndarray:
    """Positions of the subjects with the lowest mean Dice over ``tables``."""
    mean_dice = np.mean([t["dice"].to_numpy() for t in tables.values()], axis=0)
    return np.argsort(mean_dice, kind="stable")[:n_worst]


def score_summary(tables: dict) -> pd.DataFrame:
    """Mean, standard deviation (over subjects, ddof=1) and median of each score."""
    rows = {}
    for name, table in tables.items():
        row = {"subjects": len(table)}
        for score in SCORE_NAMES:
            values = table[score]
            row[f"{score}_mean"] = values.mean()
            row[f"{score}_sd"] = values.std()
            row[f"{score}_median"] = values.median()
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("submission")


def detection_table(tables: dict) -> pd.DataFrame:
    """Recall and precision per lesion-size bin, summed over subjects."""
    rows = []
    for name, table in tables.items():
        for size in SIZE_BINS:
            true, found = (
                table[f"true_lesions_{size}"].sum(),
                table[f"found_{size}"].sum(),
            )
            predicted = table[f"predicted_lesions_{size}"].sum()
            false = table[f"false_lesions_{size}"].sum()
            rows.append(
                {
                    "submission": name,
                    "size": SIZE_LABELS[size],
                    "true_lesions": int(true),
                    "found": int(found),
                    "recall": found / true if true else np.nan,
                    "predicted_lesions": int(predicted),
                    "false_lesions": int(false),
                    "precision": 1 - false / predicted if predicted else np.nan,
                }
            )
    return pd.DataFrame(rows).set_index(["submission", "size"])


def cohort_table(tables: dict) -> pd.DataFrame:
    """Number of subjects and mean ± sd of each score, per cohort."""
    parts = []
    for name, table in tables.items():
        grouped = table.groupby("cohort")[list(SCORE_NAMES)]
        summary = grouped.agg(["mean", "std"])
        summary.columns = [
            f"{score}_{'sd' if stat == 'std' else stat}" for score, stat in summary
        ]
        summary.insert(0, "subjects", table.groupby("cohort").size())
        parts.append(summary.assign(submission=name))
    return pd.concat(parts).reset_index().set_index(["submission", "cohort"])
