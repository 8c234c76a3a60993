"""The small 3D U-Net submission (``submissions/small_cnn``).

Two kinds of checks, both on the small 4 mm synthetic sample:

* the real ``ramp-test --submission small_cnn --quick-test`` command, run as a
  separate process in a temporary kit folder, as a student would run it;
* in process, with a tiny training budget: probabilities of the right shape and
  range, a repeatable CPU run, and a fitted model that survives pickling.
"""

import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import cloudpickle
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rampwf.utils.importing import import_module_from_source  # noqa: E402

from atlas_ramp import cnn  # noqa: E402
from atlas_ramp.rules import shift_probability  # noqa: E402
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
def estimator_module():
    """A fresh copy of the submission's module."""
    return import_module_from_source(str(SUBMISSION / "estimator.py"), "estimator")


def tiny_estimator(module=None, **parameters):
    """The submission's estimator with a tiny training budget."""
    module = module or estimator_module()
    budget = dict(epochs=1, patches_per_epoch=4, batch_size=2, patch_size=32)
    return module.SmallUNet(**{**budget, **parameters})


@pytest.fixture(scope="module")
def small_split(small_sample):
    X, y = load_split(small_sample, "train")
    return X[:6], MaskSequence(y[:6]), X[6:8]


@pytest.fixture(scope="module")
def fitted(small_split):
    X_train, y_train, X_new = small_split
    estimator = tiny_estimator().fit(X_train, y_train)
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
    again = tiny_estimator().fit(X_train, y_train)
    np.testing.assert_allclose(again.predict_proba(X_new), probabilities, atol=1e-6)


def test_fit_accepts_the_masks_as_load_split_gives_them(
    fitted, small_split, small_sample
):
    # get_train_data() gives y as an array of SparseMask; numpy would turn
    # each silently into one True, training on no lesion and calibrating on
    # Dice 0, instead of the workflow's dense MaskSequence items.
    y_sparse = load_split(small_sample, "train")[1][:6]
    X_train, _, X_new = small_split
    estimator = tiny_estimator().fit(X_train, y_sparse)
    reference, reference_proba = fitted
    assert estimator.threshold_ == reference.threshold_
    assert estimator.held_bytes_per_subject_ == reference.held_bytes_per_subject_
    np.testing.assert_allclose(
        estimator.predict_proba(X_new), reference_proba, atol=1e-6
    )


@pytest.mark.slow
def test_fitted_model_survives_cloudpickle(fitted, small_split):
    estimator, probabilities = fitted
    restored = cloudpickle.loads(cloudpickle.dumps(estimator))
    assert "_network" not in restored.__dict__  # weights travel as a state dict
    assert all(tensor.device.type == "cpu" for tensor in restored.state_dict_.values())
    np.testing.assert_allclose(
        restored.predict_proba(small_split[2]), probabilities, atol=1e-6
    )


@pytest.mark.slow
def test_pickled_model_ignores_changed_module_defaults(fitted, small_split, tmp_path):
    """A fitted model carries its knobs: editing the source's defaults changes
    new estimators, not a model trained before."""
    estimator, probabilities = fitted
    source = (SUBMISSION / "estimator.py").read_text()
    # SmallUNet.__init__'s defaults (8 spaces in: its own signature's lines).
    changes = {
        "mirror_channel=False,": "mirror_channel=True,",
        "window_size=None,": "window_size=16,",
        "flip_averaging=True,": "flip_averaging=False,",
        "min_lesion_peak=0.9,": "min_lesion_peak=0.99,",
        "base_channels=8,": "base_channels=4,",
    }
    for old, new in changes.items():
        old, new = f"\n        {old}\n", f"\n        {new}\n"
        assert source.count(old) == 1, old  # the defaults are where we think
        source = source.replace(old, new)
    edited = tmp_path / "estimator.py"
    edited.write_text(source)
    module = import_module_from_source(str(edited), "estimator")
    assert module.SmallUNet().window_size == 16  # the edit took effect
    restored = cloudpickle.loads(cloudpickle.dumps(estimator))
    restored.__class__ = module.SmallUNet  # as if unpickled with the edited file
    np.testing.assert_allclose(
        restored.predict_proba(small_split[2]), probabilities, atol=1e-6
    )


@pytest.mark.slow
def test_overfits_two_subjects(small_sample):
    """On two training subjects, the loss falls and their Dice exceeds 0.5."""
    X, y = load_split(small_sample, "train")
    lesion_voxels = np.array([mask.indices.size for mask in y])
    chosen = np.argsort(lesion_voxels)[-2:]  # the two largest lesion loads
    X_two, y_two = X[chosen], MaskSequence(y[chosen])
    estimator = (
        estimator_module()
        .SmallUNet(
            epochs=4,
            patches_per_epoch=64,
            batch_size=4,
            patch_size=24,
            learning_rate=5e-3,
            lesion_patch_fraction=0.8,
            intensity_augmentation=False,
            misregistration_voxels=0,
            flip_averaging=False,
        )
        .fit(X_two, y_two)
    )
    assert estimator.losses_[-1] < 0.8 * estimator.losses_[0]
    predicted = estimator.predict(X_two)
    for mask, truth in zip(predicted, y_two, strict=True):
        overlap = np.logical_and(mask, truth).sum()
        assert 2 * overlap / (mask.sum() + truth.sum()) > 0.5


@pytest.mark.slow
def test_memory_held_per_subject_is_small(small_sample):
    """Python-side memory of fit grows by well under 1 MB per ATLAS subject.

    The rule at ATLAS scale is 1 MB per training subject on the 2 mm working
    grid of 1.09 million voxels, so under 0.9 byte per working voxel. The
    growth of fit's peak allocations from 4 to 8 subjects, per added subject
    and working voxel, must stay under a third of that. (Holding each
    subject's image, mirror and template as float16 would take 6 bytes.)
    """
    X, y = load_split(small_sample, "train")
    peaks = {}
    for count in (4, 8):
        estimator = tiny_estimator(n_calibration_subjects=1)
        tracemalloc.start()
        estimator.fit(X[:count], MaskSequence(y[:count]))
        peaks[count] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    working_voxels = np.prod(X.shape)  # the 4 mm sample trains at 4 mm
    growth_per_voxel = (peaks[8] - peaks[4]) / 4 / working_voxels
    assert growth_per_voxel < 0.3, growth_per_voxel
    assert estimator.held_bytes_per_subject_ / working_voxels < 0.3


# --- Helpers: template, padding, sliding windows, loss ----------------------------
def test_template_lines_up_with_the_images(small_split):
    """The MNI template on the data grid looks like the (registered) subjects."""
    X_train = small_split[0]
    template = cnn.template_on_grid(X_train.affine, X_train.volume_shape, 1)
    assert template.shape == X_train.volume_shape
    image, head = cnn.prepare(X_train[0], 1, template)
    assert image.shape == (3, *X_train.volume_shape)  # image, mirror, template
    correlation = np.corrcoef(image[0][head], image[2][head])[0, 1]
    # Flipped or shifted, the template would barely correlate with the image.
    assert correlation > 0.6
    shifted = np.roll(image[2], 3, axis=1)
    assert correlation > np.corrcoef(image[0][head], shifted[head])[0, 1] + 0.1


def test_pad_to_at_least_pads_each_axis_at_its_end():
    volume = np.ones((2, 5, 9, 3), np.float32)
    padded = cnn.pad_to_at_least(volume, [8, 8, 8], mode="constant")
    assert padded.shape == (2, 8, 9, 8)
    np.testing.assert_array_equal(padded[:, :5, :, :3], volume)
    assert padded[:, 5:].sum() == 0 and padded[..., 3:].sum() == 0


def random_image_and_head():
    image = np.random.default_rng(0).normal(size=(3, 30, 37, 26)).astype(np.float32)
    head = np.zeros((30, 37, 26), bool)
    head[5:25, 6:30, 4:20] = True
    return image, head


@pytest.mark.parametrize("window_size", [16, 128])
def test_sliding_window_covers_the_head_only(window_size):
    """Several overlapping windows, or the whole head box in one."""
    module = estimator_module()
    torch.manual_seed(0)
    network = module.UNet3D(in_channels=3, base_channels=4).eval()
    image, head = random_image_and_head()

    probability = cnn.predict_probability(
        network, image, head, torch.device("cpu"), window_size=window_size
    ).numpy()

    assert probability.shape == head.shape
    assert (probability[~head] == 0).all()
    assert (probability[head] > 0).all() and (probability[head] < 1).all()


def test_windowed_prediction_equals_one_pass():
    """Where both apply, the blended windows give the one-pass probabilities.

    * The U-Net with a window as large as the head box: one window, so the
      result is the network's on the whole box.
    * A network that looks at one voxel at a time: many overlapping windows,
      whose Gaussian blending must give back exactly the one-pass values.
    """
    module = estimator_module()
    image, head = random_image_and_head()
    box = cnn.head_box(head, margin=4)
    sides = tuple(part.stop - part.start for part in box)
    # Padded at the end to multiples of 8, as the network needs.
    crop = cnn.pad_to_at_least(
        image[(slice(None), *box)], [-(-side // 8) * 8 for side in sides]
    )
    torch.manual_seed(0)
    unet = module.UNet3D(in_channels=3, base_channels=4).eval()
    pointwise = torch.nn.Conv3d(3, 1, 1).eval()
    for network, window in ((unet, 128), (pointwise, 16)):
        with torch.no_grad():
            one_pass = torch.sigmoid(network(torch.from_numpy(crop)[None]))[0, 0]
        one_pass = one_pass[: sides[0], : sides[1], : sides[2]].numpy()
        windowed = cnn.predict_probability(
            network, image, head, torch.device("cpu"), window_size=window, overlap=0.5
        ).numpy()[box]
        inside = head[box]  # outside the head both are 0 by design
        np.testing.assert_allclose(windowed[inside], one_pass[inside], atol=1e-4)


def test_dice_ce_loss_is_soft_dice_plus_cross_entropy():
    """MONAI's DiceCELoss, as fit configures it, on lesion FRACTIONS as targets:
    the soft Dice of the batch as one volume plus binary cross-entropy."""
    from monai.losses import DiceCELoss

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1, 8, 8, 8, generator=generator)
    # Fractions of 2 mm voxels that are lesion: multiples of 1/8, mostly 0.
    target = torch.randint(0, 9, (3, 1, 8, 8, 8), generator=generator) / 8.0
    target[target < 0.5] = 0.0

    probability = torch.sigmoid(logits)
    overlap = (probability * target).sum()
    dice = (2 * overlap + 1.0) / (probability.sum() + target.sum() + 1.0)
    cross_entropy = -(
        target * torch.log(probability) + (1 - target) * torch.log(1 - probability)
    ).mean()
    expected = (1 - dice) + cross_entropy

    loss = DiceCELoss(sigmoid=True, batch=True, smooth_nr=1.0, smooth_dr=1.0)
    torch.testing.assert_close(loss(logits, target), expected, atol=1e-5, rtol=1e-5)


def test_shift_probability_moves_the_threshold_to_one_half():
    probability = np.array([0.0, 0.05, 0.149, 0.15, 0.151, 0.5, 0.9, 1.0], np.float32)
    shifted = shift_probability(probability, 0.15)
    assert np.isclose(shifted[3], 0.5)
    assert (shifted[:3] < 0.5).all() and (shifted[4:] > 0.5).all()
    assert (np.diff(shifted) > 0).all()  # the order of the voxels is kept
    assert shifted.min() >= 0 and shifted.max() <= 1


def test_weaken_unsure_lesions_halves_faint_blobs_only():
    probability = np.zeros((10, 10, 10), np.float32)
    probability[1:3, 1:3, 1:3] = 0.6  # faint: never above 0.8
    probability[6:9, 6:9, 6:9] = 0.7
    probability[7, 7, 7] = 0.95  # one sure voxel makes the blob sure
    result = cnn.weaken_unsure_lesions(probability.copy(), min_peak=0.8)
    np.testing.assert_allclose(result[1:3, 1:3, 1:3], 0.3)
    np.testing.assert_array_equal(result[6:9, 6:9, 6:9], probability[6:9, 6:9, 6:9])
    unchanged = cnn.weaken_unsure_lesions(probability.copy(), min_peak=0.5)
    np.testing.assert_array_equal(unchanged, probability)


def test_fade_lesions_moves_lesion_voxels_towards_their_ring_only():
    rng = np.random.default_rng(0)
    image = rng.normal(1.0, 0.1, (1, 20, 20, 20)).astype(np.float32)  # tissue
    target = np.zeros((20, 20, 20), np.float32)
    target[8:12, 8:12, 8:12] = 1.0
    image[0][target > 0] = -2.0  # a dark lesion
    for seed in range(10):
        faded = cnn.fade_lesions(image, target, 0.8, np.random.default_rng(seed))
        lesion = faded[0][target > 0]
        # Fainter, at most 80% of the way to the tissue level (about 1).
        assert (lesion >= -2.0).all() and (lesion <= -2.0 + 0.8 * 3.1).all()
        assert lesion.mean() > -2.0
        far = np.ones_like(target, bool)
        far[3:17, 3:17, 3:17] = False  # beyond any blurred border
        np.testing.assert_array_equal(faded[0][far], image[0][far])
    np.testing.assert_array_equal(image[0][target > 0], -2.0)  # input untouched
    no_lesion = np.zeros_like(target)
    same = cnn.fade_lesions(image, no_lesion, 0.8, np.random.default_rng(3))
    np.testing.assert_array_equal(same, image)


def test_available_cpus_is_a_positive_count():
    assert estimator_module().available_cpus() >= 1


def test_budgets_and_quick_mode(monkeypatch):
    module = estimator_module()
    monkeypatch.setenv("RAMP_TEST_MODE", "1")
    quick = module.get_estimator()
    monkeypatch.setenv("RAMP_TEST_MODE", "0")
    full = module.get_estimator()
    assert quick.epochs * quick.patches_per_epoch < full.epochs * full.patches_per_epoch
    gpu = module.get_estimator(budget="gpu")
    assert gpu.base_channels > full.base_channels and gpu.epochs > full.epochs
    assert gpu.device is None  # CUDA when present; a GPU-trained model still loads
    with pytest.raises(ValueError, match="budget must be one of"):
        module.get_estimator(budget="GPU")


def test_threshold_is_tuned_on_training_subjects(fitted):
    estimator, _ = fitted
    assert estimator.threshold_ in cnn.THRESHOLDS


def test_predicting_on_another_grid_says_so(fitted):
    estimator, _ = fitted
    other_grid = SimpleNamespace(volume_shape=(10, 10, 10))
    with pytest.raises(ValueError, match="trained on volumes of shape"):
        estimator.predict_proba(other_grid)


# --- Bias correction, mirror coordinates, lesion-by-lesion patches ------------------
def smooth_brain(shape=(40, 48, 36)):
    """A symmetric 'brain': white matter (1.0), a grey rim (0.6), a dark lesion."""
    grid = np.indices(shape).astype(np.float32)
    middle = (np.asarray(shape, np.float32)[:, None, None, None] - 1) / 2
    radius = np.sqrt(
        (((grid - middle) / (0.42 * np.asarray(shape)[:, None, None, None])) ** 2).sum(
            0
        )
    )
    brain = np.where(radius < 1, np.where(radius < 0.8, 1.0, 0.6), 0.0)
    return brain.astype(np.float32), grid, middle


def test_white_matter_bias_removes_a_smooth_field():
    """A 30% smooth bias on the white matter shrinks to a few percent."""
    brain, grid, middle = smooth_brain()
    lesion = (
        np.sqrt(
            ((grid - middle - np.array([6, 4, 0])[:, None, None, None]) ** 2).sum(0)
        )
        < 4
    )
    brain[lesion] = 0.3
    x, y, z = (grid - middle) / middle
    bias = np.exp(0.3 * x + 0.2 * np.sin(2 * y) - 0.15 * z * x)
    biased = brain * bias
    head = biased > 0
    log_bias = cnn.white_matter_bias(biased, head, cell=2, sigma_cells=1.5)
    corrected = biased / np.exp(cnn.bias_on(log_bias, np.indices(brain.shape), cell=2))
    white = (brain == 1.0) & ~lesion
    spread = lambda image: np.std(np.log(image[white]))  # noqa: E731
    assert spread(biased) > 0.12
    assert spread(corrected) < 0.35 * spread(biased)
    # The lesion stays dark against the corrected white matter around it.
    assert np.median(corrected[lesion]) < 0.5 * np.median(corrected[white])


@pytest.mark.parametrize("factor", [1, 2])
def test_mirror_channel_is_the_corrected_image_mirrored(factor):
    """With the bias of the mirrored side, the mirror channel of a grid with
    even sides is exactly the (corrected) image channel flipped left-right."""
    brain, grid, middle = smooth_brain((40, 48, 36))
    volume = brain * np.exp(0.4 * (grid[0] - middle[0]) / middle[0]) + 0.01
    image, _ = cnn.prepare(volume, factor)
    np.testing.assert_allclose(image[1], image[0][::-1], atol=1e-4)
    uncorrected, _ = cnn.prepare(volume, factor, correct_bias=False)
    # Without correction the image is brighter on one side than its mirror.
    assert np.abs(uncorrected[1] - uncorrected[0][::-1]).max() < 1e-4
    assert (
        np.abs(uncorrected[0] - uncorrected[1]).mean()
        > np.abs(image[0] - image[1]).mean()
    )


def test_training_patches_equal_the_whole_volume_preparation(small_split):
    """A patch cut from the mapped volume is the same crop of ``prepare``."""
    X_train, y_train, _ = small_split
    subjects = cnn.TrainingSubjects(X_train[:2], y_train[:2], factor=1)
    corner, size = (5, 9, 4), 16
    window = (slice(0, 2), *(slice(c, c + size) for c in corner))
    patch = subjects.image_patch(1, corner, size, mirror_channel=True)
    z_scored, _ = cnn.prepare(X_train[1], 1)
    np.testing.assert_allclose(patch, z_scored[window], atol=1e-5)
    # Standardized with the subject's landmarks, as fit does after augmenting.
    standard = np.linspace(-3, 2, len(cnn.LANDMARK_LEVELS))
    standardized, _ = cnn.prepare(X_train[1], 1, standard_landmarks=standard)
    np.testing.assert_allclose(
        cnn.standardize_histogram(patch, subjects.landmarks[1], standard),
        standardized[window],
        atol=1e-4,
    )


def test_pooled_copies_hold_the_mirror_channel_only_when_asked(small_split):
    """Volumes that are not memory-mapped are kept pooled: one channel, or two
    with the mirror; the image channel is the same either way."""
    X_train, y_train, _ = small_split
    in_memory = [np.array(X_train[i], dtype=np.float32) for i in range(2)]
    both = cnn.TrainingSubjects(in_memory, y_train[:2], factor=1)
    image_only = cnn.TrainingSubjects(
        in_memory, y_train[:2], factor=1, mirror_channel=False
    )
    assert [len(image) for image in both.stored_images] == [2, 2]
    assert [len(image) for image in image_only.stored_images] == [1, 1]
    assert image_only.held_bytes() < 0.6 * both.held_bytes()
    corner = (5, 9, 4)
    np.testing.assert_array_equal(
        image_only.image_patch(1, corner, 16, mirror_channel=False),
        both.image_patch(1, corner, 16, mirror_channel=False),
    )


def test_histogram_standardization_undoes_another_contrast_curve():
    """One head seen by two scanners (another gamma, scale and offset) looks
    alike after standardization onto the same landmarks; z-scores do not."""
    brain, grid, middle = smooth_brain()
    rng = np.random.default_rng(0)
    head = brain > 0
    tissue = np.where(head, brain * (1 + 0.08 * rng.normal(size=brain.shape)), 0)
    tissue[head] = np.maximum(tissue[head], 0.05)
    other_scanner = np.where(head, 300 * tissue**1.6 + 80, 0.0)
    z_scored = [
        (image - image[head].mean()) / image[head].std()
        for image in (tissue, other_scanner)
    ]
    standard = cnn.head_landmarks(z_scored[0], head)
    standardized = [
        cnn.standardize_histogram(image, cnn.head_landmarks(image, head), standard)
        for image in z_scored
    ]
    before = np.abs(z_scored[0] - z_scored[1])[head].mean()
    after = np.abs(standardized[0] - standardized[1])[head].mean()
    assert after < 0.25 * before, (before, after)
    # The landmarks themselves land on the standard ones.
    np.testing.assert_allclose(
        cnn.head_landmarks(standardized[1], head), standard, atol=0.02
    )


def test_pooled_lesions_equal_dense_pooling_lesion_by_lesion():
    from scipy import ndimage

    rng = np.random.default_rng(0)
    mask = ndimage.binary_opening(rng.random((23, 18, 15)) < 0.3)
    for factor in (1, 2, 3):
        voxels, fractions, starts = cnn.pooled_lesions(
            np.flatnonzero(mask), mask.shape, factor
        )
        dense = cnn.downsample(mask.astype(np.float32), factor)
        pooled = np.zeros(dense.size)
        pooled[voxels] = fractions / 255
        np.testing.assert_allclose(pooled, dense.ravel(), atol=0.5 / 255 + 1e-6)
        labels, count = ndimage.label(dense > 0)
        assert len(starts) == count + 1 and starts[-1] == voxels.size
        for k in range(count):  # each run of voxels is one whole lesion
            run = labels.ravel()[voxels[starts[k] : starts[k + 1]]]
            assert (run == run[0]).all() and run.size == (labels == run[0]).sum()


def test_patch_centres_find_small_lesions_as_often_as_large_ones():
    mask = np.zeros((40, 40, 40), bool)
    mask[2:30, 2:30, 2:30] = True  # 22 mL at 1 mm
    mask[36, 36, 36] = True  # one voxel
    subjects = SimpleNamespace(shape=mask.shape)
    subjects.lesion_voxels, _, subjects.lesion_starts = (
        [array] for array in cnn.pooled_lesions(np.flatnonzero(mask), mask.shape, 1)
    )
    rng = np.random.default_rng(0)
    centres = [
        cnn.TrainingSubjects.random_centre(subjects, 0, rng, 1.0) for _ in range(400)
    ]
    small = sum(tuple(int(c) for c in centre) == (36, 36, 36) for centre in centres)
    assert 150 < small < 250  # about half, not 1 in 22,000


def test_bias_on_grid_equals_bias_on_every_voxel():
    log_bias = np.random.default_rng(0).normal(size=(5, 7, 4)).astype(np.float32)
    shape = (19, 26, 16)  # not multiples of the cell: the far cells are cut
    np.testing.assert_allclose(
        cnn.bias_on_grid(log_bias, shape, cell=4),
        cnn.bias_on(log_bias, np.indices(shape), cell=4),
        atol=1e-5,
    )
