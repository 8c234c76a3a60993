"""Trees in the layout of the ATLAS R2.0 release, for testing the archive pipeline.

The real release (``ATLAS_2/Training``, ``ATLAS_2/Testing``) cannot be used in
tests; this writes a small synthetic one with the same names and layout.
"""

from __future__ import annotations

from pathlib import Path

from ..bids import subject_label
from ..synthetic import (
    load_anatomy,
    make_cohort_profiles,
    make_subject,
    subject_seed,
    write_subject,
)


def write_atlas_release(
    root, n_subjects: int = 8, n_unlabelled: int = 4, seed: int = 0, downsample: int = 4
) -> Path:
    """Write a small synthetic tree in the layout of the ATLAS R2.0 release.

    ::

        <root>/ATLAS_2/Training/R001/sub-r001s001/ses-1/anat/{T1w, mask}
        <root>/ATLAS_2/Testing/R001/sub-r001s004/ses-1/anat/{T1w}   (no mask)

    Subjects are dealt round-robin to up to three cohorts; Testing subjects
    come from the same cohorts with other subject numbers, as in ATLAS. Used to
    build fake archives that test the real-archive pipeline.

    Parameters
    ----------
    root : path
        Folder that receives ``ATLAS_2``.
    n_subjects : int
        Labelled subjects (``Training``).
    n_unlabelled : int
        Unlabelled subjects (``Testing``).
    seed : int
    downsample : int

    Returns
    -------
    Path
        ``<root>/ATLAS_2``.
    """
    anatomy = load_anatomy(downsample)
    release = Path(root) / "ATLAS_2"
    n_total = n_subjects + n_unlabelled
    n_cohorts = max(1, min(3, n_total))
    profiles = make_cohort_profiles(n_cohorts, seed)
    next_number = [1] * n_cohorts
    for index in range(n_total):
        position = index % n_cohorts
        subject_id = "sub-" + subject_label(position + 1, next_number[position])
        next_number[position] += 1
        labelled = index < n_subjects
        split_dir = release / ("Training" if labelled else "Testing")
        subject = make_subject(subject_seed(seed, index), profiles[position], anatomy)
        write_subject(split_dir, subject_id, subject, with_mask=labelled)
    return release
