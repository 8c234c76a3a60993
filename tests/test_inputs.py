"""Inputs the kit can trust (issue 11): each kind of odd input, and what it gets.

One test (or a few) per row of the issue's table: data that is not exactly
ATLAS-shaped is either used as documented, or refused with a DataError that names
the file and says what to do.
"""

import gzip
import os
import shutil
import subprocess
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib
import numpy as np
import pytest
from rampwf.utils.importing import import_module_from_source
from sklearn.model_selection import GroupKFold

import atlas_ramp.volume_cache as volume_cache
from atlas_ramp.bids import DataError, anat_dir, find_subjects, mask_name, t1w_name
from atlas_ramp.masks import SparseMask
from atlas_ramp.predictions import object_array
from atlas_ramp.results.montage import render_montage
from atlas_ramp.scores import Dice, atlas_score_types
from atlas_ramp.splits import CohortStratifiedShuffleSplit, LeaveCohortsOut
from atlas_ramp.volumes import ImageSequence, MaskSequence, load_masks, load_split
from atlas_ramp.workflow import LesionSegmentation, SubmissionError

from .helpers import (
    AFFINE,
    REPO,
    SHAPE,
    flipped_x,
    make_kit,
    make_split,
    ramp_command,
    rewrite_nifti,
)
from .helpers import write_subject as write_tiny_subject

IDS = ("sub-r001s001", "sub-r001s002", "sub-r002s001")


def t1w_of(root, subject_id):
    return anat_dir(root, subject_id) / t1w_name(subject_id)


def load_problem():
    return import_module_from_source(str(REPO / "problem.py"), "problem")


# ------------------------------------------------------- one grid per split


def test_a_subject_flipped_on_x_is_refused_naming_it_and_the_reference(tmp_path):
    make_split(tmp_path, IDS)
    odd = t1w_of(tmp_path, "sub-r001s002")
    flipped_x(odd)
    flipped_x(anat_dir(tmp_path, "sub-r001s002") / mask_name("sub-r001s002"))
    with pytest.raises(DataError, match="orientation LAS") as error:
        ImageSequence.from_folder(tmp_path)
    assert str(odd) in str(error.value)
    assert "reference subject sub-r001s001" in str(error.value)


def test_a_subject_whose_origin_moved_20_mm_is_refused(tmp_path):
    make_split(tmp_path, IDS)
    odd = t1w_of(tmp_path, "sub-r002s001")
    for path in (odd, anat_dir(tmp_path, "sub-r002s001") / mask_name("sub-r002s001")):
        moved = AFFINE.copy()
        moved[1, 3] += 20
        rewrite_nifti(path, affine=moved)
    with pytest.raises(DataError, match="differ by up to 20") as error:
        ImageSequence.from_folder(tmp_path)
    assert str(odd) in str(error.value)
    assert "reference subject sub-r001s001" in str(error.value)


def test_the_reference_grid_is_the_one_most_subjects_share(tmp_path):
    make_split(tmp_path, IDS)
    odd = t1w_of(tmp_path, "sub-r001s001")  # the first subject is the odd one
    moved = AFFINE.copy()
    moved[0, 3] -= 8
    for path in anat_dir(tmp_path, "sub-r001s001").glob("*.nii.gz"):
        rewrite_nifti(path, affine=moved)
    with pytest.raises(DataError, match="reference subject sub-r001s002") as error:
        ImageSequence.from_folder(tmp_path)
    assert str(error.value).startswith(str(odd))


def test_header_rounding_is_within_the_tolerance(tmp_path):
    make_split(tmp_path, IDS)
    nudged = AFFINE + 1e-5
    nudged[3] = [0, 0, 0, 1]
    for path in anat_dir(tmp_path, IDS[1]).glob("*.nii.gz"):
        rewrite_nifti(path, affine=nudged)
    assert len(ImageSequence.from_folder(tmp_path)) == 3


def test_a_split_not_in_ras_orientation_is_refused(tmp_path):
    make_split(tmp_path, IDS)
    for path in sorted(tmp_path.rglob("*.nii.gz")):
        flipped_x(path)
    with pytest.raises(DataError, match=r"orientation LAS .* expects RAS"):
        ImageSequence.from_folder(tmp_path)


# -------------------------------------------------- train and test, one grid


def test_train_and_test_on_different_grids_fail_before_training(tmp_path):
    make_split(tmp_path / "data" / "train", IDS)
    fine = np.diag([2.0, 2.0, 2.0, 1.0])
    for seed, subject_id in enumerate(("sub-r001s003", "sub-r002s002")):
        folder = anat_dir(tmp_path / "data" / "test", subject_id)
        write_tiny_subject(
            folder, subject_id, shape=(18, 20, 16), affine=fine, seed=seed
        )
    problem = load_problem()
    problem.get_train_data(str(tmp_path))
    with pytest.raises(DataError, match="on different grids") as error:
        problem.get_test_data(str(tmp_path))
    message = str(error.value)
    assert "9×10×8 voxels of 4×4×4 mm" in message
    assert "18×20×16 voxels of 2×2×2 mm" in message


def test_a_subject_in_train_and_test_is_refused(tmp_path):
    make_split(tmp_path / "train", IDS)
    make_split(tmp_path / "test", ("sub-r001s002", "sub-r002s009"))
    with pytest.raises(DataError, match=r"both in .*train.*sub-r001s002"):
        load_split(tmp_path, "test", same_grid_as="train")


def test_a_trained_model_refuses_data_on_another_grid(tmp_path):
    make_split(tmp_path / "a" / "train", IDS)
    X, y = load_split(tmp_path / "a", "train")
    folder = tmp_path / "submission"
    folder.mkdir()
    (folder / "estimator.py").write_text(
        "import numpy as np\n"
        "class E:\n"
        "    def fit(self, X, y):\n"
        "        return self\n"
        "    def predict(self, X):\n"
        "        return np.zeros(X.shape, bool)\n"
        "def get_estimator():\n"
        "    return E()\n"
    )
    workflow = LesionSegmentation()
    trained = workflow.train_submission(str(folder), X, y)
    other = tmp_path / "b" / "train"
    write_tiny_subject(anat_dir(other, IDS[0]), IDS[0], shape=(9, 10, 9))
    X_other, _ = load_split(tmp_path / "b", "train")
    with pytest.raises(DataError, match="different grids"):
        workflow.test_submission(trained, X_other)


# ------------------------------------------------------- finite values, files


@pytest.mark.parametrize("bad", ["all NaN", "one Inf"])
def test_non_finite_voxels_are_refused_when_read(tmp_path, bad):
    make_split(tmp_path / "train", IDS)
    path = t1w_of(tmp_path / "train", IDS[1])
    data = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    if bad == "all NaN":
        data[:] = np.nan
    else:
        data[3, 4, 5] = np.inf
    rewrite_nifti(path, data)
    X = ImageSequence.from_folder(tmp_path / "train")
    with pytest.raises(DataError, match="NaN or infinite") as error:
        X[1]
    assert str(path) in str(error.value)
    # The bad volume never enters the cache; the others do.
    X[0]
    assert len(list(X.cache_dir.glob("*.npy"))) == 1


def test_a_nan_in_a_mask_is_refused_naming_the_mask(tmp_path):
    make_split(tmp_path / "train", IDS)
    path = anat_dir(tmp_path / "train", IDS[0]) / mask_name(IDS[0])
    values = np.zeros(SHAPE, np.float32)
    values[0, 0, 0] = np.nan
    rewrite_nifti(path, values)
    with pytest.raises(DataError, match="NaN or infinite") as error:
        load_split(tmp_path, "train")
    assert str(path) in str(error.value)


def truncate(path):
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: len(raw) // 2]))


READ_ALL = """
class Estimator:
    def fit(self, X, y):
        for i in range(len(X)):
            X[i]
        return self
"""
WRAP_ERRORS = """
class Estimator:
    def fit(self, X, y):
        try:
            for i in range(len(X)):
                X[i]
        except Exception as error:
            raise RuntimeError("my loader failed") from error
        return self
"""


@pytest.mark.parametrize("body", [READ_ALL, WRAP_ERRORS], ids=["plain", "wrapped"])
def test_a_truncated_file_found_at_fit_time_is_a_data_error(tmp_path, body):
    make_split(tmp_path / "train", IDS)
    X, y = load_split(tmp_path, "train")
    bad = t1w_of(tmp_path / "train", IDS[2])
    truncate(bad)
    folder = tmp_path / "reader"
    folder.mkdir()
    source = textwrap.dedent(body) + "\ndef get_estimator():\n    return Estimator()\n"
    (folder / "estimator.py").write_text(source)
    with pytest.raises(DataError, match="truncated or corrupted") as error:
        LesionSegmentation().train_submission(str(folder), X, y)
    assert not isinstance(error.value, SubmissionError)
    assert str(bad) in str(error.value)


@pytest.mark.slow
def test_ramp_test_blames_the_data_for_a_truncated_file(tmp_path):
    data = tmp_path / "data"
    ids = [f"sub-r00{c}s00{i}" for c in (1, 2) for i in range(1, 7)]
    make_split(data / "train", ids)
    make_split(data / "test", ("sub-r001s009", "sub-r002s009"))
    bad = t1w_of(data / "train", ids[4])
    truncate(bad)
    kit = make_kit(tmp_path / "kit", data)
    env = dict(os.environ, RAMP_TEST_MODE="1")
    result = subprocess.run(
        [ramp_command("ramp-test"), "--submission", "starting_kit", "--quick-test"],
        cwd=kit,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "atlas_ramp.bids.DataError: Cannot read" in output
    assert bad.name in output  # (through the kit's data link)
    assert "fit failed" not in output


# ------------------------------------------------------ subjects, not sessions


def write_sessions(root, subject_id, sessions, seed=0):
    for session in sessions:
        folder = root / f"sub-{subject_id[4:]}" / f"ses-{session}" / "anat"
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed + int(session))
        nib.save(
            nib.Nifti1Image(rng.random(SHAPE).astype(np.float32), AFFINE),
            folder / t1w_name(subject_id, session),
        )
        mask = np.zeros(SHAPE, np.uint8)
        mask[2:4, 2:4, 2 + int(session)] = 1
        nib.save(nib.Nifti1Image(mask, AFFINE), folder / mask_name(subject_id, session))


def test_sessions_are_entries_and_the_cv_keeps_them_together(tmp_path):
    ids = [f"sub-r00{c}s00{i}" for c in (1, 2) for i in range(1, 6)]
    for seed, subject_id in enumerate(ids):
        write_sessions(tmp_path, subject_id, ("1", "2"), seed=10 * seed)
    X = ImageSequence.from_folder(tmp_path, cache_dir=None)
    assert len(X) == 20 and X.sessions.tolist()[:2] == ["1", "2"]
    assert X.subject_ids.tolist()[:2] == [ids[0], ids[0]]
    for cv in (
        CohortStratifiedShuffleSplit(n_splits=5, test_size=0.2),
        LeaveCohortsOut(n_splits=2),
    ):
        for train, valid in cv.split(X):
            assert not set(X.subject_ids[train]) & set(X.subject_ids[valid])
            assert train.size and valid.size
    # The problem's own CV does the same.
    for train, valid in load_problem().get_cv(X, None):
        assert not set(X.subject_ids[train]) & set(X.subject_ids[valid])


# ----------------------------------------------------- pairing by BIDS entities


def test_native_space_image_beside_an_mni_mask_is_refused(tmp_path):
    folder = tmp_path / "sub-r001s001" / "ses-1" / "anat"
    folder.mkdir(parents=True)
    native = folder / "sub-r001s001_ses-1_space-orig_T1w.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(SHAPE, np.float32), AFFINE), native)
    nib.save(
        nib.Nifti1Image(np.zeros(SHAPE, np.uint8), AFFINE),
        folder / mask_name("sub-r001s001"),
    )
    with pytest.raises(DataError) as error:
        find_subjects(tmp_path)
    message = str(error.value)
    assert "no T1w image in space MNI152NLin2009aSym" in message
    assert f"{native} (space 'orig')" in message
    assert "expects images registered to MNI152NLin2009aSym" in message


def test_mni_image_with_a_mask_in_another_space_is_refused(tmp_path):
    folder = anat_dir(tmp_path, "sub-r001s001")
    write_tiny_subject(folder, "sub-r001s001", mask=False)
    other = folder / "sub-r001s001_ses-1_space-orig_label-L_desc-T1lesion_mask.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.uint8), AFFINE), other)
    with pytest.raises(DataError, match="is in space 'orig' but its T1w image"):
        find_subjects(tmp_path)


def test_raw_and_derivative_images_of_one_subject_use_the_mni_one(tmp_path):
    derivative = tmp_path / "derivatives" / "ATLAS" / "sub-r001s001" / "ses-1" / "anat"
    t1w, _ = write_tiny_subject(derivative, "sub-r001s001")
    raw = tmp_path / "sub-r001s001" / "ses-1" / "anat"
    raw.mkdir(parents=True)
    shutil.copy(t1w, raw / "sub-r001s001_ses-1_T1w.nii.gz")  # no space: raw data
    (subject,) = find_subjects(tmp_path)
    assert subject.t1w_path == t1w


def test_two_images_with_the_same_entities_give_no_advice_to_delete(tmp_path):
    write_tiny_subject(tmp_path / "one", "sub-r001s001")
    write_tiny_subject(tmp_path / "two", "sub-r001s001")
    with pytest.raises(DataError, match="same sub, ses and space") as error:
        find_subjects(tmp_path)
    assert "Keep one" not in str(error.value)
    assert "delete" not in str(error.value).lower()


# ------------------------------------------------------- subjects without cohort


def test_subject_without_cohort_names_the_file_and_how_to_go_on(tmp_path):
    t1w, _ = write_tiny_subject(tmp_path / "sub-001" / "anat", "sub-001")
    with pytest.raises(DataError, match="participants.tsv") as error:
        find_subjects(tmp_path)
    assert str(t1w) in str(error.value)
    assert "same cohort" in str(error.value)


def test_cohorts_come_from_participants_tsv(tmp_path):
    for subject_id in ("sub-001", "sub-002", "sub-003"):
        write_tiny_subject(tmp_path / subject_id / "anat", subject_id)
    (tmp_path / "participants.tsv").write_text(
        "participant_id\tcohort\tage\nsub-001\tsiteA\t60\n002\tsiteB\t70\n"
        "sub-003\tsiteA\t55\n"
    )
    X = ImageSequence.from_folder(tmp_path, cache_dir=None)
    assert X.cohorts.tolist() == ["siteA", "siteB", "siteA"]


# ------------------------------------------------------- no empty fold, ever


def test_cohorts_of_one_subject_never_give_an_empty_fold():
    X = type("X", (), {"cohorts": np.array([f"R{i:03d}" for i in range(6)])})
    folds = list(load_problem().get_cv(X, None))
    assert folds
    for train, valid in folds:
        assert train.size == 5 and valid.size == 1


def test_too_few_subjects_for_cross_validation_is_a_clear_error():
    X = type("X", (), {"cohorts": np.array(["R001"])})
    with pytest.raises(DataError, match="at least 2 subjects"):
        list(CohortStratifiedShuffleSplit().split(X))


# --------------------------------------------- one empty mask, starting kit


def test_one_empty_training_mask_keeps_the_starting_kit_a_threshold(
    small_sample, tmp_path
):
    data = tmp_path / "data"
    shutil.copytree(small_sample, data, ignore=shutil.ignore_patterns(".cache"))
    X_train, _ = load_split(data, "train")
    empty = X_train.subjects[0].mask_path
    rewrite_nifti(empty, np.zeros(X_train.volume_shape, np.uint8))
    X_train, y_train = load_split(data, "train")
    assert y_train[0].n_voxels == 0
    module = import_module_from_source(
        str(REPO / "submissions" / "starting_kit" / "estimator.py"), "estimator"
    )
    estimator = module.get_estimator().fit(X_train, MaskSequence(y_train))
    assert estimator.threshold_ > module.THRESHOLDS[0]
    X_test, y_test = load_split(data, "test")
    predicted = object_array(
        SparseMask.from_dense(mask, X_test.voxel_volume_ml)
        for mask in estimator.predict(X_test)
    )
    nothing = object_array(SparseMask([], X_test.volume_shape) for _ in y_test)
    assert Dice()(y_test, predicted) > Dice()(y_test, nothing) + 0.05


# ------------------------------------------------------------- X as an array


def test_x_shape_is_that_of_the_array_it_stands_for(tmp_path, monkeypatch):
    make_split(tmp_path, [f"sub-r00{c}s00{i}" for c in (1, 2, 3) for i in (1, 2)])
    X = ImageSequence.from_folder(tmp_path)
    assert X.shape == (6, *SHAPE) and X.volume_shape == SHAPE
    assert X[[0, 1]].shape == (2, *SHAPE)
    folds = list(GroupKFold(3).split(X, groups=X.cohorts))
    assert len(folds) == 3
    reads = []
    monkeypatch.setattr(volume_cache, "read_nifti", lambda *a: reads.append(a))
    with pytest.raises(TypeError, match=r"would load them all .* X\[i\]"):
        np.asarray(X)
    assert reads == []


def test_masks_of_every_subject(tmp_path):
    make_split(tmp_path, IDS)
    y = load_masks(ImageSequence.from_folder(tmp_path))
    assert [mask.n_voxels for mask in y] == [8, 8, 8]


# ------------------------------------------------------------- small pieces


def test_blending_quick_runs_without_the_variable_says_what_to_do(tmp_path):
    problem = load_problem()
    with pytest.raises(FileNotFoundError, match=r"RAMP_TEST_MODE=1 ramp-blend"):
        problem.load_y_pred(".", str(tmp_path / "fold_2"), "train")


def test_one_list_of_scores():
    problem = load_problem()
    names = [score.name for score in problem.score_types]
    assert names == [score.name for score in atlas_score_types()]
    assert names == ["dice", "lesion_f1", "volume_diff_ml", "lesion_count_diff"]


def test_only_testmode_reads_ramp_test_mode():
    sources = [REPO / "problem.py", *REPO.glob("atlas_ramp/*.py")]
    sources += REPO.glob("submissions/*/estimator.py")
    for source in sources:
        if source.name == "testmode.py":
            continue
        text = source.read_text()
        assert "environ" not in text or "RAMP_TEST_MODE" not in text, source


def test_the_cnn_counts_cores_without_sched_getaffinity(monkeypatch):
    pytest.importorskip("torch")
    module = import_module_from_source(
        str(REPO / "submissions" / "small_cnn" / "estimator.py"), "estimator"
    )
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.delattr(os, "process_cpu_count", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert module.available_cpus() == 3
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert module.available_cpus() == 1
    assert module.pick_device("cpu").type == "cpu"


# ------------------------------------------------------------------ montage


def test_the_montage_takes_left_and_right_from_the_affine(tmp_path):
    shape = (20, 22, 18)
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = [-38, -42, -34]  # x = 0 mm in the middle of the grid
    image = np.zeros(shape, np.float32)
    image[2:-2, 2:-2, 2:-2] = 100.0
    mask = np.zeros(shape, np.uint8)
    mask[3:7, 9:13, 7:11] = 1  # x < 0 mm: the subject's left
    pictures = []
    for name, flip in (("ras", False), ("las", True)):
        folder = anat_dir(tmp_path / name, "sub-r001s001")
        write_tiny_subject(folder, "sub-r001s001", shape, affine, mask=mask)
        rewrite_nifti(folder / t1w_name("sub-r001s001"), image)
        if flip:
            for path in folder.glob("*.nii.gz"):
                flipped_x(path)
        png = render_montage(tmp_path / name, tmp_path / f"{name}.png", 1)
        pictures.append(plt.imread(png))
    ras, las = pictures
    assert ras.shape == las.shape
    # The same picture, whatever the order of the voxels on disk: the lesion's red
    # outline falls on the same pixels (drawn from voxel axes, it would move to
    # the other side in the coronal and axial panels).
    red = [(p[..., 0] > 0.7) & (p[..., 1] < 0.3) & (p[..., 2] < 0.3) for p in pictures]
    assert red[0].sum() > 100
    assert (red[0] & red[1]).sum() / (red[0] | red[1]).sum() > 0.8
    assert np.abs(ras - las).mean() < 0.01


def test_a_derived_image_beside_the_t1w_is_ignored(tmp_path):
    # FSL's brain extraction writes sub-..._T1w_brain.nii.gz beside the image.
    from atlas_ramp.bids import find_subjects

    from .helpers import make_split

    root = make_split(tmp_path / "split")
    t1w = next(root.rglob("*_T1w.nii.gz"))
    (t1w.parent / t1w.name.replace("_T1w.nii.gz", "_T1w_brain.nii.gz")).write_bytes(
        t1w.read_bytes()
    )
    assert len(find_subjects(root)) == 3
