"""ATLAS v2.0 stroke-lesion segmentation on T1w MRI: the RAMP problem.

Given a T1w MRI registered to MNI152NLin2009aSym (1 mm, 197 x 233 x 189), predict
the mask of the chronic stroke lesion(s). Submissions are ranked by Dice, averaged
over subjects; the other ATLAS Grand Challenge metrics are reported beside it.
"""

import os

from atlas_ramp.bids import data_errors_shown_first
from atlas_ramp.predictions import (
    Predictions,  # noqa: F401  (used by ramp-workflow)
    load_sparse_probas,
    save_sparse_probas,
)
from atlas_ramp.scores import atlas_score_types
from atlas_ramp.splits import CohortStratifiedShuffleSplit
from atlas_ramp.testmode import is_quick_test, is_unlabelled_test
from atlas_ramp.volumes import load_split
from atlas_ramp.workflow import LesionSegmentation

problem_title = "Stroke lesion segmentation on T1w MRI (ATLAS v2.0)"

# Predictions (imported above): one sparse lesion-probability map per subject,
# averaged voxel by voxel when CV folds or submissions are combined.
# submissions/<name>/estimator.py defines get_estimator() -> fit / predict(_proba).
workflow = LesionSegmentation(workflow_element_names=["estimator"])

# Per-subject scores averaged over subjects; the first one ranks the leaderboard:
# dice, lesion_f1, volume_diff_ml, lesion_count_diff (atlas_ramp/scores.py).
score_types = atlas_score_types()

# `ramp-test --quick-test` sets RAMP_TEST_MODE: a few subjects and 2 folds.
QUICK_TEST = is_quick_test()
QUICK_N_TRAIN, QUICK_N_TEST = 12, 6


def get_cv(X, y):
    """New subjects from known cohorts, as in the ATLAS hidden test set.

    Subjects are drawn, not sessions: all sessions of a subject stay on one side.
    To mirror the generalizability set (unseen sites) instead, use
    ``atlas_ramp.splits.LeaveCohortsOut(n_splits=...)``.
    """
    cv = CohortStratifiedShuffleSplit(
        n_splits=2 if QUICK_TEST else 5, test_size=0.2, random_state=42
    )
    return cv.split(X, y)


def get_train_data(path="."):
    """Lazy T1w volumes and sparse masks of ``<path>/data/train``."""
    n = QUICK_N_TRAIN if QUICK_TEST else None
    with data_errors_shown_first():  # before ramp-test's long traceback
        return load_split(os.path.join(path, "data"), "train", max_subjects=n)


def get_test_data(path="."):
    """Lazy T1w volumes and sparse masks of ``<path>/data/test``.

    Refused before any training when it is not on the grid of ``data/train``, or
    shares subjects with it. In a course server's sandbox
    (``ATLAS_RAMP_UNLABELLED_TEST`` set), the images only: the masks are not
    there, the test scores printed are NaN, and the saved test predictions are
    scored outside the sandbox (``atlas_ramp.course.trusted_scoring``).
    """
    n = QUICK_N_TEST if QUICK_TEST else None
    data = os.path.join(path, "data")
    with data_errors_shown_first():
        return load_split(
            data,
            "test",
            max_subjects=n,
            same_grid_as="train",
            labelled=not is_unlabelled_test(),
        )


def save_y_pred(y_pred, data_path=".", output_path=".", suffix="test"):
    """Write predictions compactly: ``<output_path>/y_pred_<suffix>.npz``."""
    save_sparse_probas(y_pred, os.path.join(output_path, f"y_pred_{suffix}.npz"))


def load_y_pred(data_path=".", input_path=".", suffix="test"):
    """Read predictions written by :func:`save_y_pred`."""
    path = os.path.join(input_path, f"y_pred_{suffix}.npz")
    if not os.path.exists(path):
        # ramp-blend reads as many folds as get_cv makes now: 5, or 2 when
        # RAMP_TEST_MODE is set, as `ramp-test --quick-test` does.
        if QUICK_TEST:
            advice = (
                "ramp-blend in quick mode (RAMP_TEST_MODE set) reads the 2 folds "
                "that `ramp-test --quick-test --save-output` saves: run it for this "
                "submission first."
            )
        else:
            advice = (
                "ramp-blend reads the 5 folds of a full `ramp-test --save-output`. To "
                "blend quick runs (`ramp-test --quick-test --save-output`, 2 folds), "
                "set the variable that --quick-test sets: `RAMP_TEST_MODE=1 "
                "ramp-blend --submissions ...`; otherwise run `ramp-test --submission "
                "<name> --save-output` first."
            )
        raise FileNotFoundError(f"{path} does not exist: {advice}")
    return load_sparse_probas(path)
