"""The small CNN's plumbing (``atlas_ramp.cnn``): the patch pipeline with worker
processes, misregistration without wrap-around, patch-wise bias fields, and a
kit that imports without torch everywhere but ``atlas_ramp.cnn``."""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


# --- Without torch -----------------------------------------------------------------
HIDE_TORCH = """
import importlib, importlib.abc, pkgutil, sys

class HideTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "monai"):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)")
        return None

sys.meta_path.insert(0, HideTorch())
"""


def test_the_kit_imports_without_torch_but_for_atlas_ramp_cnn():
    """The server's environment has no torch: only ``atlas_ramp.cnn`` may need it."""
    script = HIDE_TORCH + textwrap.dedent(
        """
        import atlas_ramp
        from rampwf.utils.importing import import_module_from_source

        needs_torch = []
        for module in pkgutil.walk_packages(atlas_ramp.__path__, "atlas_ramp."):
            if module.name.startswith("atlas_ramp.cnn"):
                continue
            try:
                importlib.import_module(module.name)
            except ModuleNotFoundError as error:
                if "hidden by the test" in str(error):
                    needs_torch.append(module.name)
        for name in ("starting_kit", "voxel_classifier"):
            import_module_from_source(f"submissions/{name}/estimator.py", name)
        import_module_from_source("problem.py", "problem")
        print("NEEDS TORCH:", needs_torch)
        try:
            import atlas_ramp.cnn
        except ModuleNotFoundError:
            print("CNN NEEDS TORCH")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "NEEDS TORCH: []" in result.stdout, result.stdout
    assert "CNN NEEDS TORCH" in result.stdout  # the blocker does block


# --- Misregistration without wrap-around ---------------------------------------------
torch = pytest.importorskip("torch")

from atlas_ramp import cnn  # noqa: E402


@pytest.mark.parametrize("offsets", [(2, -2, 1), (-1, 0, 2), (0, 0, 0), (2, 2, 2)])
def test_shift_never_wraps_around(offsets):
    """Each voxel comes from the clipped source position: what slides in
    repeats the near edge, never the opposite face (as ``np.roll`` did)."""
    array = np.random.default_rng(0).normal(size=(2, 6, 7, 8))
    shifted = cnn.shift_without_wrap(array, offsets)
    assert shifted.shape == array.shape
    grid = np.indices(array.shape[1:])
    source = tuple(
        np.clip(grid[axis] - offsets[axis], 0, array.shape[axis + 1] - 1)
        for axis in range(3)
    )
    np.testing.assert_array_equal(shifted, array[(slice(None), *source)])
    for axis, offset in enumerate(offsets):
        if offset > 0:  # the slices that slid in repeat the first one read
            near = np.take(shifted, range(offset), axis=axis + 1)
            first = np.take(shifted, [offset], axis=axis + 1)
            np.testing.assert_array_equal(near, np.broadcast_to(first, near.shape))


def test_template_window_is_cut_at_the_shifted_corner():
    """The template channel's misregistration reads real template voxels
    beside the patch (edge-repeated only beyond the grid)."""
    template = np.arange(20 * 22 * 24, dtype=np.float32).reshape(20, 22, 24)
    window = cnn.cut_window(template, (3, 5, 7), (8, 8, 8))
    np.testing.assert_array_equal(window, template[3:11, 5:13, 7:15])
    outside = cnn.cut_window(template, (-2, 18, 0), (8, 8, 8))
    assert outside.shape == (8, 8, 8)
    np.testing.assert_array_equal(outside[2:, :4], template[:6, 18:22, :8])
    np.testing.assert_array_equal(outside[0], outside[2])  # edge, not wrapped
    np.testing.assert_array_equal(outside[:, 4:], outside[:, 3:4].repeat(4, 1))


def _small_cnn_module():
    from rampwf.utils.importing import import_module_from_source

    return import_module_from_source(
        str(REPO / "submissions" / "small_cnn" / "estimator.py"), "estimator"
    )


def test_training_patches_never_wrap_the_template(small_sample, monkeypatch):
    """In training patches, the misregistered template channel is a block of
    neighbouring template voxels: along each axis the source index steps by 1,
    or by 0 where the grid's edge repeats; ``np.roll`` jumped across the patch."""
    from atlas_ramp.volumes import load_split

    module = _small_cnn_module()
    # The cutout's zeros would read as voxel 0: this test is about the shift.
    cutout = dict(module.AUGMENTATION["template_cutout"], p=0.0)
    monkeypatch.setitem(module.AUGMENTATION, "template_cutout", cutout)
    X, y = load_split(small_sample, "train")
    estimator = module.SmallUNet(patch_size=16, misregistration_voxels=2)
    subjects = estimator.read_training_subjects(X[:2], y[:2])
    shape = estimator.template_.shape
    # Each template voxel holds its own flat index, so the channel says where
    # each of its voxels was read.
    estimator.template_ = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    for seed in range(30):
        patch, _ = estimator.make_patch(subjects, np.random.default_rng(seed))
        source = np.stack(np.unravel_index(patch[-1].astype(np.int64), shape))
        if (np.diff(source[0], axis=0) < 0).any():  # flipped left-right
            source = source[:, ::-1]
        for axis in range(3):
            steps = np.diff(source[axis], axis=axis)
            assert set(np.unique(steps)) <= {0, 1}, (seed, axis, np.unique(steps))


def test_blank_random_box_blanks_one_box_within_the_bounds():
    volume = np.arange(1, 16**3 + 1, dtype=np.float32).reshape(16, 16, 16)
    sides_seen = set()
    for seed in range(50):
        blanked = cnn.blank_random_box(volume, 0.25, 0.75, np.random.default_rng(seed))
        assert volume.min() == 1  # the input is left alone
        zeros = np.argwhere(blanked == 0)
        low, high = zeros.min(axis=0), zeros.max(axis=0) + 1
        sides = tuple(high - low)
        assert all(4 <= side <= 12 for side in sides), sides
        assert len(zeros) == np.prod(sides)  # one solid box
        outside = blanked != 0
        np.testing.assert_array_equal(blanked[outside], volume[outside])
        sides_seen.add(sides)
    assert len(sides_seen) > 10  # the sides are drawn, not fixed
    with pytest.raises(ValueError, match="template_cutout"):
        cnn.blank_random_box(volume, 0.25, 1.5, np.random.default_rng(0))


def test_template_cutout_touches_the_template_channel_only(small_sample, monkeypatch):
    """With the cutout always on, a patch is the patch without it but for one
    blanked box of its template channel (same draws up to there)."""
    from atlas_ramp.volumes import load_split

    module = _small_cnn_module()
    monkeypatch.setitem(module.AUGMENTATION, "flip", dict(p=0.0))
    X, y = load_split(small_sample, "train")
    estimator = module.SmallUNet(patch_size=16)
    subjects = estimator.read_training_subjects(X[:2], y[:2])
    estimator.template_ = estimator.template_ + 100.0  # no zero of its own
    patches = {}
    for p in (0.0, 1.0):
        cutout = dict(module.AUGMENTATION["template_cutout"], p=p)
        monkeypatch.setitem(module.AUGMENTATION, "template_cutout", cutout)
        patches[p] = [
            estimator.make_patch(subjects, np.random.default_rng(seed))
            for seed in range(10)
        ]
    for (plain, plain_target), (cut, cut_target) in zip(*patches.values(), strict=True):
        np.testing.assert_array_equal(cut[0], plain[0])  # the image
        np.testing.assert_array_equal(cut_target, plain_target)
        blanked = cut[-1] == 0
        assert 4**3 <= blanked.sum() <= 12**3
        assert not (plain[-1] == 0).any()
        np.testing.assert_array_equal(cut[-1][~blanked], plain[-1][~blanked])


def test_bias_patch_equals_bias_on_its_voxels():
    log_bias = np.random.default_rng(0).normal(size=(5, 7, 4)).astype(np.float32)
    for corner, sides in [
        ((0, 0, 0), (4, 6, 3)),
        ((3, 5, 1), (16, 16, 12)),
        ((15, 20, 10), (5, 8, 6)),
        ((2, 9, 13), (4, 4, 3)),
    ]:
        grid = np.indices(sides) + np.reshape(corner, (3, 1, 1, 1))
        np.testing.assert_allclose(
            cnn.bias_patch(log_bias, corner, sides, cell=4),
            cnn.bias_on(log_bias, grid, cell=4),
            atol=1e-6,
        )


@pytest.mark.parametrize("factor", [2, 3])
def test_pooling_a_window_by_strided_sums_equals_avg_pool(tmp_path, factor):
    """Windows whose sides are multiples of the factor (a training patch's,
    read from a memory-mapped cache) take the strided-sum path; others, the
    whole volume's odd edges included, take avg_pool3d: the same averages."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(factor)
    volume = rng.uniform(0, 900, size=(37, 41, 30)).astype(np.float32)
    np.save(tmp_path / "volume.npy", volume)
    mapped = np.load(tmp_path / "volume.npy", mmap_mode="r")
    for window in [
        np.s_[3 : 3 + 8 * factor, 0 : 6 * factor, 6 : 6 + 4 * factor],  # strided
        np.s_[:, :, :],  # odd sides: smaller blocks at the far edges
        np.s_[1:9, 2:12, 0:29],
    ]:
        expected = F.avg_pool3d(
            torch.from_numpy(volume[window].copy())[None, None], factor, ceil_mode=True
        )[0, 0].numpy()
        pooled = cnn.downsample(mapped[window], factor)
        assert pooled.dtype == np.float32 and pooled.flags.c_contiguous
        np.testing.assert_allclose(pooled, expected, rtol=1e-6)
    assert not np.shares_memory(cnn.downsample(mapped[:6, :6, :6], factor), mapped)


# --- The patch pipeline -------------------------------------------------------
def estimator_module():
    from rampwf.utils.importing import import_module_from_source

    return import_module_from_source(
        str(REPO / "submissions" / "small_cnn" / "estimator.py"), "estimator"
    )


@pytest.fixture(scope="module")
def four_subjects(small_sample):
    from atlas_ramp.volumes import MaskSequence, load_split

    X, y = load_split(small_sample, "train")
    return X[:4], MaskSequence(y[:4])


def test_a_fit_with_two_workers_is_repeatable(four_subjects):
    """Two fits with 2 worker processes preparing patches give the same weights."""
    X, y = four_subjects
    module = estimator_module()
    budget = dict(epochs=1, patches_per_epoch=8, batch_size=4, patch_size=16)
    prediction = dict(n_calibration_subjects=1, flip_averaging=False, window_size=128)
    fits = [
        module.SmallUNet(**budget, **prediction, data_workers=2).fit(X, y)
        for _ in range(2)
    ]
    assert fits[0].data_workers_ == 2
    assert fits[1].losses_ == fits[0].losses_
    for name, tensor in fits[0].state_dict_.items():
        torch.testing.assert_close(fits[1].state_dict_[name], tensor, rtol=0, atol=0)


def test_patches_are_the_same_whatever_the_workers(four_subjects):
    """Patch k is drawn with seed (seed, k): the batches do not depend on the
    number of worker processes, and each index gives its own patch."""
    X, y = four_subjects
    estimator = estimator_module().SmallUNet(patch_size=16)
    subjects = estimator.read_training_subjects(X, y)
    dataset = cnn.PatchDataset(subjects, estimator.make_patch, 6, seed=3)
    first, again = dataset[4], dataset[4]
    torch.testing.assert_close(first[0], again[0], rtol=0, atol=0)
    assert first[0].shape == (2, 16, 16, 16) and first[1].shape == (1, 16, 16, 16)
    assert not torch.equal(dataset[5][0], first[0])
    in_process, in_workers = (
        list(cnn.patch_loader(dataset, batch_size=3, workers=workers, seed=3))
        for workers in (0, 2)
    )
    assert [batch[0].shape[0] for batch in in_process] == [3, 3]
    torch.testing.assert_close(in_process[1][0][1], first[0], rtol=0, atol=0)
    for ours, theirs in zip(in_process, in_workers, strict=True):
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
