"""The small rules the baselines share (``atlas_ramp.rules``)."""

import numpy as np
from scipy import special

from atlas_ramp.rules import head_mask, shift_probability, small_components


def test_head_mask_is_above_a_tenth_of_bright_tissue_on_any_stride():
    volume = np.zeros((20, 20, 20), np.float32)
    volume[4:16, 4:16, 4:16] = 100.0
    volume[8, 8, 8] = 5.0  # dark, but darker than a tenth of 100
    for step in (1, 2):
        head = head_mask(volume, step=step)
        assert head.sum() == 12**3 - 1 and not head[8, 8, 8]


def test_shift_probability_keeps_order_and_moves_the_threshold():
    probability = np.array([0.0, 0.2, 0.3, 0.31, 1.0], np.float32)
    shifted = shift_probability(probability, 0.3)
    assert shifted.dtype == np.float32 and np.isclose(shifted[2], 0.5)
    assert (np.diff(shifted) > 0).all() and shifted.min() >= 0 and shifted.max() <= 1


def test_shift_probability_is_a_shift_of_the_logit():
    rng = np.random.default_rng(0)
    probability = np.concatenate([rng.random(10_000), [0.0, 1e-7, 0.5, 1.0]])
    for threshold in (0.05, 0.3, 0.5, 0.9):
        logit = special.logit(np.clip(probability, 1e-6, 1 - 1e-6))
        expected = special.expit(logit - special.logit(threshold))
        shifted = shift_probability(probability.astype(np.float32), threshold)
        assert shifted.dtype == np.float32
        np.testing.assert_allclose(shifted, expected, rtol=1e-6, atol=1e-7)
        # float64 input (the voxel classifier's) gives float32 too, the same
        from_float64 = shift_probability(probability, threshold)
        np.testing.assert_array_equal(from_float64, shifted)


def test_small_components_use_face_connectivity():
    mask = np.zeros((8, 8, 8), bool)
    mask[1, 1, 1] = mask[2, 2, 2] = True  # two 1-voxel lesions (corners touch)
    mask[5:7, 5:7, 5:7] = True  # 8 voxels
    small = small_components(mask, min_voxels=2)
    np.testing.assert_array_equal(np.argwhere(small), [[1, 1, 1], [2, 2, 2]])
    assert not small_components(mask, min_voxels=1).any()
    assert small_components(mask, min_voxels=9).sum() == 10
