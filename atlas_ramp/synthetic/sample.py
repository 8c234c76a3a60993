"""A whole sample: who the subjects are, and the atomic, resumable build.

:func:`plan_subjects` spreads subjects over cohorts of unequal sizes and splits
them into train and test; :func:`plan_generalizability` adds subjects of unseen
cohorts; :func:`build_sample` generates them all (in worker processes for
full-size volumes) and writes the splits in the ATLAS R2.0 layout.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .._io import staging_folder, swap_into_place, write_json
from ..bids import DataError, cohort_of, find_subjects, subject_label
from ..splits import stratified_holdout
from .anatomy import check_downsample, load_anatomy
from .files import (
    GENERATOR_NAME,
    GENERATOR_VERSION,
    participant_row,
    write_participants,
    write_split_description,
    write_subject,
)
from .generalizability import (
    N_GENERALIZABILITY,
    UNSEEN_VARIATION,
    make_unseen_cohort_profiles,
    n_unseen_cohorts,
)
from .scanners import make_cohort_profiles
from .streams import LAYOUT_STREAM, UNSEEN_LAYOUT_STREAM, subject_seed
from .subject import make_subject
from .workers import default_jobs

#: The splits a sample holds (``generalizability`` only when it has subjects).
SPLITS = ("train", "test", "generalizability")
COMPLETION_MARKER = ".complete"


@dataclass(frozen=True)
class SubjectRecord:
    """Who a subject of a sample is: ID, cohort, generation index and split."""

    subject_id: str
    cohort: str
    index: int
    split: str


def _cohort_sizes(n_total: int, n_cohorts: int, rng) -> np.ndarray:
    """Unequal cohort sizes adding up to ``n_total``, at least 2 each if possible."""
    minimum = 2 if n_total >= 2 * n_cohorts else 1
    weights = rng.gamma(1.5, size=n_cohorts) + 0.3
    extra = rng.multinomial(n_total - minimum * n_cohorts, weights / weights.sum())
    return minimum + extra


def _subject_ids(sizes, first_cohort: int = 1) -> list[str]:
    """ATLAS IDs of cohorts of these sizes, subjects numbered within a cohort."""
    return [
        "sub-" + subject_label(cohort_number, subject_number)
        for cohort_number, size in enumerate(sizes, start=first_cohort)
        for subject_number in range(1, size + 1)
    ]


def plan_subjects(
    n_train: int, n_test: int, n_cohorts: int, seed: int = 0
) -> list[SubjectRecord]:
    """Subjects of a sample: IDs, cohorts and a cohort-stratified train/test split.

    ``n_train + n_test`` subjects are spread over cohorts of unequal sizes, then
    split with :func:`atlas_ramp.splits.stratified_holdout`; when its rounding
    misses ``n_test`` by a few subjects, they are moved between the sides from
    the cohorts that have the most, so the counts are exact.

    Returns
    -------
    list of SubjectRecord
        In generation order (cohort by cohort); ``index`` is the subject's
        number in :func:`~atlas_ramp.synthetic.subject_seed`.
    """
    n_total = n_train + n_test
    if n_train < 1 or n_test < 0:
        raise ValueError(f"Need n_train >= 1 and n_test >= 0, got {n_train}, {n_test}.")
    if not 1 <= n_cohorts <= n_total:
        raise ValueError(
            f"n_cohorts must be between 1 and the number of subjects ({n_total}), "
            f"got {n_cohorts}."
        )
    if n_cohorts > 999:
        raise ValueError("ATLAS names allow at most 999 cohorts.")
    rng = np.random.default_rng([int(seed), LAYOUT_STREAM])
    ids = _subject_ids(_cohort_sizes(n_total, n_cohorts, rng))
    cohorts = [cohort_of(subject_id) for subject_id in ids]
    test = set()
    if n_test > 0:
        _, held_out = stratified_holdout(ids, cohorts, n_test / n_total, seed=seed)
        test = set(held_out)
    cohort_of_id = dict(zip(ids, cohorts, strict=True))
    while len(test) != n_test:
        moving_to_test = len(test) < n_test
        pool = [s for s in ids if (s in test) != moving_to_test]
        counts = {}
        for subject in pool:
            counts[cohort_of_id[subject]] = counts.get(cohort_of_id[subject], 0) + 1
        fullest = max(sorted(counts), key=counts.get)
        candidates = [s for s in pool if cohort_of_id[s] == fullest]
        chosen = candidates[int(rng.integers(len(candidates)))]
        if moving_to_test:
            test.add(chosen)
        else:
            test.remove(chosen)
    return [
        SubjectRecord(s, c, index, "test" if s in test else "train")
        for index, (s, c) in enumerate(zip(ids, cohorts, strict=True))
    ]


def plan_generalizability(
    n_subjects: int, first_cohort: int, seed: int = 0
) -> list[SubjectRecord]:
    """Subjects of the generalizability split, from cohorts of their own.

    Parameters
    ----------
    n_subjects : int
        Number of subjects (0 for none).
    first_cohort : int
        Number of the first unseen cohort: one more than the train/test
        cohorts, so that no cohort is shared.
    seed : int
        Sample seed (the split has its own streams).

    Returns
    -------
    list of SubjectRecord
        Split ``generalizability``; ``index`` numbers them from 0 (their own
        seeds: :func:`~atlas_ramp.synthetic.subject_seed` with
        ``generalizability=True``).
    """
    if n_subjects < 0:
        raise ValueError(f"Need n_generalizability >= 0, got {n_subjects}.")
    if n_subjects == 0:
        return []
    n_cohorts = n_unseen_cohorts(n_subjects)
    if first_cohort + n_cohorts - 1 > 999:
        raise ValueError("ATLAS names allow at most 999 cohorts.")
    rng = np.random.default_rng([int(seed), UNSEEN_LAYOUT_STREAM])
    ids = _subject_ids(_cohort_sizes(n_subjects, n_cohorts, rng), first_cohort)
    return [
        SubjectRecord(subject_id, cohort_of(subject_id), index, "generalizability")
        for index, subject_id in enumerate(ids)
    ]


def _generate_one(task) -> dict:
    """Generate and write one subject; returns its participants.tsv row."""
    record, profile, seed, downsample, split_dir = task
    unseen = record.split == "generalizability"
    subject = make_subject(
        subject_seed(seed, record.index, generalizability=unseen),
        profile,
        load_anatomy(downsample),
        variation=UNSEEN_VARIATION if unseen else None,
    )
    write_subject(split_dir, record.subject_id, subject)
    return participant_row(record.subject_id, record.cohort, subject)


def _read_marker(output_dir: Path) -> dict | None:
    try:
        return json.loads((output_dir / COMPLETION_MARKER).read_text())
    except (OSError, ValueError):
        return None


def _is_complete(split_dir: Path, n_subjects: int) -> bool:
    """Whether a split has every subject, each with its mask.

    Asks :func:`~atlas_ramp.bids.find_subjects`, the discovery that
    ``ramp-test`` uses, so the builder never calls complete a split that
    ``ramp-test`` cannot read in full (linked folders included).
    """
    try:
        subjects = find_subjects(split_dir)
    except DataError:
        return n_subjects == 0  # no image at all (or unreadable)
    return len(subjects) == n_subjects and all(s.mask_path for s in subjects)


def _has_files(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def _finish_interrupted_publishing(output_dir: Path) -> None:
    """Finish moving in a complete staged sample whose move was cut short.

    A staged folder that holds a completion marker is a complete sample: its
    move into ``output_dir`` (:func:`_publish`) had begun when the process was
    killed (an exception or Ctrl-C puts everything back, so only a kill, a
    power cut... leaves one). What it still holds is new; what stands in
    ``output_dir`` under those names is old and goes to a new trash folder.
    """
    for staged in sorted(output_dir.glob(".sample.partial-*")):
        parameters = _read_marker(staged)
        if parameters is None:
            continue  # an unfinished build: removed with the other leftovers
        new_splits = _splits_of(parameters)
        entries = [
            entry
            for entry in (COMPLETION_MARKER, *SPLITS)
            if os.path.lexists(staged / entry) or entry not in new_splits
        ]
        trash = staging_folder(output_dir, ".sample.old-")
        swap_into_place(staged, output_dir, entries, trash / "old")
        # The killed build's own trash holds the old entries it had moved out.
        killed_trash = output_dir / f".sample.old-{_token(staged)}"
        for folder in (staged, trash, killed_trash):
            shutil.rmtree(folder, ignore_errors=True)
        print(
            f"Finished moving into {output_dir} the synthetic sample that an "
            f"interrupted build had completed ({staged.name})."
        )


def _token(staged: Path) -> str:
    """The unique part of a staging folder's name, shared by its trash folder."""
    return staged.name.rsplit("-", 1)[-1]


def _remove_leftovers(output_dir: Path) -> None:
    """Remove temporary folders that an interrupted run left behind."""
    for name in (*SPLITS, "sample"):
        for pattern in (f".{name}.partial-*", f".{name}.old-*"):
            for leftover in output_dir.glob(pattern):
                shutil.rmtree(leftover, ignore_errors=True)


def _splits_of(parameters: dict) -> list[str]:
    """The splits a sample with these parameters has, on disk."""
    # Train and test are always written (test may be empty), generalizability
    # only when it has subjects.
    return [
        split
        for split in SPLITS
        if split != "generalizability" or parameters.get("n_generalizability")
    ]


def _publish(staged: Path, output_dir: Path, trash: Path) -> None:
    """Move a complete staged sample, its marker included, into ``output_dir``.

    Renames on one file system: the old marker goes first, the new one comes
    last (:func:`~atlas_ramp._io.swap_into_place`), so placing the new marker
    is the one step that publishes the sample. An exception (Ctrl-C included)
    puts the old sample back; after a kill, the next build finishes the move
    (:func:`_finish_interrupted_publishing`).
    """
    swap_into_place(staged, output_dir, (COMPLETION_MARKER, *SPLITS), trash)


def _generate(tasks, n_jobs: int, downsample: int, progress: bool) -> list[dict]:
    """Run :func:`_generate_one` on every task, in order; returns the rows."""
    rows = []
    with tqdm(
        total=len(tasks),
        desc=f"Synthetic sample ({downsample} mm)",
        unit="subject",
        disable=not progress,
    ) as bar:
        if n_jobs > 1:
            import multiprocessing

            load_anatomy(downsample)  # once, shared by forked workers
            with multiprocessing.Pool(n_jobs) as pool:
                for row in pool.imap(_generate_one, tasks):
                    rows.append(row)
                    bar.update()
        else:
            for task in tasks:
                rows.append(_generate_one(task))
                bar.update()
    return rows


def build_sample(
    output_dir,
    n_train: int = 40,
    n_test: int = 16,
    n_cohorts: int = 6,
    seed: int = 0,
    downsample: int = 1,
    force: bool = False,
    progress: bool = True,
    n_jobs: int | None = None,
    n_generalizability: int = N_GENERALIZABILITY,
) -> Path:
    """Build the synthetic ATLAS-like sample in ``output_dir/train``, ``/test``...

    Layout and names are those of ATLAS R2.0::

        <output_dir>/train/R001/sub-r001s001/ses-1/anat/
            sub-r001s001_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz
            sub-r001s001_ses-1_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask.nii.gz

    plus ``dataset_description.json`` and ``participants.tsv`` in each split.
    ``test`` is a cohort-stratified hold-out of exactly ``n_test`` subjects;
    ``generalizability`` (labelled, same layout) holds subjects of cohorts
    that appear in neither, scanned and varying outside the training ranges
    (:mod:`~atlas_ramp.synthetic.generalizability`). Train and test do not
    depend on it.

    The build is safe to interrupt: the splits are generated in a hidden
    temporary folder (``.sample.partial-*``), its completion marker
    (``.complete``) written last, and the whole is renamed into place only
    then, the marker last (:func:`_publish`). Until then, the previous data
    stay untouched; a build killed while renaming is finished by the next one.
    When the marker shows a complete sample built with the same parameters,
    nothing is done.

    Parameters
    ----------
    output_dir : path
        Data folder (``data``).
    n_train, n_test : int
        Number of training and test subjects.
    n_cohorts : int
        Number of cohorts (sites), ``R001`` ... Cohorts have unequal sizes and
        their own scanner profile.
    seed : int
        Same seed, same data (byte for byte).
    downsample : int
        Voxel size in mm, 1 (the ATLAS grid, default) to 8. Tests use 4.
    force : bool
        Rebuild even if a complete sample is there, and replace data that
        this generator did not write.
    progress : bool
        Show a progress bar.
    n_jobs : int, optional
        Worker processes; by default :func:`default_jobs` (one per usable core
        for full-size volumes, as memory allows). Results do not depend on it.
    n_generalizability : int
        Subjects of the generalizability split (16 by default; 0 for none).

    Returns
    -------
    Path
        ``output_dir``.

    Raises
    ------
    DataError
        ``output_dir`` holds data this generator did not write (for example
        the real ATLAS data) and ``force`` is False.
    """
    downsample = check_downsample(downsample)
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    if n_jobs is not None and (int(n_jobs) != n_jobs or n_jobs < 1):
        raise ValueError(f"n_jobs must be a positive integer, got {n_jobs!r}.")
    output_dir = Path(output_dir)
    parameters = {
        "generator": GENERATOR_NAME,
        "version": GENERATOR_VERSION,
        "n_train": int(n_train),
        "n_test": int(n_test),
        "n_cohorts": int(n_cohorts),
        "seed": int(seed),
        "downsample": downsample,
        "n_generalizability": int(n_generalizability),
    }
    # These check the counts.
    records = plan_subjects(n_train, n_test, n_cohorts, seed)
    records += plan_generalizability(n_generalizability, n_cohorts + 1, seed)
    described = (
        f"{n_train} train + {n_test} test subjects, {n_cohorts} cohorts; "
        f"{n_generalizability} generalizability subjects; seed {seed}, "
        f"{downsample} mm"
    )
    expected_counts = {
        "train": n_train,
        "test": n_test,
        "generalizability": n_generalizability,
    }
    splits = _splits_of(parameters)

    if output_dir.is_dir():
        _finish_interrupted_publishing(output_dir)
    marker = _read_marker(output_dir)
    ours = isinstance(marker, dict) and marker.get("generator") == GENERATOR_NAME
    if ours and marker == parameters and not force:
        counts_ok = all(
            _is_complete(output_dir / split, count)
            for split, count in expected_counts.items()
        )
        if counts_ok:
            print(
                f"Synthetic sample in {output_dir} is complete ({described}); "
                "skipping. Use --force to rebuild it."
            )
            return output_dir
        print(f"Synthetic sample in {output_dir} has missing files; rebuilding.")
    elif ours and not force:
        print(f"Synthetic sample in {output_dir} has other parameters; rebuilding.")
    elif not ours and not force:
        existing = [output_dir / s for s in SPLITS if _has_files(output_dir / s)]
        if existing:
            raise DataError(
                f"{existing[0]} already holds data that this generator did not "
                "write (no synthetic-sample marker). Use --force to replace it, or "
                "choose another --output folder."
            )

    output_dir.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(output_dir)
    profiles = {p.name: p for p in make_cohort_profiles(n_cohorts, seed)}
    n_unseen = n_unseen_cohorts(n_generalizability) if n_generalizability else 0
    unseen = make_unseen_cohort_profiles(n_unseen, seed, first_number=n_cohorts + 1)
    profiles.update({p.name: p for p in unseen})
    partial = staging_folder(output_dir, ".sample.partial-")
    trash = output_dir / f".sample.old-{_token(partial)}"
    published = False
    try:
        for split in splits:
            (partial / split).mkdir()
        tasks = [
            (record, profiles[record.cohort], seed, downsample, partial / record.split)
            for record in records
        ]
        n_jobs = default_jobs(len(tasks), downsample) if n_jobs is None else n_jobs
        rows = _generate(tasks, n_jobs, downsample, progress)
        for split in splits:
            write_split_description(partial / split, split, parameters)
            write_participants(
                partial / split,
                [
                    row
                    for row, record in zip(rows, records, strict=True)
                    if record.split == split
                ],
            )
        # Written last: the staged sample is complete, marker included.
        write_json(partial / COMPLETION_MARKER, parameters)
        _publish(partial, output_dir, trash)
        published = True
    finally:
        # Old entries still in the trash after a failure mean that putting
        # them back was itself cut short: keep both folders, the next build
        # finishes the move.
        if published or not _has_files(trash):
            shutil.rmtree(partial, ignore_errors=True)
            shutil.rmtree(trash, ignore_errors=True)
    print(f"Synthetic sample written to {output_dir} ({described}).")
    return output_dir
