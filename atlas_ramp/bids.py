"""BIDS names of the ATLAS v2.0 release, and discovery of subjects on disk.

ATLAS R2.0 names every file with BIDS entities::

    sub-r001s001_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz
    sub-r001s001_ses-1_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask.nii.gz

The subject label ``r001s001`` encodes the cohort (``r001``, site R001) and the
subject within it. Discovery works from these names alone, so the same code finds
subjects in the release layout (``ATLAS_2/Training/R001/sub-.../ses-1/anat/``), in
a BIDS derivatives layout (``derivatives/ATLAS/sub-*/ses-*/anat/``) and in the
kit's own layout (``data/train/R001/sub-.../ses-1/anat/``).

Rules for data that is not exactly ATLAS-shaped (each has a test):

* **Pairing.** A lesion mask (``*_desc-T1lesion_mask``, any ``label``) belongs to
  the T1w image with the same ``sub``, ``ses`` and ``space`` entities. Only images
  in ``space-MNI152NLin2009aSym`` are used; others beside them (raw data, native
  space) are ignored. A subject that has no image in that space, or whose mask is
  in another space than its image, is refused with a message saying what was found.
* **Sessions.** Every session of a subject is an entry (its own image and mask);
  entries share the ``subject_id``, and the kit's cross-validation keeps all
  sessions of a subject on the same side (:mod:`atlas_ramp.splits`).
* **Links.** Linked folders (a split, cohort or subject folder on a shared drive)
  are followed, each real folder once (:func:`walk_files`).
* **Cohorts.** ATLAS names carry their cohort. For other names (``sub-001``), the
  cohort comes from the ``cohort`` column of a ``participants.tsv`` in the split
  folder (or below it); one value for every subject if the data come from one site.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import pandas as pd

SPACE = "MNI152NLin2009aSym"
SESSION = "1"
T1W_SUFFIX = "T1w"
MASK_ENTITIES = "label-L_desc-T1lesion"
MASK_SUFFIX = "mask"
MASK_DESC = "T1lesion"

_SUBJECT_RE = re.compile(r"^r(?P<cohort>\d+)s(?P<index>\d+)$")
_ENTITY_RE = re.compile(r"(?P<key>[a-zA-Z]+)-(?P<value>[a-zA-Z0-9]+)")


class DataError(ValueError):
    """Raised when data on disk does not look like an ATLAS split.

    The message always names the offending file or subject and says what to do.
    """


@contextlib.contextmanager
def data_errors_shown_first(command: str = "ramp-test"):
    """Print a :class:`DataError`'s message before the traceback that follows it.

    Under ``ramp-test`` a data error ends a traceback of some forty lines, its
    message on the last one. This prints the message as one paragraph on
    stderr, then lets the error go on as it was (the traceback is for whoever
    wants it).

    Examples
    --------
    >>> with data_errors_shown_first():  # doctest: +SKIP
    ...     X, y = load_split("data", "train")
    """
    try:
        yield
    except DataError as error:
        paragraph = textwrap.fill(
            f"{command}: the data cannot be used (not the submission's fault): {error}",
            width=88,
            break_long_words=False,  # file names stay whole, to copy
            break_on_hyphens=False,
        )
        print(f"\n{paragraph}\n", file=sys.stderr, flush=True)
        raise


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
            raise DataError(
                f"{path}: '{part}' is not a BIDS entity (key-value). Rename the "
                "file in BIDS form (sub-<label>_ses-<label>_space-<label>_T1w.nii.gz)"
                " or move it out of the data folder."
            )
        entities[match["key"]] = match["value"]
    entities["suffix"] = suffix
    return entities


@dataclass(frozen=True)
class Subject:
    """One entry of a split (a subject's session): where its files are, who it is.

    Attributes
    ----------
    subject_id : str
        ``sub-r001s001``; shared by the sessions of one subject.
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


def _is_nifti(path: Path) -> bool:
    """Whether the file name is that of a NIfTI volume (``.nii`` or ``.nii.gz``)."""
    return path.name.endswith((".nii", ".nii.gz"))


def walk_files(root: Path) -> Iterator[Path]:
    """Every file below ``root``, entering linked folders, each real folder once.

    Students and course servers often link data from a shared drive, a subject
    or a cohort folder at a time: those links are followed (``Path.rglob`` does
    not enter them before Python 3.13). A folder reached twice (two links to it,
    or a link back to a parent: a cycle) is listed once. Hidden folders
    (``.cache``) are skipped.

    Raises
    ------
    DataError
        A folder that cannot be listed, or a link to nothing that could have
        been a folder, an image or a table (the subjects behind it would be
        lost silently). A broken link to anything else (a README) is skipped.
    """

    def refuse(error: OSError):
        raise DataError(
            f"Cannot list {error.filename} ({error.strerror}): the subjects in it "
            "would be missed. Fix its permissions (or the link, if it is one), or "
            "move it out of the data folder."
        ) from error

    visited = set()
    for folder, subfolders, names in os.walk(root, onerror=refuse, followlinks=True):
        real = os.path.realpath(folder)
        if real in visited:
            subfolders.clear()
            continue
        visited.add(real)
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = Path(folder) / name
            if path.is_symlink() and not path.exists():
                if not _could_hold_subjects(name):
                    continue
                raise DataError(
                    f"{path} is a link to {os.readlink(path)}, which does not exist "
                    "(a shared drive not mounted, or data moved): the subjects "
                    "behind it would be missed. Mount the drive or fix the link, or "
                    "remove it."
                )
            yield path


def _could_hold_subjects(name: str) -> bool:
    """Whether a file or folder named ``name`` may hold subjects or their data."""
    # BIDS folders (sub-*, ses-*, anat, a cohort) carry no extension.
    return "." not in name or name.endswith((".nii", ".nii.gz", ".tsv"))


def _space_name(entities: dict) -> str:
    space = entities.get("space")
    return f"'{space}'" if space else "none (no space- entity: native or raw data)"


def _read_participant_cohorts(root: Path) -> dict[str, str]:
    """``participant_id -> cohort`` from the ``participants.tsv`` files under root."""
    cohorts: dict[str, str] = {}
    for table in walk_files(root):
        if table.name != "participants.tsv":
            continue
        try:
            rows = pd.read_csv(table, sep="\t", dtype=str)
        except Exception as error:  # pandas raises several types
            raise DataError(f"Cannot read {table}: {error}.") from error
        if not {"participant_id", "cohort"} <= set(rows.columns):
            continue
        pairs = zip(rows["participant_id"], rows["cohort"], strict=True)
        for participant, cohort in pairs:
            participant = f"sub-{str(participant).removeprefix('sub-')}"
            if participant in cohorts and cohorts[participant] != cohort:
                raise DataError(
                    f"{table} gives {participant} the cohort {cohort!r}, another "
                    f"participants.tsv gives {cohorts[participant]!r}: keep one."
                )
            cohorts[participant] = cohort
    return cohorts


def _cohort_for(sub: str, image: Path, root: Path, table: dict[str, str]) -> str:
    if _SUBJECT_RE.match(sub):
        return cohort_of(sub)
    cohort = table.get(f"sub-{sub}")
    if cohort is None or pd.isna(cohort) or not str(cohort).strip():
        raise DataError(
            f"{image}: subject sub-{sub} does not follow the ATLAS naming "
            "'sub-r<cohort>s<subject>' (e.g. sub-r001s001), so its cohort (site) is "
            "unknown, and no participants.tsv under "
            f"{root} gives it one. Add {root / 'participants.tsv'} with the columns "
            "participant_id and cohort, one line per subject (e.g. "
            f"'sub-{sub}<TAB>siteA'); if all subjects come from one site, give them "
            "all the same cohort."
        )
    return str(cohort).strip()


def _pick_in_space(
    found: list[tuple[dict, Path]], what: str, sub: str, ses: str
) -> Path | None:
    """The one file of ``found`` in the kit's space (None if there is none)."""
    in_space = [path for entities, path in found if entities.get("space") == SPACE]
    if len(in_space) > 1:
        listed = " and ".join(str(path) for path in in_space)
        raise DataError(
            f"Two {what} files for subject sub-{sub} session {ses} in space {SPACE}: "
            f"{listed}. They have the same sub, ses and space entities, so the kit "
            "cannot tell which one to use: point it to a folder that holds only one "
            "of them (e.g. the derivatives folder of one pipeline)."
        )
    return in_space[0] if in_space else None


def find_subjects(root: Path | str) -> list[Subject]:
    """Find all subjects below ``root`` by their BIDS file names.

    Parameters
    ----------
    root : path
        A split folder (``data/train``), an ``ATLAS_2/Training`` folder, a BIDS
        dataset root, or anything above them. Linked folders are followed
        (:func:`walk_files`); hidden folders (``.cache``) are skipped.

    Returns
    -------
    list of Subject
        One per subject and session, sorted by subject ID then session. Every
        entry has a mask, or none has (an unlabelled split).

    Raises
    ------
    DataError
        No T1w image under ``root``; a subject with no T1w image in
        MNI152NLin2009aSym space, or whose mask is in another space; a mask
        without its image; two images (or masks) with the same entities; a split
        where some subjects are labelled and others not; a subject whose cohort
        is unknown. The message names the file.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"{root} does not exist. Build the synthetic sample with "
            "`python download_data.py`, or point to your ATLAS folder."
        )
    images: dict[tuple[str, str], list[tuple[dict, Path]]] = {}
    masks: dict[tuple[str, str], list[tuple[dict, Path]]] = {}
    for path in walk_files(root):
        if not path.name.startswith("sub-") or not _is_nifti(path):
            continue
        stem = path.name.removesuffix(".gz").removesuffix(".nii")
        if stem.rsplit("_", 1)[-1] not in (T1W_SUFFIX, MASK_SUFFIX):
            continue  # not a T1w nor a mask (FSL's *_T1w_brain, a FLAIR...): not ours
        entities = parse_entities(path)
        if entities["suffix"] == T1W_SUFFIX:
            target = images
        elif entities["suffix"] == MASK_SUFFIX and entities.get("desc") == MASK_DESC:
            target = masks
        else:
            continue  # other images and masks (brain masks, FLAIR...) are not ours
        key = (entities["sub"], entities.get("ses", SESSION))
        target.setdefault(key, []).append((entities, path))
    if not images:
        raise DataError(
            f"No T1w image (sub-*_T1w.nii.gz) found under {root}. Build the "
            "synthetic sample with `python download_data.py`, or check the path."
        )
    pairs: dict[tuple[str, str], tuple[Path, Path | None]] = {}
    for key in sorted(set(images) | set(masks)):
        sub, ses = key
        image = _pick_in_space(images.get(key, []), "T1w", sub, ses)
        mask = _pick_in_space(masks.get(key, []), "lesion mask", sub, ses)
        if image is None and key not in images:
            _, orphan = masks[key][0]
            raise DataError(
                f"Lesion mask {orphan} has no T1w image beside it "
                f"(expected {t1w_name(sub, ses)}). Restore the image, or move the "
                "mask out of this folder."
            )
        if image is None:
            found = "; ".join(
                f"{path} (space {_space_name(entities)})"
                for entities, path in images[key] + masks.get(key, [])
            )
            raise DataError(
                f"Subject sub-{sub} session {ses} has no T1w image in space {SPACE}; "
                f"found: {found}. The kit expects images registered to {SPACE} as "
                f"ATLAS is ({t1w_name(sub, ses)}), and a mask in the same space as "
                "its image. Register the image to that template, or point the kit to "
                "the folder of registered images."
            )
        if mask is None and key in masks:
            entities, other = masks[key][0]
            raise DataError(
                f"Lesion mask {other} is in space {_space_name(entities)} but its T1w "
                f"image {image} is in space '{SPACE}': a mask pairs with the image of "
                f"the same sub, ses and space. Expected {mask_name(sub, ses)}, in "
                f"space {SPACE}."
            )
        pairs[key] = (image, mask)
    labelled = [key for key, (_, mask) in pairs.items() if mask is not None]
    if labelled and len(labelled) != len(pairs):
        sub, ses = next(key for key, (_, mask) in pairs.items() if mask is None)
        raise DataError(
            f"{len(labelled)} of {len(pairs)} subjects under {root} have a lesion "
            f"mask, but sub-{sub} (image {pairs[(sub, ses)][0]}) has none. A split is "
            "either fully labelled or fully unlabelled: add the missing masks or "
            "move the unlabelled subjects to their own folder."
        )
    cohort_table = None
    subjects = []
    for (sub, ses), (image, mask) in sorted(pairs.items()):
        if cohort_table is None and not _SUBJECT_RE.match(sub):
            cohort_table = _read_participant_cohorts(root)
        cohort = _cohort_for(sub, image, root, cohort_table or {})
        subjects.append(Subject(f"sub-{sub}", cohort, ses, image, mask))
    return subjects


#: Words in a file name that suggest a lesion mask (under a name the kit does not use).
_MASK_WORDS = ("mask", "lesion", "label", "seg", "roi")


def mask_like_files(root: Path | str) -> list[Path]:
    """NIfTI files below ``root`` that look like masks but are not T1w images.

    For the message of a split without the kit's masks: masks saved under
    another name (``sub-..._desc-lesion_mask.nii.gz``, ``..._seg.nii.gz``)
    are then named, so the student sees what to rename.
    """
    found = []
    for path in walk_files(Path(root)):
        stem = path.name.removesuffix(".gz").removesuffix(".nii")
        if not _is_nifti(path) or stem.endswith(f"_{T1W_SUFFIX}"):
            continue
        if any(word in stem.lower() for word in _MASK_WORDS):
            found.append(path)
    return found


def no_masks_error(split_dir: Path | str, subject: Subject) -> DataError:
    """The error for a split without the kit's masks: where, expected, found.

    ``subject`` is one of the split's (its image shows the expected mask name).
    """
    expected = mask_name(subject.subject_id, subject.session)
    found = mask_like_files(split_dir)
    if found:
        shown = ", ".join(str(path) for path in found[:3])
        more = f" (and {len(found) - 3} more)" if len(found) > 3 else ""
        what = (
            f"Found {len(found)} mask-like file(s) under other names: {shown}{more}. "
            "If these are the lesion masks, rename them to the kit's name (sub, ses "
            "and space as their image, then _label-L_desc-T1lesion_mask.nii.gz)."
        )
    else:
        what = (
            "No mask-like file was found there: if the split is unlabelled (e.g. "
            "ATLAS Testing), it cannot be used for training or scoring; use a "
            "labelled folder."
        )
    return DataError(
        f"{split_dir} has no lesion masks that the kit can use: it expects each "
        f"subject's mask beside its T1w image, named like {expected} (for "
        f"{subject.t1w_path.name}). {what}"
    )


def read_header(path: Path) -> nib.Nifti1Image:
    """Open a NIfTI file lazily (header only), with an error that names it."""
    try:
        return nib.load(str(path))
    except Exception as error:  # nibabel raises many types for bad files
        raise DataError(
            f"Cannot read {path}: {error}. The file is unreadable or not NIfTI; "
            "download or rebuild it (`python download_data.py --force`)."
        ) from error
