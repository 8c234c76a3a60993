"""Lay out an extracted ATLAS R2.0 release as ``train``, ``test``, ``unlabelled``.

The release holds ``Training`` (labelled subjects) and ``Testing`` (masks
withheld) folders, somewhere below its top folder. The labelled subjects are
split into ``train`` and ``test`` by a seeded, cohort-stratified hold-out
(:func:`~atlas_ramp.splits.stratified_holdout`), so that every cohort is seen in
training; files are moved (renamed, never copied) and keep the ATLAS layout below
the split (``train/R001/sub-r001s001/ses-1/anat/...``).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..bids import DataError, Subject, find_subjects
from ..splits import stratified_holdout
from .release import write_split_description, write_split_manifest


def _locate_release_folder(root: Path, folder_name: str) -> Path | None:
    """The folder called ``folder_name`` that holds T1w images, at any depth."""
    found = [
        folder
        for folder in sorted(root.rglob(folder_name))
        if folder.is_dir() and next(folder.rglob("sub-*_T1w.nii.gz"), None)
    ]
    if len(found) > 1:
        listing = ", ".join(str(folder.relative_to(root)) for folder in found)
        raise DataError(
            f"The archive holds several '{folder_name}' folders with images "
            f"({listing}); expected one. Is it the ATLAS R2.0 archive?"
        )
    return found[0] if found else None


def _move_subject(subject: Subject, split_root: Path, destination: Path) -> None:
    """Move a subject's folder (or its files) keeping the path below the split."""
    folder = next(
        (
            parent
            for parent in subject.t1w_path.parents
            if parent.name == subject.subject_id and split_root in parent.parents
        ),
        None,
    )
    if folder is not None:
        paths = [folder]
    else:
        paths = [p for p in (subject.t1w_path, subject.mask_path) if p is not None]
    for path in paths:
        target = destination / path.relative_to(split_root)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(path, target)


def _remove_empty_folders(root: Path) -> None:
    for folder, _, _ in os.walk(root, topdown=False):
        try:
            os.rmdir(folder)
        except OSError:
            pass  # not empty


def lay_out_release(
    extracted: Path,
    new_root: Path,
    *,
    test_fraction: float,
    seed: int,
    source: str,
) -> list[tuple[str, str, str]]:
    """Move the extracted release into ``train``, ``test``, ``unlabelled``.

    Returns the manifest rows ``(subject, cohort, split)``.
    """
    training = _locate_release_folder(extracted, "Training")
    if training is None:
        raise DataError(
            f"No 'Training' folder with T1w images (sub-*_T1w.nii.gz) in {source}. "
            "Is it the ATLAS R2.0 archive?"
        )
    testing = _locate_release_folder(extracted, "Testing")
    labelled = find_subjects(training)
    if labelled[0].mask_path is None:
        raise DataError(
            f"The subjects of {source}'s Training folder have no lesion masks; "
            "they cannot be used to train or score."
        )
    subject_ids = [subject.subject_id for subject in labelled]
    cohorts = [subject.cohort for subject in labelled]
    train_ids, test_ids = stratified_holdout(subject_ids, cohorts, test_fraction, seed)
    if not train_ids or not test_ids:
        raise DataError(
            f"{source} has {len(subject_ids)} labelled subjects: too few to hold out "
            f"a test split with --test-fraction {test_fraction}."
        )
    split_of = dict.fromkeys(train_ids, "train") | dict.fromkeys(test_ids, "test")
    for subject in labelled:
        _move_subject(subject, training, new_root / split_of[subject.subject_id])
    rows = [(s.subject_id, s.cohort, split_of[s.subject_id]) for s in labelled]
    how = (
        "cohort-stratified hold-out of the labelled ATLAS R2.0 Training subjects "
        f"(atlas_ramp.splits.stratified_holdout, test_fraction={test_fraction}, "
        f"seed={seed})"
    )
    write_split_description(
        new_root / "train", "ATLAS R2.0, train split", f"Train side of a {how}.", source
    )
    write_split_description(
        new_root / "test", "ATLAS R2.0, test split", f"Test side of a {how}.", source
    )
    if testing is not None:
        unlabelled = find_subjects(testing)
        os.rename(testing, new_root / "unlabelled")
        rows += [(s.subject_id, s.cohort, "unlabelled") for s in unlabelled]
        write_split_description(
            new_root / "unlabelled",
            "ATLAS R2.0, unlabelled Testing subjects",
            "The ATLAS R2.0 Testing subjects, whose lesion masks are withheld.",
            source,
        )
    # Whatever else the archive holds (metadata tables, READMEs) is kept aside.
    _remove_empty_folders(extracted)
    if extracted.exists():
        os.rename(extracted, new_root / "extras")
    write_split_manifest(new_root / "split_manifest.tsv", rows)
    return sorted(rows)
