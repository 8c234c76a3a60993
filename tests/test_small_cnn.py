"""The small 3D U-Net submission (``submissions/small_cnn``).

Two kinds of checks, both on the small 4 mm synthetic sample:

* the real ``ramp-test --submission small_cnn --quick-test`` command, run as a
  separate process in a temporary kit folder, as a student would run it;
* in process, with a tiny training budget: probabilities of the right shape and
  range, a repeatable CPU run, and a fitted model that survives pickling.
"""

from pathlib import Path
from types import SimpleNamespace

import cloudpickle
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rampwf.utils.importing import import_module_from_source  # noqa: E402

from atlas_ramp.volumes import MaskSequence, load_split  # noqa: E402

from .helpers import bagged_test_dice, quick_test  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SUBMISSION = REPO / "submissions" / "small_cnn"


@pytest.mark.slow
def test_ramp_test_quick_test_runs(small_sample, tmp_path):
    output = quick_test(tmp_path / "kit", small_sample, "small_cnn")
    assert "small_cnn: epoch  1/" in output  # the per-epoch progress line
    assert 0.0 <= bagged_test_dice(output) <= 1.0


# --- In process, tiny budget ----------------------------------------------------
def tiny_estimator_module():
    """A fresh copy of the submission's module, with a tiny training budget."""
    module = import_module_from_source(str(SUBMISSION / "estimator.py"), "estimator")
    module.EPOCHS = 1
    module.PATCHES_PER_EPOCH = 4
    module.BATCH_SIZE = 2
    module.PATCH_SIZE = 32
    return module


@pytest.fixture(scope="module")
def small_split(small_sample):
    X, y = load_split(small_sample, "train")
    return X[:6], MaskSequence(y[:6]), X[6:8]


@pytest.fixture(scope="module")
def fitted(small_split):
    X_train, y_train, X_new = small_split
    estimator = tiny_estimator_module().get_estimator().fit(X_train, y_train)
    return estimator, estimator.predict_proba(X_new)


@pytest.mark.slow
def test_predict_proba_shape_range_and_mask(fitted, small_split):
    estimator, probabilities = fitted
    X_new = small_split[2]
    assert probabilities.shape == X_new.shape == (len(X_new), *X_new.volume_shape)
    assert np.issubdtype(probabilities.dtype, np.floating)
    assert np.isfinite(probabilities).all()
    assert probabilities.min() >= 0.0 and probabilities.max() <= 1.0
    masks = estimator.predict(X_new)
    assert masks.dtype == bool
    np.testing.assert_array_equal(masks, probabilities >= 0.5)


@pytest.mark.slow
def test_cpu_run_is_repeatable(fitted, small_split):
    X_train, y_train, X_new = small_split
    _, probabilities = fitted
    again = tiny_estimator_module().get_estimator().fit(X_train, y_train)
    np.testing.assert_allclose(again.predict_proba(X_new), probabilities, atol=1e-6)


@pytest.mark.slow
def test_fitted_model_survives_cloudpickle(fitted, small_split):
    estimator, probabilities = fitted
    restored = cloudpickle.loads(cloudpickle.dumps(estimator))
    assert "_network" not in restored.__dict__  # weights travel as a state dict
    assert all(tensor.device.type == "cpu" for tensor in restored.state_dict_.values())
    np.testing.assert_allclose(
        restored.predict_proba(small_split[2]), probabilities, atol=1e-6
    )


# --- Helpers: template, padding, sliding windows ----------------------------------
def test_template_lines_up_with_the_images(small_split):
    """The MNI template on the data grid looks like the (registered) subjects."""
    module = tiny_estimator_module()
    X_train = small_split[0]
    template = module.template_on_grid(X_train.affine, X_train.volume_shape, 1)
    assert template.shape == X_train.volume_shape
    image, head = module.prepare(X_train[0], 1, template)
    assert image.shape == (3, *X_train.volume_shape)  # image, mirror, template
    correlation = np.corrcoef(image[0][head], image[2][head])[0, 1]
    # Flipped or shifted, the template would barely correlate with the image.
    assert correlation > 0.6
    shifted = np.roll(image[2], 3, axis=1)
    assert correlation > np.corrcoef(image[0][head], shifted[head])[0, 1] + 0.1


def test_pad_to_at_least_pads_each_axis_at_its_end():
    module = tiny_estimator_module()
    volume = np.ones((2, 5, 9, 3), np.float32)
    padded = module.pad_to_at_least(volume, [8, 8, 8], mode="constant")
    assert padded.shape == (2, 8, 9, 8)
    np.testing.assert_array_equal(padded[:, :5, :, :3], volume)
    assert padded[:, 5:].sum() == 0 and padded[..., 3:].sum() == 0


@pytest.mark.parametrize("window_size", [16, 128])
def test_sliding_window_covers_the_head_only(window_size):
    """Several overlapping windows, or the whole head box in one."""
    module = tiny_estimator_module()
    module.WINDOW_SIZE = window_size
    torch.manual_seed(0)
    network = module.UNet3D(in_channels=3, base_channels=4).eval()
    image = np.random.default_rng(0).normal(size=(3, 30, 37, 26)).astype(np.float32)
    head = np.zeros((30, 37, 26), bool)
    head[5:25, 6:30, 4:20] = True

    probability = module.sliding_window_probability(
        network, image, head, torch.device("cpu")
    ).numpy()

    assert probability.shape == head.shape
    assert (probability[~head] == 0).all()
    assert (probability[head] > 0).all() and (probability[head] < 1).all()


def test_shift_probability_moves_the_threshold_to_one_half():
    module = tiny_estimator_module()
    probability = torch.tensor([0.0, 0.05, 0.149, 0.15, 0.151, 0.5, 0.9, 1.0])
    shifted = module.shift_probability(probability, 0.15)
    assert torch.isclose(shifted[3], torch.tensor(0.5))
    assert (shifted[:3] < 0.5).all() and (shifted[4:] > 0.5).all()
    assert (torch.diff(shifted) > 0).all()  # the order of the voxels is kept
    assert shifted.min() >= 0 and shifted.max() <= 1


def test_threshold_is_tuned_on_training_subjects(fitted):
    estimator, _ = fitted
    assert estimator.threshold_ in tiny_estimator_module().THRESHOLDS


def test_predicting_on_another_grid_says_so(fitted):
    estimator, _ = fitted
    other_grid = SimpleNamespace(volume_shape=(10, 10, 10))
    with pytest.raises(ValueError, match="trained on volumes of shape"):
        estimator.predict_proba(other_grid)
