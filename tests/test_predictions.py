"""Sparse predictions follow ramp-workflow's contracts (bagging, blending, files)."""

import numpy as np
import pytest
from rampwf.utils.combine import blend_on_fold, get_score_cv_bags

from atlas_ramp.masks import (
    MIN_STORED_PROBABILITY,
    SparseMask,
    SparseProba,
    mean_probabilities,
)
from atlas_ramp.predictions import (
    Predictions,
    load_sparse_probas,
    object_array,
    save_sparse_probas,
)
from atlas_ramp.scores import Dice

SHAPE = (6, 7, 8)


def random_proba(seed, density=0.2):
    rng = np.random.default_rng(seed)
    proba = rng.random(SHAPE).astype(np.float32)
    proba[rng.random(SHAPE) > density] = 0
    return proba


def test_sparse_proba_round_trips_to_8_bits():
    proba = random_proba(0)
    restored = SparseProba.from_dense(proba).to_dense()
    kept = proba >= MIN_STORED_PROBABILITY
    assert np.abs(restored[kept] - proba[kept]).max() <= 0.5 / 255 + 1e-6
    assert np.all(restored[~kept] == 0)


def test_tiny_background_probabilities_cost_nothing():
    proba = np.full(SHAPE, 0.01, np.float32)
    proba[0, 0, 0] = 0.9
    sparse = SparseProba.from_dense(proba)
    assert sparse.indices.size == 1


def test_boolean_prediction_is_probability_one():
    mask = random_proba(1) > 0.5
    sparse = SparseProba.from_dense(mask)
    assert sparse.binarize() == SparseMask.from_dense(mask)


def test_mean_probabilities_is_voxelwise_mean():
    a, b = random_proba(2), random_proba(3)
    mean = mean_probabilities([SparseProba.from_dense(a), SparseProba.from_dense(b)])
    expected = (
        a * (a >= MIN_STORED_PROBABILITY) + b * (b >= MIN_STORED_PROBABILITY)
    ) / 2
    expected[expected < MIN_STORED_PROBABILITY] = 0
    assert np.abs(mean.to_dense() - expected).max() <= 1.5 / 255


def test_repeated_prediction_weights_the_mean():
    ones = SparseProba.from_dense(np.ones(SHAPE, bool))
    zeros = SparseProba.from_dense(np.zeros(SHAPE, bool))
    combined = Predictions.combine(
        [
            Predictions(y_pred=object_array([ones])),
            Predictions(y_pred=object_array([zeros])),
        ],
        index_list=[0, 0, 1],
    )
    assert combined.y_pred[0].to_dense().max() == pytest.approx(2 / 3, abs=1 / 255)


def test_combine_skips_subjects_a_prediction_does_not_cover():
    first = SparseProba.from_dense(random_proba(4))
    second = SparseProba.from_dense(random_proba(5))
    p1 = Predictions(y_pred=object_array([first, None, None]))
    p2 = Predictions(y_pred=object_array([None, second, None]))
    combined = Predictions.combine([p1, p2])
    assert np.array_equal(combined.y_pred[0].to_dense(), first.to_dense())
    assert np.array_equal(combined.y_pred[1].to_dense(), second.to_dense())
    assert combined.y_pred[2] is None
    assert combined.valid_indexes.tolist() == [True, True, False]


def test_fold_slicing_and_setting():
    items = object_array(SparseProba.from_dense(random_proba(i)) for i in range(5))
    fold = Predictions(y_pred=items, fold_is=[1, 3])
    assert len(fold.y_pred) == 2
    empty = Predictions(n_samples=5)
    empty.set_valid_in_train(fold, [1, 3])
    assert empty.valid_indexes.tolist() == [False, True, False, True, False]
    empty.set_slice(empty.valid_indexes)
    assert len(empty.y_pred) == 2


def test_rejects_dense_arrays_with_a_clear_message():
    with pytest.raises(ValueError, match="SparseProba"):
        Predictions(y_pred=object_array([np.zeros(SHAPE)]))


def test_save_and_load_round_trip(tmp_path):
    items = [SparseProba.from_dense(random_proba(i)) for i in range(3)]
    items.insert(1, None)
    path = tmp_path / "y_pred_test.npz"
    save_sparse_probas(object_array(items), path)
    loaded = load_sparse_probas(path)
    assert loaded[1] is None
    for original, restored in zip(items, loaded, strict=True):
        if original is not None:
            assert np.array_equal(original.indices, restored.indices)
            assert np.array_equal(original.levels, restored.levels)
    assert not list(tmp_path.glob("*.partial"))


def test_ramp_bagging_and_blending_run_on_sparse_predictions():
    rng = np.random.default_rng(0)
    truths = [random_proba(10 + i) > 0.5 for i in range(6)]
    y_true = object_array(SparseMask.from_dense(t) for t in truths)
    ground_truth = Predictions(y_true=y_true)
    folds = [np.array([0, 1, 2]), np.array([3, 4, 5])]
    fold_predictions = []
    for valid in folds:
        noisy = object_array(
            SparseProba.from_dense(truths[i] ^ (rng.random(SHAPE) < 0.1)) for i in valid
        )
        fold_predictions.append(Predictions(y_pred=noisy))
    combined, scores = get_score_cv_bags(
        Dice(), fold_predictions, ground_truth, test_is_list=folds
    )
    assert len(scores) == 2 and 0.5 < scores[-1] < 1.0
    perfect = Predictions(y_pred=object_array(SparseProba.from_mask(m) for m in y_true))
    noisy = Predictions(
        y_pred=object_array(
            SparseProba.from_dense(t ^ (rng.random(SHAPE) < 0.3)) for t in truths
        )
    )
    best = blend_on_fold([noisy, perfect], ground_truth, Dice())
    assert best[0] == 1
