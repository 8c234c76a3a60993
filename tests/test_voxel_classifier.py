"""The voxel classifier submission (``submissions/voxel_classifier``).

On the small 4 mm synthetic sample:

* the real ``ramp-test --submission voxel_classifier --quick-test`` command, run
  as a separate process in a temporary kit folder, as a student would run it;
* in process: the estimator contract (shapes, dtypes, probabilities in [0, 1])
  and the two grid helpers the features rely on (the mirror, the 2 mm grid).
"""

from pathlib import Path

import numpy as np
import pytest
from rampwf.utils.importing import import_module_from_source

from atlas_ramp.volumes import MaskSequence, load_split

from .helpers import bagged_test_dice, quick_test

REPO = Path(__file__).resolve().parents[1]
SUBMISSION = REPO / "submissions" / "voxel_classifier"


def load_submission():
    return import_module_from_source(str(SUBMISSION / "estimator.py"), "estimator")


@pytest.mark.slow
def test_ramp_test_quick_test_runs(small_sample, tmp_path):
    output = quick_test(tmp_path / "kit", small_sample, "voxel_classifier")
    # It learns something: predicting nothing scores 0 here, the starting kit
    # below 0.1.
    assert 0.2 < bagged_test_dice(output) <= 1.0


@pytest.mark.slow
def test_fit_predict_contract(small_sample):
    module = load_submission()
    X_train, y_train = load_split(small_sample, "train")
    X_test, _ = load_split(small_sample, "test")
    X_batch = X_test[:4]  # the workflow predicts batches of 4

    estimator = module.get_estimator().fit(X_train, MaskSequence(y_train))
    proba = estimator.predict_proba(X_batch)
    mask = estimator.predict(X_batch)

    assert 0 < estimator.threshold_ < 1
    assert proba.shape == mask.shape == (len(X_batch), *X_test.volume_shape)
    assert proba.dtype == np.float32 and mask.dtype == bool
    assert np.isfinite(proba).all()
    assert proba.min() >= 0 and proba.max() <= 1
    np.testing.assert_array_equal(mask, proba >= 0.5)
    assert mask.any()  # every synthetic subject has a lesion


@pytest.mark.parametrize("downsample", [1, 4])
def test_mirror_maps_x_to_minus_x(downsample):
    """On the 1 mm grid and on the block-averaged 4 mm grid (origin moved)."""
    from atlas_ramp.synthetic import downsampled_affine

    module = load_submission()
    affine = downsampled_affine(
        np.array([[1, 0, 0, -98], [0, 1, 0, -134], [0, 0, 1, -72], [0, 0, 0, 1.0]]),
        downsample,
    )
    shape = tuple(-(-np.array([197, 233, 189]) // downsample))
    atlas = module._Atlas(affine, shape)
    x_mm = atlas.mni[0]
    inner = slice(2, -2)  # the edge voxel's mirror lies outside the grid
    np.testing.assert_allclose(atlas.mirror(x_mm)[inner], -x_mm[inner], atol=1e-3)


def test_working_grid_round_trip():
    """Sample k of the working grid sits on data voxel 2k; growing is linear."""
    module = load_submission()
    shape = (9, 8, 7)
    ramp = np.indices(shape, dtype=np.float32).sum(axis=0)
    coarse = ramp[::2, ::2, ::2]
    grown = module._grow(coarse, shape, 2)
    assert grown.shape == shape
    # The last y voxel lies beyond the last sample: it copies its neighbour.
    np.testing.assert_allclose(grown[:, :-1], ramp[:, :-1])
