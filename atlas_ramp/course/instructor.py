"""Build a course's private and public data from the labelled ATLAS subjects.

An instructor running the challenge on a RAMP server needs two data folders with
the same layout (``train/`` and ``test/``, ATLAS names inside):

* the **private** data, on the server only: all labelled subjects, split into
  ``train`` (what submissions are trained on) and ``test`` (the private test set
  that ranks them);
* the **public** data, for students: a subset of the private ``train`` only,
  itself split into ``train`` and ``test`` for local ``ramp-test``. No private
  test subject may ever be in it.

Every split is seeded and cohort-stratified (:func:`~atlas_ramp.splits.
stratified_holdout`), so the same command always gives the same folders. Files are
hard-linked where the file system allows (no extra space), else copied. Both
folders are built beside their final place and moved there by renames at the
end, as :func:`atlas_ramp.archive.install_atlas` does.

On a RAMP server (ramp-board)
-----------------------------
ramp-board knows an event by two folders: the kit, ``<ramp-kits>/<problem>``
(``problem.py``, ``submissions/``, the notebook), and the data,
``<ramp-data>/<problem>``, whose ``data/`` holds the private data.
``ramp setup deploy-event`` zips the kit folder and ramp-frontend serves that zip
**to anyone, without login**: the kit folder must hold no data at all, neither
the private nor the public one. So write the two folders outside the deployment,
then let ``atlas-ramp server deploy --private-data`` place the private
one in ``ramp-data`` (it refuses a kit folder holding any NIfTI file)::

    atlas-ramp instructor --source data_full \\
        --private course/private --public course/public --seed 0
    atlas-ramp server deploy --deployment-dir /srv/ramp \\
        --event atlas_stroke_course --title "..." --private-data course/private

The server trains on the private ``train`` and ranks on the private ``test``.
Give ``course/public`` to students separately (a course drive, a signed
download), once each has signed the ATLAS data use agreement; they put its
``train`` and ``test`` in their kit's ``data/`` folder. Never publish it, never
put it in the kit folder, a repository or the starting-kit zip.

``--source`` is a folder of labelled subjects: the output of
``python download_data.py --atlas`` (its ``train`` and ``test`` are pooled, its
``unlabelled`` ignored), an ``ATLAS_2`` or ``ATLAS_2/Training`` folder, or any
folder :func:`~atlas_ramp.bids.find_subjects` reads.

Outputs, besides the splits (each with a ``dataset_description.json``):
``split_manifest.tsv`` (``subject, cohort, split``) in both folders, and, in the
private folder only, ``instructor_manifest.tsv``: ``subject, cohort,
private_split, public_split, file, sha256`` for every file.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from .._io import (
    file_sha256,
    link_or_copy,
    staging_folder,
    swap_into_place,
    write_tsv,
)
from ..archive.release import write_split_description, write_split_manifest
from ..bids import DataError, Subject, anat_dir, find_subjects
from ..splits import stratified_holdout

PRIVATE_TEST_FRACTION = 0.2
PUBLIC_FRACTION = 0.5
PUBLIC_TEST_FRACTION = 0.2
INSTRUCTOR_MANIFEST = "instructor_manifest.tsv"
INSTRUCTOR_COLUMNS = (
    "subject",
    "cohort",
    "private_split",
    "public_split",
    "file",
    "sha256",
)
PUBLIC_ENTRIES = ("train", "test", "split_manifest.tsv")
PRIVATE_ENTRIES = (*PUBLIC_ENTRIES, INSTRUCTOR_MANIFEST)


@dataclass(frozen=True)
class CourseSplit:
    """Who goes where. All lists hold sorted subject IDs.

    Attributes
    ----------
    private_train, private_test : list of str
        The server's data: every labelled subject, once.
    public_train, public_test : list of str
        The students' data: a subset of ``private_train``.
    cohorts : dict
        The cohort of each subject.
    """

    private_train: list[str]
    private_test: list[str]
    public_train: list[str]
    public_test: list[str]
    cohorts: dict[str, str]

    def private_split(self, subject_id: str) -> str:
        return "test" if subject_id in self.private_test else "train"

    def public_split(self, subject_id: str) -> str:
        """``train``, ``test``, or ``""`` for a subject kept off the public data."""
        if subject_id in self.public_train:
            return "train"
        return "test" if subject_id in self.public_test else ""


def _check_fraction(value: float, option: str, allow_one: bool = False) -> None:
    if not (0 < value < 1 or (allow_one and value == 1)):
        interval = "(0, 1]" if allow_one else "(0, 1)"
        raise DataError(f"{option} must be in {interval}, got {value}.")


def split_course(
    subject_ids: list[str],
    cohorts: list[str],
    *,
    seed: int = 0,
    private_test_fraction: float = PRIVATE_TEST_FRACTION,
    public_fraction: float = PUBLIC_FRACTION,
    public_test_fraction: float = PUBLIC_TEST_FRACTION,
) -> CourseSplit:
    """Split labelled subjects into private and public train/test sets.

    Parameters
    ----------
    subject_ids, cohorts : list of str
        The labelled subjects and their cohorts.
    seed : int
        The same seed and subjects always give the same split.
    private_test_fraction : float
        Share of all subjects in the private test set.
    public_fraction : float
        Share of the private train set given to students (1 gives all of it).
        Every cohort of the private train keeps students' subjects.
    public_test_fraction : float
        Share of the public subjects in the public ``test``.

    Returns
    -------
    CourseSplit
    """
    _check_fraction(private_test_fraction, "--private-test-fraction")
    _check_fraction(public_fraction, "--public-fraction", allow_one=True)
    _check_fraction(public_test_fraction, "--public-test-fraction")
    cohort_of = dict(zip(subject_ids, cohorts, strict=True))
    private_train, private_test = stratified_holdout(
        subject_ids, cohorts, private_test_fraction, seed
    )
    public = private_train
    if public_fraction < 1:
        # The "train" side of a hold-out keeps every cohort: students see them all.
        public, _ = stratified_holdout(
            private_train,
            [cohort_of[s] for s in private_train],
            1 - public_fraction,
            seed,
        )
    public_train, public_test = stratified_holdout(
        public, [cohort_of[s] for s in public], public_test_fraction, seed
    )
    for name, part in (
        ("private train", private_train),
        ("private test", private_test),
        ("public train", public_train),
        ("public test", public_test),
    ):
        if not part:
            raise DataError(
                f"The {name} set is empty with {len(subject_ids)} subjects: use more "
                "subjects or change the fractions."
            )
    return CourseSplit(
        private_train, private_test, public_train, public_test, cohort_of
    )


def labelled_subjects(source: Path | str) -> list[Subject]:
    """The labelled subjects of a source folder.

    ``source/train`` and ``source/test`` are pooled when they exist (the output
    of ``download_data.py``), else ``source/Training`` (an ``ATLAS_2`` folder),
    else ``source`` itself.

    Raises
    ------
    DataError
        A subject without a lesion mask, or one subject in two places.
    """
    source = Path(source)
    roots = [source / name for name in ("train", "test") if (source / name).is_dir()]
    if not roots:
        roots = [source / "Training"] if (source / "Training").is_dir() else [source]
    subjects, seen = [], {}
    for root in roots:
        for subject in find_subjects(root):
            if subject.mask_path is None:
                raise DataError(
                    f"{subject.t1w_path} has no lesion mask. Course data needs "
                    "labelled subjects: point --source at the folder made by "
                    "`download_data.py --atlas` or at ATLAS_2/Training."
                )
            if subject.subject_id in seen:
                raise DataError(
                    f"{subject.subject_id} is both in {seen[subject.subject_id]} and "
                    f"in {subject.t1w_path}. Keep one of them."
                )
            seen[subject.subject_id] = subject.t1w_path
            subjects.append(subject)
    return sorted(subjects, key=lambda subject: subject.subject_id)


def _subject_files(subject: Subject) -> list[Path]:
    return [subject.t1w_path] + ([subject.mask_path] if subject.mask_path else [])


def verify_no_leak(private_dir: Path | str, public_dir: Path | str) -> None:
    """Check that no private test subject is in the public data.

    Compares subject IDs, and T1w images by content (SHA-256), so a private test
    image renamed into the public data is caught too.

    Raises
    ------
    DataError
        Naming the leaked subjects or files.
    """
    private_test = find_subjects(Path(private_dir) / "test")
    public = [
        subject
        for split in ("train", "test")
        if (Path(public_dir) / split).is_dir()
        for subject in find_subjects(Path(public_dir) / split)
    ]
    leaked = sorted(
        {s.subject_id for s in private_test} & {s.subject_id for s in public}
    )
    if leaked:
        raise DataError(
            f"{len(leaked)} private test subjects are in the public data {public_dir} "
            f"({', '.join(leaked[:5])}{', ...' if len(leaked) > 5 else ''}). Do not "
            "publish it: rebuild it with `atlas-ramp instructor`."
        )
    private_images = {file_sha256(s.t1w_path): s.t1w_path for s in private_test}
    for subject in public:
        twin = private_images.get(file_sha256(subject.t1w_path))
        if twin is not None:
            raise DataError(
                f"{subject.t1w_path} has the same content as the private test image "
                f"{twin}. Do not publish {public_dir}: rebuild it with "
                "`atlas-ramp instructor`."
            )


def _check_folders(source: Path, private: Path, public: Path, force: bool) -> None:
    folders = {"--source": source, "--private": private, "--public": public}
    for (name_a, a), (name_b, b) in itertools.combinations(folders.items(), 2):
        if a == b or a in b.parents or b in a.parents:
            raise DataError(
                f"{name_a} {a} and {name_b} {b} overlap: use separate folders."
            )
    for folder in (private, public):
        existing = [name for name in ("train", "test") if (folder / name).exists()]
        if existing and not force:
            raise DataError(
                f"{folder} already holds {', '.join(existing)}. Pass --force to "
                "replace it: the current data stays untouched until the new folders "
                "are complete."
            )


def build_course_data(
    source: Path | str,
    private_dir: Path | str,
    public_dir: Path | str,
    *,
    seed: int = 0,
    private_test_fraction: float = PRIVATE_TEST_FRACTION,
    public_fraction: float = PUBLIC_FRACTION,
    public_test_fraction: float = PUBLIC_TEST_FRACTION,
    force: bool = False,
    link: bool = True,
) -> CourseSplit:
    """Write the private and public data of a course (see the module's notes).

    Parameters
    ----------
    source : path
        Labelled subjects (see :func:`labelled_subjects`).
    private_dir : path
        The server's data folder (``atlas-ramp server deploy
        --private-data`` places it in ``<ramp-data>/<problem>/data``).
    public_dir : path
        The students' data folder, handed out separately under the data use
        agreement; never inside ``<ramp-kits>``, which ramp-frontend serves.
    seed, private_test_fraction, public_fraction, public_test_fraction
        See :func:`split_course`.
    force : bool
        Replace existing ``train``/``test`` folders (once the new ones are ready).
    link : bool
        Hard-link files where possible (else, and when False, copy them).

    Returns
    -------
    CourseSplit
        Who went where.

    Raises
    ------
    DataError
        Bad source, overlapping folders, existing data without ``force``, a leak
        found by :func:`verify_no_leak`, or an interruption (nothing is changed).
    """
    source, private, public = (
        Path(folder).resolve() for folder in (source, private_dir, public_dir)
    )
    _check_folders(source, private, public, force)
    subjects = labelled_subjects(source)
    split = split_course(
        [s.subject_id for s in subjects],
        [s.cohort for s in subjects],
        seed=seed,
        private_test_fraction=private_test_fraction,
        public_fraction=public_fraction,
        public_test_fraction=public_test_fraction,
    )
    stages = []
    try:
        for folder in (private, public):
            folder.parent.mkdir(parents=True, exist_ok=True)
            prefix = f".{folder.name}.course-"
            stages.append(staging_folder(folder.parent, prefix))
        new_private, new_public = (stage / "new" for stage in stages)
        manifest = _place_files(subjects, split, new_private, new_public, link)
        write_tsv(new_private / INSTRUCTOR_MANIFEST, INSTRUCTOR_COLUMNS, manifest)
        _describe(new_private, new_public, split, seed, source)
        verify_no_leak(new_private, new_public)
        swap_into_place(new_private, private, PRIVATE_ENTRIES, stages[0] / "old")
        swap_into_place(new_public, public, PUBLIC_ENTRIES, stages[1] / "old")
    except KeyboardInterrupt as interrupt:
        raise DataError(
            f"Interrupted: {private} and {public} are as they were. Run the command "
            "again."
        ) from interrupt
    finally:
        for stage in stages:
            shutil.rmtree(stage, ignore_errors=True)
    return split


def _place_files(
    subjects: list[Subject],
    split: CourseSplit,
    new_private: Path,
    new_public: Path,
    link: bool,
) -> list[list[str]]:
    """Link or copy every file where it goes; return the instructor manifest."""
    rows = []
    for subject in subjects:
        private_split = split.private_split(subject.subject_id)
        public_split = split.public_split(subject.subject_id)
        destinations = [new_private / private_split]
        if public_split:
            destinations.append(new_public / public_split)
        for path in _subject_files(subject):
            for split_dir in destinations:
                folder = anat_dir(split_dir, subject.subject_id, subject.session)
                link_or_copy(path, folder / path.name, link)
            row = [subject.subject_id, subject.cohort, private_split, public_split]
            rows.append([*row, path.name, file_sha256(path)])
    return rows


def _describe(
    new_private: Path, new_public: Path, split: CourseSplit, seed: int, source: Path
) -> None:
    """Write the split manifests and a dataset_description.json per split."""
    how = f"cohort-stratified, seeded (seed={seed}) by atlas_ramp.course.instructor"
    private_parts = {"train": split.private_train, "test": split.private_test}
    public_parts = {"train": split.public_train, "test": split.public_test}
    for root, kind, parts in (
        (new_private, "private", private_parts),
        (new_public, "public", public_parts),
    ):
        rows = []
        for part, subject_ids in parts.items():
            rows += [(s, split.cohorts[s], part) for s in subject_ids]
            write_split_description(
                root / part,
                f"ATLAS R2.0, {kind} {part} split",
                f"The {kind} {part} split of a course ({how}).",
                source.name,
            )
        write_split_manifest(root / "split_manifest.tsv", rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atlas-ramp instructor",
        description=(
            "Build a course's private data (server) and public data (students) from "
            "the labelled ATLAS subjects; see the module's docstring for the "
            "RAMP-board layout."
        ),
    )
    parser.add_argument("--source", type=Path, required=True, help="labelled subjects")
    parser.add_argument(
        "--private",
        type=Path,
        required=True,
        help="the server's data (then: atlas-ramp server deploy --private-data)",
    )
    parser.add_argument(
        "--public",
        type=Path,
        required=True,
        help="the students' data, handed out under the data use agreement; never "
        "inside ramp-kits/, which ramp-frontend serves to anyone",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--private-test-fraction",
        type=float,
        default=PRIVATE_TEST_FRACTION,
        help="share of subjects in the private test (default: %(default)s)",
    )
    parser.add_argument(
        "--public-fraction",
        type=float,
        default=PUBLIC_FRACTION,
        help="share of the private train given to students (default: %(default)s)",
    )
    parser.add_argument(
        "--public-test-fraction",
        type=float,
        default=PUBLIC_TEST_FRACTION,
        help="share of public subjects in the public test (default: %(default)s)",
    )
    parser.add_argument(
        "--copy", action="store_true", help="copy files instead of hard-linking them"
    )
    parser.add_argument(
        "--force", action="store_true", help="replace existing train/test folders"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        split = build_course_data(
            args.source,
            args.private,
            args.public,
            seed=args.seed,
            private_test_fraction=args.private_test_fraction,
            public_fraction=args.public_fraction,
            public_test_fraction=args.public_test_fraction,
            force=args.force,
            link=not args.copy,
        )
    except (DataError, OSError) as error:
        print(f"atlas-ramp instructor: error: {error}", file=sys.stderr)
        return 1
    print(
        f"Private data in {args.private}: {len(split.private_train)} train, "
        f"{len(split.private_test)} test. Public data in {args.public}: "
        f"{len(split.public_train)} train, {len(split.public_test)} test."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
