"""Inputs, second round (issue 28): linked folders, masks under other names,
rounding errors in probabilities, interrupted sample builds, a full disk, and the
first thing a student reads after a data error.

One test (or a few) per row of the issue; each checks that the message names the
file or folder, and that nothing good was lost.
"""

import errno
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from rampwf.utils.importing import import_module_from_source

import atlas_ramp.volume_cache as volume_cache
from atlas_ramp import synthetic
from atlas_ramp.bids import DataError, anat_dir, find_subjects, mask_name, t1w_name
from atlas_ramp.synthetic.sample import _is_complete
from atlas_ramp.volumes import ImageSequence, default_cache_dir, load_split
from atlas_ramp.workflow import SubmissionError, check_batch_output

from .helpers import REPO, make_split

IDS = tuple(f"sub-r00{cohort}s00{index}" for cohort in (1, 2) for index in (1, 2))
# n_generalizability=1: every split the builder knows, in a fraction of a second.
TINY = dict(
    n_train=2,
    n_test=1,
    n_cohorts=1,
    seed=0,
    downsample=6,
    progress=False,
    n_jobs=1,
    n_generalizability=1,
)


def split_files(folder: Path) -> dict[str, bytes]:
    """Relative path -> content of every file below ``folder`` (links followed)."""
    files = {}
    for base, _, names in os.walk(folder, followlinks=True):
        for name in names:
            path = Path(base) / name
            files[str(path.relative_to(folder))] = path.read_bytes()
    return files


def move_behind_link(folder: Path, shared: Path) -> None:
    """Move ``folder`` to the ``shared`` drive and leave a link in its place."""
    target = shared / folder.relative_to(folder.anchor)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(folder, target)
    folder.symlink_to(target, target_is_directory=True)


# ------------------------------------------------------- 1. linked folders


@pytest.mark.parametrize("linked", ["subjects", "cohorts", "half", "split", "cycle"])
def test_discovery_follows_linked_folders_and_loses_no_subject(tmp_path, linked):
    split = make_split(tmp_path / "data" / "train", IDS)
    shared = tmp_path / "shared"
    subject_dirs = [anat_dir(split, s).parents[1] for s in IDS]
    if linked == "subjects":
        for folder in subject_dirs:
            move_behind_link(folder, shared)
    elif linked == "cohorts":
        for cohort in ("R001", "R002"):
            move_behind_link(split / cohort, shared)
    elif linked == "half":
        for folder in subject_dirs[::2]:
            move_behind_link(folder, shared)
    elif linked == "split":
        move_behind_link(split, shared)
    else:  # a link back to the split, inside a subject: entered once
        (subject_dirs[0] / "loop").symlink_to(split, target_is_directory=True)

    subjects = find_subjects(split)
    assert [s.subject_id for s in subjects] == list(IDS)
    assert all(s.mask_path is not None for s in subjects)
    # The sample builder calls complete what discovery finds in full.
    assert _is_complete(split, len(IDS))
    assert not _is_complete(split, len(IDS) + 1)


def test_a_link_to_nothing_is_named_not_skipped(tmp_path):
    split = make_split(tmp_path / "train", IDS)
    subject = anat_dir(split, IDS[1]).parents[1]
    move_behind_link(subject, tmp_path / "shared")
    shutil.rmtree(tmp_path / "shared")  # the shared drive is not mounted
    with pytest.raises(DataError, match="does not exist") as error:
        find_subjects(split)
    assert str(subject) in str(error.value)


def test_a_broken_link_to_a_document_is_skipped(tmp_path):
    split = make_split(tmp_path / "train", IDS)
    (split / "README.md").symlink_to(tmp_path / "moved" / "README.md")
    assert [s.subject_id for s in find_subjects(split)] == list(IDS)
    (split / "participants.tsv").symlink_to(tmp_path / "moved" / "participants.tsv")
    with pytest.raises(DataError, match="participants.tsv is a link to"):
        find_subjects(split)


def test_the_builder_accepts_a_sample_whose_subjects_are_links(tmp_path, capsys):
    data = synthetic.build_sample(tmp_path / "data", **TINY)
    for image in sorted((data / "train").glob("R*/sub-*")):
        move_behind_link(image, tmp_path / "shared")
    before = split_files(data)
    capsys.readouterr()
    synthetic.build_sample(data, **TINY)
    assert "complete" in capsys.readouterr().out  # not rebuilt, not refused
    assert split_files(data) == before
    X, y = load_split(data, "train")
    assert len(X) == len(y) == TINY["n_train"]


def test_the_cache_stays_in_data_when_the_split_is_a_link(tmp_path):
    data = tmp_path / "data"
    make_split(data / "train", IDS)
    move_behind_link(data / "train", tmp_path / "shared")
    X = ImageSequence.from_folder(data / "train")
    X[0]
    assert X.cache_dir == data / ".cache" / "train"
    assert default_cache_dir(data / "train") == X.cache_dir
    assert list(X.cache_dir.glob("*.npy"))
    target = (data / "train").resolve()
    assert not (target.parent / ".cache").exists()


# ------------------------------------------------ 2. masks under other names


def test_masks_under_another_name_are_named_with_the_expected_one(tmp_path):
    split = make_split(tmp_path / "train", IDS)
    renamed = []
    for subject_id in IDS:
        mask = anat_dir(split, subject_id) / mask_name(subject_id)
        name = mask.name.replace("label-L_desc-T1lesion", "desc-lesion")
        other = mask.with_name(name)
        mask.rename(other)
        renamed.append(other)
    with pytest.raises(DataError) as error:
        load_split(tmp_path, "train")
    message = str(error.value)
    assert str(split) in message
    assert mask_name(IDS[0]) in message
    assert str(renamed[0]) in message
    assert "4 mask-like file(s)" in message


def test_a_split_without_any_mask_says_so(tmp_path):
    make_split(tmp_path / "train", IDS[:2])
    for subject_id in IDS[:2]:
        (anat_dir(tmp_path / "train", subject_id) / mask_name(subject_id)).unlink()
    with pytest.raises(DataError, match="No mask-like file") as error:
        load_split(tmp_path, "train")
    assert str(tmp_path / "train") in str(error.value)
    assert mask_name(IDS[0]) in str(error.value)


# ---------------------------------------- 3. probabilities a rounding error out


@pytest.fixture(scope="module")
def two_subjects(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_split(root / "train", IDS[:2])
    return ImageSequence.from_folder(root / "train", cache_dir=None)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_rounding_error_outside_0_1_is_clipped(two_subjects, dtype):
    output = np.full(two_subjects.shape, 0.5, dtype=dtype)
    output[0, 0, 0, 0] = dtype(1.0000001)
    output[1, 0, 0, 0] = dtype(-1e-7)
    kept = output.copy()
    checked = check_batch_output(output, two_subjects, "s", "predict_proba")
    assert checked.min() == 0 and checked.max() == 1
    assert checked.dtype == dtype
    np.testing.assert_array_equal(output, kept)  # the submission's array as it was


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("value", "shown"), [(1.0002, "1.0002"), (-0.00015, "-0.00015")]
)
def test_beyond_the_tolerance_the_message_gives_the_real_value(
    two_subjects, dtype, value, shown
):
    output = np.full(two_subjects.shape, 0.5, dtype=dtype)
    output[1, 2, 2, 2] = dtype(value)
    with pytest.raises(SubmissionError) as error:
        check_batch_output(output, two_subjects, "s", "predict_proba")
    message = str(error.value)
    assert IDS[1] in message
    # Ten digits: float32's 1.0002 shows as 1.000200033, never as "1".
    extreme = f"{float(dtype(value)):.10g}"
    assert extreme in message and extreme.startswith(shown)


# ---------------------------------------------- 4. an interrupted publication


def publishing_renames(monkeypatch, stop_at: int, killed: bool):
    """Interrupt the ``stop_at``-th rename (0-based) of the sample's publication.

    ``killed``: the process dies there (nothing runs after: no rename back, no
    clean-up); otherwise a KeyboardInterrupt is raised (Ctrl-C).
    """
    real_rename, real_rmtree = os.rename, shutil.rmtree
    calls = []

    class Killed(BaseException):
        pass

    def rename(source, target):
        if len(calls) >= stop_at and (killed or len(calls) == stop_at):
            calls.append(source)
            raise Killed() if killed else KeyboardInterrupt("simulated Ctrl-C")
        calls.append(source)
        return real_rename(source, target)

    def rmtree(path, *args, **kwargs):
        if not (killed and len(calls) > stop_at):
            real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(shutil, "rmtree", rmtree)
    return (Killed, KeyboardInterrupt), calls


@pytest.mark.parametrize("stop_at", [0, 3, 7])
def test_ctrl_c_while_publishing_keeps_the_previous_sample(
    tmp_path, monkeypatch, capsys, stop_at
):
    data = synthetic.build_sample(tmp_path / "data", **TINY)
    before = split_files(data)
    _, calls = publishing_renames(monkeypatch, stop_at, killed=False)
    with pytest.raises(KeyboardInterrupt):
        synthetic.build_sample(data, **{**TINY, "seed": 5})
    # 4 old entries out (the marker first), 3 new splits in, the marker last:
    # the 8th rename is the one that publishes.
    if stop_at == 7:
        assert Path(calls[7]).name == synthetic.COMPLETION_MARKER
    monkeypatch.undo()
    assert split_files(data) == before  # marker included
    assert [p.name for p in data.iterdir() if p.name.startswith(".s")] == []
    capsys.readouterr()
    synthetic.build_sample(data, **TINY)
    assert "complete" in capsys.readouterr().out


@pytest.mark.parametrize("stop_at", range(8))
def test_a_build_killed_while_publishing_is_finished_by_the_next(
    tmp_path, monkeypatch, capsys, stop_at
):
    new = dict(TINY, seed=5)
    expected = split_files(synthetic.build_sample(tmp_path / "reference", **new))
    data = synthetic.build_sample(tmp_path / "data", **TINY)
    errors, _ = publishing_renames(monkeypatch, stop_at, killed=True)
    with pytest.raises(errors):
        synthetic.build_sample(data, **new)
    monkeypatch.undo()
    capsys.readouterr()
    synthetic.build_sample(data, **new)  # the same command, run again
    output = capsys.readouterr().out
    assert "is complete" in output
    assert split_files(data) == expected
    assert [p.name for p in data.iterdir() if p.name.startswith(".s")] == []


# ---------------------------------------------- 5. a full disk under the cache


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("failing", ["array", "metadata"])
def test_a_full_disk_warns_once_leaves_nothing_partial_and_reads_on(
    tmp_path, monkeypatch, failing
):
    make_split(tmp_path / "train", IDS)
    cache = tmp_path / "cache"
    X = ImageSequence.from_folder(tmp_path / "train", cache_dir=cache)
    first = np.array(X[0])  # a good entry, written before the disk filled
    good = sorted(p.name for p in cache.iterdir())
    monkeypatch.setattr(volume_cache, "_full_cache_dirs", set())
    calls = []

    def write_half_then_fail(stream, array, *args, **kwargs):
        calls.append(1)
        stream.write(b"\x93NUMPY" + bytes(100))
        no_space()

    if failing == "array":
        monkeypatch.setattr(volume_cache.np, "save", write_half_then_fail)
    else:
        monkeypatch.setattr(volume_cache, "atomic_write_text", no_space)
    uncached = ImageSequence.from_folder(tmp_path / "train", cache_dir=None)
    with pytest.warns(UserWarning, match="is full") as caught:
        second = np.array(X[1])
    message = str(caught[0].message)
    assert str(cache) in message and "MB" in message
    np.testing.assert_array_equal(second, uncached[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: no second warning
        np.testing.assert_array_equal(X[2], uncached[2])
    assert len(calls) <= 1  # no write tried again once the disk was full
    assert sorted(p.name for p in cache.iterdir()) == good
    np.testing.assert_array_equal(X[0], first)


# ------------------------------------------- 6. the message before the traceback


def test_a_data_error_of_problem_py_is_printed_first(tmp_path, capsys):
    problem = import_module_from_source(str(REPO / "problem.py"), "problem")
    make_split(tmp_path / "data" / "train", IDS)
    t1w = anat_dir(tmp_path / "data" / "train", IDS[0]) / t1w_name(IDS[0])
    t1w.rename(t1w.with_name("unreadable_name.nii.gz"))
    with pytest.raises(DataError) as error:
        problem.get_train_data(str(tmp_path))
    printed = capsys.readouterr().err
    assert printed.strip().startswith("ramp-test: the data cannot be used")
    assert " ".join(printed.split()).endswith(" ".join(str(error.value).split()))
