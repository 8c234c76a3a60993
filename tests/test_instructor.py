"""The instructor's private/public split: reproducible, stratified, leak-free."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from atlas_ramp._io import file_sha256
from atlas_ramp.bids import DataError, find_subjects
from atlas_ramp.course import instructor
from atlas_ramp.course.instructor import build_course_data, split_course, verify_no_leak


@pytest.fixture(scope="module")
def source(release_tree) -> Path:
    """A labelled source: 15 subjects from 3 cohorts, in an ATLAS_2 folder."""
    return release_tree


def ids_in(folder: Path) -> set[str]:
    return {subject.subject_id for subject in find_subjects(folder)}


def read_tsv(path: Path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file, delimiter="\t"))


def test_private_test_never_reaches_the_public_data(source, tmp_path):
    private, public = tmp_path / "ramp_data" / "data", tmp_path / "kit" / "data"
    argv = ["--source", str(source), "--private", str(private)]
    assert instructor.main([*argv, "--public", str(public), "--seed", "0"]) == 0

    everyone = ids_in(source / "Training")
    private_train, private_test = ids_in(private / "train"), ids_in(private / "test")
    public_train, public_test = ids_in(public / "train"), ids_in(public / "test")
    assert private_train | private_test == everyone
    assert not private_train & private_test
    assert not public_train & public_test
    # Students get a subset of the private train, nothing of the private test.
    assert public_train | public_test <= private_train
    assert not (public_train | public_test) & private_test
    verify_no_leak(private, public)
    # Every cohort is in the private test and in the students' training data.
    cohorts = {s.cohort for s in find_subjects(source / "Training")}
    assert {s.cohort for s in find_subjects(private / "test")} == cohorts
    assert {s.cohort for s in find_subjects(public / "train")} == cohorts
    # Only the private side knows the whole story.
    assert (private / instructor.INSTRUCTOR_MANIFEST).exists()
    assert not (public / instructor.INSTRUCTOR_MANIFEST).exists()
    for folder in (private, public):
        for split in ("train", "test"):
            assert (folder / split / "dataset_description.json").exists()
        assert not list(folder.parent.glob(f".{folder.name}.course-*"))


def test_manifest_lists_every_file_with_its_checksum(source, tmp_path):
    private, public = tmp_path / "private", tmp_path / "public"
    split = build_course_data(source, private, public, seed=1)
    rows = read_tsv(private / instructor.INSTRUCTOR_MANIFEST)
    assert len(rows) == 2 * len(split.cohorts)  # a T1w and a mask per subject
    for row in rows:
        assert row["private_split"] == split.private_split(row["subject"])
        assert row["public_split"] == split.public_split(row["subject"])
        for root, part in (
            (private, row["private_split"]),
            (public, row["public_split"]),
        ):
            if part:
                (path,) = (root / part).rglob(row["file"])
                assert file_sha256(path) == row["sha256"]
    split_rows = read_tsv(public / "split_manifest.tsv")
    assert {(r["subject"], r["split"]) for r in split_rows} == {
        (s, "train") for s in split.public_train
    } | {(s, "test") for s in split.public_test}


def test_same_seed_same_split_other_seed_other_split(source):
    subjects = sorted(ids_in(source / "Training"))
    cohorts = [f"R{s[5:8]}" for s in subjects]
    first = split_course(subjects, cohorts, seed=0)
    assert split_course(list(reversed(subjects)), cohorts[::-1], seed=0) == first
    assert split_course(subjects, cohorts, seed=1).private_test != first.private_test


def test_files_are_hard_linked_or_copied(source, tmp_path):
    linked = build_course_data(source, tmp_path / "a" / "p", tmp_path / "a" / "q")
    subject = linked.public_train[0]
    (image,) = (tmp_path / "a" / "q" / "train").rglob(f"{subject}_*T1w.nii.gz")
    assert image.stat().st_nlink >= 2  # same file system here: linked
    build_course_data(source, tmp_path / "b" / "p", tmp_path / "b" / "q", link=False)
    (image,) = (tmp_path / "b" / "q" / "train").rglob(f"{subject}_*T1w.nii.gz")
    assert image.stat().st_nlink == 1


def test_existing_data_needs_force_and_survives_until_replaced(source, tmp_path):
    private, public = tmp_path / "private", tmp_path / "public"
    build_course_data(source, private, public, seed=0)
    (public / "README.md").write_text("kept")
    with pytest.raises(DataError, match="--force"):
        build_course_data(source, private, public, seed=5)
    first_test = ids_in(private / "test")
    split = build_course_data(source, private, public, seed=5, force=True)
    assert ids_in(private / "test") == set(split.private_test) != first_test
    assert (public / "README.md").read_text() == "kept"


def test_a_leak_is_detected_by_name_and_by_content(source, tmp_path):
    private, public = tmp_path / "private", tmp_path / "public"
    split = build_course_data(source, private, public)
    leaked = split.private_test[0]
    (folder,) = (private / "test").rglob(leaked)
    shutil.copytree(folder, public / "train" / "R999" / leaked)
    with pytest.raises(DataError, match=leaked):
        verify_no_leak(private, public)
    # The same image under another subject's name.
    shutil.rmtree(public / "train" / "R999")
    (image,) = folder.rglob("*_T1w.nii.gz")
    (target,) = (public / "train").rglob(f"{split.public_train[0]}_*T1w.nii.gz")
    target.unlink()
    shutil.copyfile(image, target)
    with pytest.raises(DataError, match="same content"):
        verify_no_leak(private, public)


def test_bad_sources_and_folders_are_clear_errors(source, tmp_path):
    with pytest.raises(DataError, match="no lesion mask"):
        build_course_data(source / "Testing", tmp_path / "p", tmp_path / "q")
    with pytest.raises(DataError, match="overlap"):
        build_course_data(source, tmp_path / "p", tmp_path / "p" / "public")
    with pytest.raises(DataError, match="--public-fraction"):
        build_course_data(source, tmp_path / "p", tmp_path / "q", public_fraction=0)
    assert not (tmp_path / "p").exists()


def test_an_interruption_changes_nothing(source, tmp_path, monkeypatch):
    private, public = tmp_path / "private", tmp_path / "public"
    build_course_data(source, private, public)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    calls = []

    def interrupted(*args):
        calls.append(1)
        if len(calls) > 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(instructor, "link_or_copy", interrupted)
    with pytest.raises(DataError, match="Interrupted"):
        build_course_data(source, private, public, seed=3, force=True)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_runs_as_a_module(source, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "atlas_ramp", "instructor", "--source", str(source)]
        + ["--private", str(tmp_path / "p"), "--public", str(tmp_path / "q")]
        + ["--public-fraction", "1"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 0, result.stderr
    assert "Public data in" in result.stdout
    assert ids_in(tmp_path / "q" / "train") | ids_in(tmp_path / "q" / "test") == ids_in(
        tmp_path / "p" / "train"
    )
