"""The sparse scores equal plain dense reference implementations."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from atlas_ramp.masks import SparseMask, SparseProba
from atlas_ramp.predictions import Predictions, object_array
from atlas_ramp.scores import (
    Dice,
    LesionCountDifference,
    LesionF1,
    VolumeDifference,
    dice,
    lesion_count_difference,
    lesion_f1,
    volume_difference_ml,
)

VOXEL_ML = 0.064  # a 4 mm voxel

# ---------------------------------------------------------------- references


def dense_dice(true, pred):
    total = true.sum() + pred.sum()
    return 1.0 if total == 0 else 2 * (true & pred).sum() / total


def dense_lesion_f1(true, pred):
    true_labels, n_true = ndimage.label(true)
    pred_labels, n_pred = ndimage.label(pred)
    tp = sum(1 for k in range(1, n_true + 1) if pred[true_labels == k].any())
    fp = sum(1 for k in range(1, n_pred + 1) if not true[pred_labels == k].any())
    fn = n_true - tp
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def dense_count_difference(true, pred):
    return abs(ndimage.label(pred)[1] - ndimage.label(true)[1])


# ---------------------------------------------------------------- strategies

shapes = st.tuples(*[st.integers(1, 7)] * 3)


@st.composite
def mask_pairs(draw):
    """Random masks, dense or sparse, touching the borders, often empty."""
    shape = draw(shapes)
    size = int(np.prod(shape))
    density_true = draw(st.sampled_from([0.0, 0.05, 0.3, 0.7, 1.0]))
    density_pred = draw(st.sampled_from([0.0, 0.05, 0.3, 0.7, 1.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    true = (rng.random(size) < density_true).reshape(shape)
    pred = (rng.random(size) < density_pred).reshape(shape)
    return true, pred


def sparse(mask):
    return SparseMask.from_dense(mask, VOXEL_ML)


@settings(max_examples=300, deadline=None)
@given(mask_pairs())
def test_scores_equal_dense_reference(pair):
    true, pred = pair
    t, p = sparse(true), sparse(pred)
    assert dice(t, p) == pytest.approx(dense_dice(true, pred))
    assert lesion_f1(t, p) == pytest.approx(dense_lesion_f1(true, pred))
    assert volume_difference_ml(t, p) == pytest.approx(
        abs(int(pred.sum()) - int(true.sum())) * VOXEL_ML
    )
    assert lesion_count_difference(t, p) == dense_count_difference(true, pred)


@settings(max_examples=100, deadline=None)
@given(mask_pairs())
def test_lesion_count_equals_scipy_label(pair):
    mask, _ = pair
    assert sparse(mask).n_lesions == ndimage.label(mask)[1]


# ---------------------------------------------------------------- edge cases


def test_empty_truth_and_empty_prediction_agree_perfectly():
    empty = np.zeros((4, 4, 4), bool)
    assert dice(sparse(empty), sparse(empty)) == 1.0
    assert lesion_f1(sparse(empty), sparse(empty)) == 1.0
    assert volume_difference_ml(sparse(empty), sparse(empty)) == 0.0


def test_empty_prediction_of_a_lesion_scores_zero():
    true = np.zeros((4, 4, 4), bool)
    true[1, 1, 1] = True
    empty = np.zeros_like(true)
    assert dice(sparse(true), sparse(empty)) == 0.0
    assert lesion_f1(sparse(true), sparse(empty)) == 0.0
    assert lesion_f1(sparse(empty), sparse(true)) == 0.0


def test_one_voxel_lesion_found():
    true = np.zeros((5, 5, 5), bool)
    true[2, 2, 2] = True
    pred = true.copy()
    pred[2, 2, 3] = True
    assert dice(sparse(true), sparse(pred)) == pytest.approx(2 / 3)
    assert lesion_f1(sparse(true), sparse(pred)) == 1.0


def test_diagonal_neighbours_are_separate_lesions():
    # Face connectivity: voxels touching by an edge or a corner are two lesions.
    mask = np.zeros((3, 3, 3), bool)
    mask[0, 0, 0] = mask[1, 1, 0] = mask[2, 2, 2] = True
    assert sparse(mask).n_lesions == 3


def test_components_do_not_wrap_around_the_volume_border():
    # Flat indices of the last voxel of one row and the first of the next are
    # consecutive, but the voxels are not neighbours.
    mask = np.zeros((2, 2, 3), bool)
    mask[0, 0, 2] = mask[0, 1, 0] = True
    assert sparse(mask).n_lesions == 2


def test_touching_lesions_merge_and_one_prediction_detects_both_parts():
    true = np.zeros((6, 6, 6), bool)
    true[0:2, 0:2, 0:2] = True
    true[2:4, 0:2, 0:2] = True  # touches the first by a face: one lesion
    pred = np.zeros_like(true)
    pred[3, 1, 1] = True
    assert sparse(true).n_lesions == 1
    assert lesion_f1(sparse(true), sparse(pred)) == 1.0


def test_false_positive_lesion_lowers_f1():
    true = np.zeros((8, 8, 8), bool)
    true[1, 1, 1] = True
    pred = true.copy()
    pred[6, 6, 6] = True
    # TP = 1, FP = 1, FN = 0 -> F1 = 2 / 3
    assert lesion_f1(sparse(true), sparse(pred)) == pytest.approx(2 / 3)


# ---------------------------------------------------------------- score types


def test_score_types_average_over_subjects_and_skip_unpredicted():
    rng = np.random.default_rng(0)
    truths = [rng.random((5, 6, 7)) < 0.1 for _ in range(4)]
    preds = [rng.random((5, 6, 7)) < 0.1 for _ in range(4)]
    y_true = Predictions(y_true=object_array(sparse(t) for t in truths))
    y_pred_items = [SparseProba.from_dense(p, VOXEL_ML) for p in preds]
    y_pred_items[2] = None  # not predicted: not scored
    y_pred = Predictions(y_pred=object_array(y_pred_items))
    expected = np.mean([dense_dice(truths[i], preds[i]) for i in (0, 1, 3)])
    assert Dice().score_function(y_true, y_pred) == pytest.approx(expected)
    for score in (LesionF1(), VolumeDifference(), LesionCountDifference()):
        assert np.isfinite(score.score_function(y_true, y_pred))


def test_probabilities_are_thresholded_at_one_half():
    true = np.zeros((3, 3, 3), bool)
    true[1, 1, 1] = True
    proba = np.zeros((3, 3, 3), np.float32)
    proba[1, 1, 1] = 0.5
    proba[0, 0, 0] = 0.49
    y_true = Predictions(y_true=object_array([sparse(true)]))
    y_pred = Predictions(y_pred=object_array([SparseProba.from_dense(proba)]))
    assert Dice().score_function(y_true, y_pred) == 1.0


def test_score_conventions_for_ramp():
    assert not Dice().is_lower_the_better and Dice().worst == 0.0
    assert VolumeDifference().is_lower_the_better
    assert LesionCountDifference().is_lower_the_better


@settings(max_examples=100, deadline=None)
@given(mask_pairs())
def test_sparse_graph_labelling_equals_scipy_label(pair):
    # Scattered voxels are labelled on a sparse graph instead of a dense box.
    from atlas_ramp.masks import _sparse_components

    mask, _ = pair
    indices = np.flatnonzero(mask)
    if indices.size == 0:
        return
    coords = np.unravel_index(indices, mask.shape)
    n_lesions, labels = _sparse_components(indices, coords, mask.shape)
    reference, n_reference = ndimage.label(mask)
    assert n_lesions == n_reference
    # Same partition of voxels: a one-to-one map between the two labellings.
    pairs = set(zip(labels.tolist(), reference[coords].tolist(), strict=True))
    assert len(pairs) == n_lesions
