"""The starting kit learns something: it beats predicting nothing or everything."""

import numpy as np
from rampwf.utils.importing import import_module_from_source

from atlas_ramp.masks import SparseMask
from atlas_ramp.predictions import object_array
from atlas_ramp.scores import Dice, LesionF1
from atlas_ramp.volumes import MaskSequence, load_split

from .helpers import REPO


def test_starting_kit_beats_trivial_predictions(small_sample):
    module = import_module_from_source(
        str(REPO / "submissions" / "starting_kit" / "estimator.py"), "estimator"
    )
    X_train, y_train = load_split(small_sample, "train")
    X_test, y_test = load_split(small_sample, "test")
    estimator = module.get_estimator().fit(X_train, MaskSequence(y_train))
    predicted = object_array(
        SparseMask.from_dense(mask, X_test.voxel_volume_ml)
        for mask in estimator.predict(X_test)
    )
    grid = X_test.volume_shape
    nothing = object_array(SparseMask([], grid) for _ in y_test)
    all_voxels = np.arange(np.prod(grid))
    everything = object_array(SparseMask(all_voxels, grid) for _ in y_test)
    dice = Dice()
    kit = dice(y_test, predicted)
    assert kit > dice(y_test, nothing) + 0.1
    assert kit > dice(y_test, everything) + 0.1
    assert LesionF1()(y_test, predicted) > LesionF1()(y_test, nothing)
    # What was learned is stored, so students can read it.
    assert estimator.tissue_region_.shape == X_train.volume_shape
    assert estimator.min_lesion_voxels_ >= 1
