"""Property tests: odd input files, and cross-validation folds, for any draw.

1. Perturb one subject of a valid split (its header or its data: affine, shape,
   dtype, dimensions, scaling, truncation, NaN). Loading the split and reading
   every volume either works, and the other subjects' volumes, masks and scores
   are exactly as before; or it raises a DataError that names the perturbed file.
   Never another exception, never a silent change elsewhere.
2. For random cohort sizes (1 included) and sessions per subject, the kit's two
   cross-validations never put a subject (nor, for LeaveCohortsOut, a cohort) in
   both train and valid, and never yield an empty fold.
"""

import gzip
import tempfile
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atlas_ramp.bids import DataError, anat_dir, mask_name, t1w_name
from atlas_ramp.masks import SparseMask
from atlas_ramp.scores import dice, volume_difference_ml
from atlas_ramp.splits import CohortStratifiedShuffleSplit, LeaveCohortsOut
from atlas_ramp.volumes import ImageSequence, load_masks

from .helpers import make_split

IDS = ("sub-r001s001", "sub-r001s002", "sub-r002s001")
#: A fixed "prediction" per subject, to score the untouched subjects with.
PREDICTION = np.zeros((9, 10, 8), bool)
PREDICTION[2:5, 2:5, 2:4] = True


def load_everything(root: Path):
    """What ramp-test reads: headers, masks, then every volume."""
    X = ImageSequence.from_folder(root, cache_dir=root.parent / ".cache")
    y = load_masks(X)
    return X, y, [X[i] for i in range(len(X))]


def scores_of(X, y, position):
    predicted = SparseMask.from_dense(PREDICTION, X.voxel_volume_ml)
    return dice(y[position], predicted), volume_difference_ml(y[position], predicted)


# ------------------------------------------------------------ perturbations


def _save_like(path, data, affine, header=None):
    image = nib.Nifti1Image(data, affine, header)
    nib.save(image, path)


def perturb(path: Path, kind: str, draw) -> None:
    image = nib.load(str(path))
    data = np.asarray(image.dataobj)
    affine = image.affine.copy()
    if kind == "translate":
        axis = draw(st.integers(0, 2))
        affine[axis, 3] += draw(st.sampled_from([1e-6, 1e-4, 0.5, 4.0, 20.0, -33.0]))
        _save_like(path, data, affine)
    elif kind == "flip":
        axis = draw(st.integers(0, 2))
        flip = np.eye(4)
        flip[axis, axis], flip[axis, 3] = -1, data.shape[axis] - 1
        _save_like(path, np.flip(data, axis), affine @ flip)
    elif kind == "zoom":
        affine[:3, :3] *= draw(st.sampled_from([1.0001, 0.5, 2.0]))
        _save_like(path, data, affine)
    elif kind == "permute":
        order = draw(st.permutations([0, 1, 2]))
        permuted = np.eye(4)
        permuted[:3, :3] = np.eye(3)[:, order]
        _save_like(path, np.transpose(data, order), affine @ permuted)
    elif kind == "shape":
        axis, cut = draw(st.integers(0, 2)), draw(st.integers(1, 3))
        _save_like(path, np.take(data, range(data.shape[axis] - cut), axis), affine)
    elif kind == "dtype":
        dtype = draw(st.sampled_from(["int16", "uint8", "float64", "int32", "c8"]))
        factor = draw(st.sampled_from([1, 1000]))
        _save_like(path, (data.astype(np.float64) * factor).astype(dtype), affine)
    elif kind == "dimensions":
        extra = draw(st.sampled_from([(1,), (2,), None]))
        changed = data[..., 0] if extra is None else np.stack([data] * extra[0], -1)
        _save_like(path, changed, affine)
    elif kind == "scaling":
        new = nib.Nifti1Image(data.astype(np.float32), affine)
        new.header.set_data_dtype(np.float32)
        new.header.set_slope_inter(1.0, 0.0)
        # Header fields written as drawn (set_slope_inter refuses some of them).
        new.header["scl_slope"] = draw(
            st.sampled_from([0, 2, -1, 1e38, np.nan, np.inf])
        )
        new.header["scl_inter"] = draw(st.sampled_from([0.0, 5.0, np.nan]))
        nib.save(new, path)
    elif kind == "truncate":
        raw = path.read_bytes()
        if draw(st.booleans()):  # the compressed stream cut (header maybe too)
            path.write_bytes(raw[: draw(st.integers(1, len(raw) - 1))])
        else:  # a valid gzip of a cut file: header intact, data short
            plain = gzip.decompress(raw)
            keep = draw(st.integers(352, len(plain) - 1))
            path.write_bytes(gzip.compress(plain[:keep]))
    elif kind == "nan":
        values = data.astype(np.float32)
        index = tuple(draw(st.integers(0, n - 1)) for n in values.shape)
        values[index] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        _save_like(path, values, affine)
    else:
        raise AssertionError(kind)


KINDS = [
    "translate",
    "flip",
    "zoom",
    "permute",
    "shape",
    "dtype",
    "dimensions",
    "scaling",
    "truncate",
    "nan",
]


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(data=st.data())
def test_a_perturbed_subject_loads_or_is_named_and_the_others_never_change(data):
    with tempfile.TemporaryDirectory() as folder:
        root = make_split(Path(folder) / "train", IDS)
        X, y_before, before = load_everything(root)
        reference_scores = [scores_of(X, y_before, i) for i in range(len(X))]
        reference_ml = X.voxel_volume_ml

        position = data.draw(st.integers(0, len(IDS) - 1), label="subject")
        subject_id = IDS[position]
        which = data.draw(st.sampled_from(["T1w", "mask"]), label="file")
        name = t1w_name(subject_id) if which == "T1w" else mask_name(subject_id)
        path = anat_dir(root, subject_id) / name
        kind = data.draw(st.sampled_from(KINDS), label="perturbation")
        perturb(path, kind, data.draw)

        try:
            X, y, after = load_everything(root)
        except DataError as error:
            assert str(path) in str(error), str(error)
            return
        # Loaded: the others are exactly as before, and so are their scores.
        assert X.subject_ids.tolist() == list(IDS)
        assert X.voxel_volume_ml == pytest.approx(reference_ml, rel=1e-3)
        for other in range(len(IDS)):
            if other == position:
                assert after[other].shape == X.volume_shape
                assert np.isfinite(after[other]).all()
                continue
            assert np.array_equal(after[other], before[other])
            assert y[other] == y_before[other]
            got = scores_of(X, y, other)
            assert got[0] == reference_scores[other][0]
            assert got[1] == pytest.approx(reference_scores[other][1], rel=1e-3)


@pytest.mark.parametrize(
    ("kind", "draws", "outcome"),
    [
        ("translate", [0, 1e-6], "loaded"),  # within the grid tolerance
        ("translate", [0, 20.0], "DataError"),
        ("dtype", ["int16", 1000], "loaded"),
        ("nan", [1, 2, 3, np.nan], "DataError"),
    ],
)
def test_the_perturbations_reach_both_outcomes(tmp_path, kind, draws, outcome):
    """The property above is not vacuous: some perturbations load, some fail."""
    root = make_split(tmp_path / "train", IDS)
    values = iter(draws)
    perturb(anat_dir(root, IDS[1]) / t1w_name(IDS[1]), kind, lambda _: next(values))
    try:
        load_everything(root)
        assert outcome == "loaded"
    except DataError:
        assert outcome == "DataError"


# ------------------------------------------------------------ CV properties


cohort_sizes = st.lists(st.integers(1, 6), min_size=1, max_size=8)


def entries(sizes, sessions):
    """Entries (subject, cohort) for the cohort sizes, sessions per subject."""
    subjects, cohorts = [], []
    for cohort, size in enumerate(sizes):
        for index in range(size):
            for _ in range(sessions[(cohort + index) % len(sessions)]):
                subjects.append(f"sub-r{cohort + 1:03d}s{index + 1:03d}")
                cohorts.append(f"R{cohort + 1:03d}")
    return SimpleNamespace(subject_ids=np.array(subjects), cohorts=np.array(cohorts))


@settings(max_examples=150, deadline=None)
@given(
    sizes=cohort_sizes,
    sessions=st.lists(st.integers(1, 3), min_size=1, max_size=4),
    test_size=st.sampled_from([0.1, 0.2, 0.25, 0.5]),
    seed=st.integers(0, 1000),
)
def test_stratified_folds_keep_subjects_whole_and_are_never_empty(
    sizes, sessions, test_size, seed
):
    X = entries(sizes, sessions)
    cv = CohortStratifiedShuffleSplit(
        n_splits=3, test_size=test_size, random_state=seed
    )
    if np.unique(X.subject_ids).size < 2:
        with pytest.raises(DataError, match="at least 2 subjects"):
            list(cv.split(X))
        return
    folds = list(cv.split(X))
    assert len(folds) == 3
    for train, valid in folds:
        assert train.size and valid.size
        assert np.union1d(train, valid).size == len(X.cohorts)
        assert not set(X.subject_ids[train]) & set(X.subject_ids[valid])


@settings(max_examples=150, deadline=None)
@given(
    sizes=cohort_sizes,
    sessions=st.lists(st.integers(1, 3), min_size=1, max_size=4),
    n_splits=st.integers(2, 6),
)
def test_leave_cohorts_out_keeps_cohorts_whole_and_is_never_empty(
    sizes, sessions, n_splits
):
    X = entries(sizes, sessions)
    cv = LeaveCohortsOut(n_splits=n_splits)
    if len(sizes) < n_splits:
        with pytest.raises(DataError, match=f"at least {n_splits} cohorts"):
            list(cv.split(X))
        return
    folds = list(cv.split(X))
    assert len(folds) == n_splits
    held_out = np.concatenate([valid for _, valid in folds])
    assert sorted(held_out.tolist()) == list(range(len(X.cohorts)))
    for train, valid in folds:
        assert train.size and valid.size
        assert not set(X.cohorts[train]) & set(X.cohorts[valid])
        assert not set(X.subject_ids[train]) & set(X.subject_ids[valid])
