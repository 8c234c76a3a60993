"""BIDS names of the ATLAS v2.0 release, and discovery of subjects on disk.

ATLAS R2.0 names every file with BIDS entities::

    sub-r001s001_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz
    sub-r001s001_ses-1_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask.nii.gz

The subject label ``r001s001`` encodes the cohort (``r001``, site R001) and the
subject within it. Discovery works from these names alone, so the same code finds
subjects in the release layout (``ATLAS_2/Training/R001/sub-.../ses-1/anat/``), in
a BIDS derivatives layout (``derivatives/ATLAS/sub-*/ses-*/anat/``) and in the
kit's own layout (``data/train/R001/sub-.../ses-1/anat/``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

SPACE = "MNI152NLin2009aSym"
SESSION = "1"
T1W_SUFFIX = "T1w"
MASK_ENTITIES = "label-L_desc-T1lesion"
MASK_SUFFIX = "mask"

_SUBJECT_RE = re.compile(r"^r(?P<cohort>\d+)s(?P<index>\d+)$")
_ENTITY_RE = re.compile(r"(?P<key>[a-zA-Z]+)-(?P<value>[a-zA-Z0-9]+)")


class DataError(ValueError):
    """Raised when data on disk does not look like an ATLAS split.

    The message always names the offending file or subject and says what to do.
    """


def subject_label(cohort: int, index: int) -> str:
    """Return the ATLAS subject label, e.g. ``r001s012``, without ``sub-``."""
    return f"r{cohort:03d}s{index:03d}"


def cohort_of(subject_id: str) -> str:
    """Return the cohort (site) of a subject, e.g. ``R001`` for ``sub-r001s012``.

    Parameters
    ----------
    subject_id : str
        ``sub-r001s012`` or ``r001s012``.
    """
    label = subject_id.removeprefix("sub-")
    match = _SUBJECT_RE.match(label)
    if match is None:
        raise DataError(
            f"Subject {subject_id!r} does not follow the ATLAS naming "
            "'sub-r<cohort>s<subject>' (e.g. sub-r001s001), so its cohort is unknown."
        )
    return f"R{int(match['cohort']):03d}"


def t1w_name(subject_id: str, session: str = SESSION, space: str = SPACE) -> str:
    """File name of a subject's T1-weighted image."""
    label = subject_id.removeprefix("sub-")
    return f"sub-{label}_ses-{session}_space-{space}_{T1W_SUFFIX}.nii.gz"


def mask_name(subject_id: str, session: str = SESSION, space: str = SPACE) -> str:
    """File name of a subject's lesion mask."""
    label = subject_id.removeprefix("sub-")
    return (
        f"sub-{label}_ses-{session}_space-{space}_{MASK_ENTITIES}_{MASK_SUFFIX}.nii.gz"
    )


def anat_dir(split_dir: Path | str, subject_id: str, session: str = SESSION) -> Path:
    """Folder holding a subject's files in the kit's (and the release's) layout.

    ``<split_dir>/R001/sub-r001s001/ses-1/anat``.
    """
    label = subject_id.removeprefix("sub-")
    return (
        Path(split_dir) / cohort_of(label) / f"sub-{label}" / f"ses-{session}" / "anat"
    )


def parse_entities(path: Path | str) -> dict[str, str]:
    """Parse the BIDS entities and the suffix of a NIfTI file name.

    Returns
    -------
    dict
        Entity keys (``sub``, ``ses``, ``space``, ``label``, ``desc``...) with
        their values, plus ``suffix`` (``T1w`` or ``mask``).
    """
    name = Path(path).name
    stem = name.removesuffix(".gz").removesuffix(".nii")
    *entity_parts, suffix = stem.split("_")
    entities = {}
    for part in entity_parts:
        match = _ENTITY_RE.fullmatch(part)
        if match is None:
            raise DataError(f"{path}: '{part}' is not a BIDS entity (key-value).")
        entities[match["key"]] = match["value"]
    entities["suffix"] = suffix
    return entities


@dataclass(frozen=True)
class Subject:
    """One subject of a split: where its files are and who it is.

    Attributes
    ----------
    subject_id : str
        ``sub-r001s001``.
    cohort : str
        ``R001``.
    session : str
        ``1`` for ATLAS.
    t1w_path : Path
        The T1-weighted image.
    mask_path : Path or None
        The lesion mask, None in an unlabelled split.
    """

    subject_id: str
    cohort: str
    session: str
    t1w_path: Path
    mask_path: Path | None


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def find_subjects(root: Path | str) -> list[Subject]:
    """Find all subjects below ``root`` by their BIDS file names.

    Parameters
    ----------
    root : path
        A split folder (``data/train``), an ``ATLAS_2/Training`` folder, a BIDS
        dataset root, or anything above them. Hidden folders (``.cache``) are
        skipped.

    Returns
    -------
    list of Subject
        Sorted by subject ID. Every subject has a mask, or none has (an
        unlabelled split).

    Raises
    ------
    DataError
        No T1w image under ``root``, a mask without its T1w image, two images for
        one subject, or a split where some subjects are labelled and others not.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"{root} does not exist. Build the synthetic sample with "
            "`python download_data.py`, or point to your ATLAS folder."
        )
    images: dict[tuple[str, str], Path] = {}
    masks: dict[tuple[str, str], Path] = {}
    for path in sorted(root.rglob("sub-*.nii.gz")):
        if _is_hidden(path, root):
            continue
        entities = parse_entities(path)
        key = (entities["sub"], entities.get("ses", SESSION))
        if entities["suffix"] == T1W_SUFFIX:
            target = images
        elif entities["suffix"] == MASK_SUFFIX and entities.get("desc") == ("T1lesion"):
            target = masks
        else:
            continue
        if key in target:
            raise DataError(
                f"Two files for subject sub-{key[0]} session {key[1]}: "
                f"{target[key]} and {path}. Keep one of them."
            )
        target[key] = path
    if not images:
        raise DataError(
            f"No T1w image (sub-*_T1w.nii.gz) found under {root}. Build the "
            "synthetic sample with `python download_data.py`, or check the path."
        )
    orphans = sorted(set(masks) - set(images))
    if orphans:
        sub, ses = orphans[0]
        raise DataError(
            f"Lesion mask {masks[(sub, ses)]} has no T1w image beside it "
            f"(expected {t1w_name(sub, ses)}). Restore the image or remove the mask."
        )
    labelled = [key for key in images if key in masks]
    if labelled and len(labelled) != len(images):
        missing = sorted(set(images) - set(masks))
        sub, ses = missing[0]
        raise DataError(
            f"{len(labelled)} of {len(images)} subjects under {root} have a lesion "
            f"mask, but sub-{sub} (image {images[(sub, ses)]}) has none. A split is "
            "either fully labelled or fully unlabelled: add the missing masks or "
            "move the unlabelled subjects to their own folder."
        )
    subjects = []
    for sub, ses in sorted(images):
        subjects.append(
            Subject(
                subject_id=f"sub-{sub}",
                cohort=cohort_of(sub),
                session=ses,
                t1w_path=images[(sub, ses)],
                mask_path=masks.get((sub, ses)),
            )
        )
    return subjects


def read_header(path: Path) -> nib.Nifti1Image:
    """Open a NIfTI file lazily (header only), with an error that names it."""
    try:
        return nib.load(str(path))
    except Exception as error:  # nibabel raises many types for bad files
        raise DataError(
            f"Cannot read {path}: {error}. The file is unreadable or not NIfTI; "
            "download or rebuild it (`python download_data.py --force`)."
        ) from error


def check_split(subjects: list[Subject]) -> tuple[tuple[int, int, int], np.ndarray]:
    """Check headers of a split: one shape, masks on their image's grid.

    Only headers are read, so this is cheap even for hundreds of subjects.

    Returns
    -------
    shape : tuple of int
        The common volume shape.
    affine : ndarray of shape (4, 4)
        The affine of the first subject (ATLAS images share the MNI grid).

    Raises
    ------
    DataError
        Naming the file whose shape or affine does not match.
    """
    shape = affine = None
    first = None
    for subject in subjects:
        image = read_header(subject.t1w_path)
        if len(image.shape) != 3:
            raise DataError(
                f"{subject.t1w_path} has shape {image.shape}; a 3D T1w volume is "
                "expected."
            )
        if shape is None:
            shape, affine, first = tuple(image.shape), image.affine, subject.t1w_path
        elif tuple(image.shape) != shape:
            raise DataError(
                f"{subject.t1w_path} has shape {tuple(image.shape)} but {first} has "
                f"{shape}: all volumes of a split must share the MNI grid. Resample "
                "or remove this subject."
            )
        if subject.mask_path is not None:
            mask = read_header(subject.mask_path)
            if tuple(mask.shape) != tuple(image.shape):
                raise DataError(
                    f"{subject.mask_path} has shape {tuple(mask.shape)} but its "
                    f"T1w image has {tuple(image.shape)}. The mask must be on the "
                    "image's grid."
                )
            if not np.allclose(mask.affine, image.affine, atol=1e-3):
                raise DataError(
                    f"{subject.mask_path} has a different affine than its T1w image "
                    f"{subject.t1w_path}. The mask must be on the image's grid."
                )
    return shape, np.asarray(affine)
