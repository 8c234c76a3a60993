"""What a course event serves, and the checks that keep ATLAS data out of it.

A RAMP event on ramp-board (see :mod:`atlas_ramp.course.server`) serves two things,
from two folders of the deployment:

* the **kit folder**, ``ramp-kits/atlas_stroke/``: the kit's code
  (``problem.py``, ``download_data.py``, the ``atlas_ramp`` package), the
  baselines in ``submissions/`` and the starting-kit notebook, under the name
  ramp-board wants (``atlas_stroke_starting_kit.ipynb``, a copy of
  ``starting_kit.ipynb``), and a ``README.md`` for students (a copy of
  ``atlas_ramp/course/student_readme.md``: no data here, what to download under the
  data use agreement, how to test and submit). ramp-board zips this folder
  (``events_archived/<event>.zip``) and its website offers the zip to anyone,
  without login: it is what students download to start;
* the **course data**, ``ramp-data/atlas_stroke/data/{train,test}``: labelled
  subjects that stay on the server. Submissions are trained on ``train`` and
  ranked on ``test``; students never see them.

Why no image may be in the kit folder or its zip: the ATLAS data use agreement
lets only people who signed it receive ATLAS images, labelled or public. A
NIfTI file left in the kit folder, or a link to a data folder, would end up in
a zip that anyone can download. So :func:`build_kit` copies the code only
(never ``data/`` nor ``*.nii*``), and :func:`check_kit_has_no_data` and
:func:`check_zip_has_no_data` refuse, with a message saying what to remove, any
kit folder or zip that holds one anyway. Students get the public data
separately (``download_data.py``, or the instructor's public folder).

:func:`check_course_data` checks the other side: the server needs a lesion mask
for every subject, since it trains and grades on masks. Both folders are built
under temporary names and renamed into place, so that a failed build leaves
nothing half-written.

Nothing here imports ramp-board: these checks run, and are tested, anywhere.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

from .._io import link_or_copy, staging_folder
from ..bids import DataError, find_subjects

# ramp-board's name of the problem: the kit folder, the data folder and every
# event name are built from it.
PROBLEM_NAME = "atlas_stroke"
NOTEBOOK = f"{PROBLEM_NAME}_starting_kit.ipynb"
# What the served kit folder holds, copied from the repository; the patterns
# below are never copied (outputs, caches and, above all, data).
KIT_FILES = ("problem.py", "download_data.py", "requirements.txt", "pyproject.toml")
KIT_FOLDERS = ("atlas_ramp", "submissions")
COURSE_README = "student_readme.md"  # beside this module; the kit's README.md
_KIT_IGNORE = shutil.ignore_patterns(
    "training_output",
    "__pycache__",
    "*.egg-info",
    ".cache",
    "data",
    "*.nii*",
    COURSE_README,
)
REPO = Path(__file__).resolve().parents[2]


# Raised by these checks and by the deployment itself (atlas_ramp.course.server,
# atlas_ramp.course.ramp_worker); defined here, which both import, so that there is one
# class and no circular import.
class DeployError(ValueError):
    """A deployment that cannot go ahead; the message says what to do."""


def is_nifti(name: str) -> bool:
    """Whether a file name is a NIfTI image (``.nii`` or ``.nii.gz``)."""
    return name.lower().endswith((".nii", ".nii.gz"))


def check_kit_has_no_data(kit_dir: Path | str) -> None:
    """Refuse a kit folder that holds (or links to) a NIfTI image.

    Raises
    ------
    DeployError
        Naming the first NIfTI file or folder link found.
    """
    kit_dir = Path(kit_dir)
    for root, folders, files in os.walk(kit_dir, followlinks=True):
        for name in folders:
            if (Path(root) / name).is_symlink():
                raise DeployError(
                    f"{Path(root) / name} is a link to a folder inside the kit folder "
                    f"{kit_dir}, which ramp-frontend serves to anyone: remove it. "
                    "Data goes to ramp-data/, never to the kit."
                )
        for name in files:
            if is_nifti(name):
                raise DeployError(
                    f"{Path(root) / name} is an image inside the kit folder {kit_dir}, "
                    "which ramp-frontend serves to anyone without login. Under the "
                    "ATLAS data use agreement, remove it: students receive the public "
                    "data separately, the server's data lives in ramp-data/."
                )


def check_zip_has_no_data(archive: Path | str) -> None:
    """Refuse a starting-kit zip holding a NIfTI image (it is then deleted)."""
    with zipfile.ZipFile(archive) as zipped:
        leaked = [name for name in zipped.namelist() if is_nifti(name)]
    if leaked:
        Path(archive).unlink()
        raise DeployError(
            f"{archive} held {len(leaked)} NIfTI files ({leaked[0]}, ...); it has been "
            "deleted. Remove the images from the kit folder and deploy again."
        )


def check_course_data(data_dir: Path | str) -> dict[str, int]:
    """Check a server data folder: labelled subjects in ``train/`` and ``test/``.

    Returns
    -------
    dict
        The number of subjects of each split.

    Raises
    ------
    DataError
        A missing split, or a subject without a lesion mask.
    """
    data_dir = Path(data_dir)
    counts = {}
    for split in ("train", "test"):
        subjects = find_subjects(data_dir / split)
        unlabelled = [s for s in subjects if s.mask_path is None]
        if unlabelled:
            raise DataError(
                f"{unlabelled[0].t1w_path} has no lesion mask: the server trains and "
                "grades on masks. Pass the private folder written by `atlas-ramp "
                "instructor --private ...` (labelled train/ and test/)."
            )
        counts[split] = len(subjects)
    return counts


def build_kit(destination: Path, repo: Path = REPO) -> None:
    """Write the served kit folder (no data) at ``destination``, via a rename."""
    stage = staging_folder(destination.parent, ".kit-")
    try:
        kit = stage / destination.name
        kit.mkdir()
        for name in KIT_FILES:
            shutil.copy2(repo / name, kit / name)
        for name in KIT_FOLDERS:
            shutil.copytree(repo / name, kit / name, ignore=_KIT_IGNORE, symlinks=True)
        # ramp-board wants <problem>_starting_kit.ipynb; the student's file keeps
        # its own name in the repository.
        shutil.copy2(repo / "starting_kit.ipynb", kit / NOTEBOOK)
        shutil.copy2(repo / "atlas_ramp" / "course" / COURSE_README, kit / "README.md")
        check_kit_has_no_data(kit)
        os.rename(kit, destination)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _place_tree(source: Path, target: Path) -> None:
    """Hard-link (else copy) every file of ``source`` below ``target``."""
    for path in sorted(source.rglob("*")):
        if path.is_dir() or path.name.startswith(".") or ".cache" in path.parts:
            continue
        link_or_copy(path, target / path.relative_to(source))


def build_data(
    destination: Path,
    private_data: Path | None,
    synthetic: tuple[int, int] | None,
    seed: int = 0,
    downsample: int = 1,
    n_cohorts: int = 3,
) -> dict[str, int]:
    """Write ``ramp-data/<problem>/data`` (train and test), via a rename.

    Returns the labelled subjects of each split (:func:`check_course_data`).
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    stage = staging_folder(destination.parent, ".data-")
    try:
        data = stage / "data"
        if synthetic is not None:
            from ..synthetic import build_sample

            n_train, n_test = synthetic
            build_sample(
                data,
                n_train=n_train,
                n_test=n_test,
                n_cohorts=n_cohorts,
                seed=seed,
                downsample=downsample,
                progress=False,
            )
        else:
            for split in ("train", "test"):
                _place_tree(private_data / split, data / split)
        counts = check_course_data(data)
        os.rename(data, destination)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return counts
