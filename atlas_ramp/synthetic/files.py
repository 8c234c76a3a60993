"""The sample's files: NIfTI images and masks in ATLAS names, BIDS side files.

Each file is written under a temporary name and renamed
(:mod:`atlas_ramp._io`), so a final name never holds a half-written file, and
the bytes depend only on the data (no time stamps), so a seed always gives the
same files.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np

from .._io import atomic_write_bytes, write_dataset_description, write_tsv
from ..bids import anat_dir, mask_name, t1w_name
from .subject import SyntheticSubject

GENERATOR_NAME = "atlas_ramp.synthetic"
# Bump when a change alters the generated data, so complete samples get rebuilt.
GENERATOR_VERSION = "1.0"

#: gzip level of the NIfTI files: level 1 is several times faster than 9 and
#: the files are barely larger (noise does not compress).
GZIP_LEVEL = 1

PARTICIPANT_COLUMNS = (
    "participant_id",
    "cohort",
    "n_lesions",
    "hemisphere",
    "location",
    "lesion_volume_ml",
    "days_post_stroke",
)


def nifti_gz_bytes(array: np.ndarray, affine: np.ndarray, dtype) -> bytes:
    """A gzip-compressed NIfTI-1 file, byte-identical for identical arrays."""
    image = nib.Nifti1Image(np.asarray(array).astype(dtype), affine)
    image.set_qform(affine, code="mni")
    image.set_sform(affine, code="mni")
    header = image.header
    header.set_data_dtype(dtype)
    header.set_xyzt_units("mm")
    header.set_slope_inter(1.0, 0.0)
    header["descrip"] = b"atlas_ramp synthetic ATLAS-like sample"
    # mtime=0: no time stamp in the gzip header, so reruns give the same bytes.
    return gzip.compress(image.to_bytes(), compresslevel=GZIP_LEVEL, mtime=0)


def write_subject(
    split_dir: Path | str, subject_id: str, subject: SyntheticSubject, with_mask=True
) -> Path:
    """Write a subject's T1w image (and mask) under ``split_dir`` in ATLAS names.

    Files go to ``<split_dir>/R001/sub-r001s001/ses-1/anat/``; each one is
    written under a temporary name and renamed, so a final name never holds a
    half-written file.

    Parameters
    ----------
    split_dir : path
        ``data/train``, ``ATLAS_2/Training``...
    subject_id : str
        ``sub-r001s001`` (or ``r001s001``).
    subject : SyntheticSubject
    with_mask : bool
        False for unlabelled subjects (ATLAS Testing).

    Returns
    -------
    Path
        The subject's ``anat`` folder.
    """
    folder = anat_dir(split_dir, subject_id)
    folder.mkdir(parents=True, exist_ok=True)
    # Whole numbers in the cohort's units: int16 without scaling is exact.
    t1 = np.clip(subject.t1, 0, np.iinfo(np.int16).max)
    atomic_write_bytes(
        folder / t1w_name(subject_id), nifti_gz_bytes(t1, subject.affine, np.int16)
    )
    if with_mask:
        atomic_write_bytes(
            folder / mask_name(subject_id),
            nifti_gz_bytes(subject.mask, subject.affine, np.uint8),
        )
    return folder


def participant_row(subject_id: str, cohort: str, subject: SyntheticSubject) -> dict:
    """A subject's line of ``participants.tsv``, as a dict by column."""
    info = subject.info
    return {
        "participant_id": subject_id,
        "cohort": cohort,
        "n_lesions": info["n_lesions"],
        "hemisphere": info["hemisphere"],
        "location": info["location"],
        "lesion_volume_ml": info["lesion_volume_ml"],
        "days_post_stroke": info["days_post_stroke"],
    }


def write_participants(split_dir: Path, rows: list[dict]) -> Path:
    """Write ``participants.tsv``: one row a subject, sorted by ID."""
    rows = sorted(rows, key=lambda row: row["participant_id"])
    return write_tsv(
        Path(split_dir) / "participants.tsv",
        PARTICIPANT_COLUMNS,
        (
            [
                f"{row[column]:.3f}" if column == "lesion_volume_ml" else row[column]
                for column in PARTICIPANT_COLUMNS
            ]
            for row in rows
        ),
    )


def write_split_description(split_dir: Path, split: str, parameters: dict) -> Path:
    """Write a split's ``dataset_description.json`` (provenance of the data)."""
    notes = (
        "SYNTHETIC DATA, not images of real patients. Names and layout follow "
        "ATLAS R2.0 (space-MNI152NLin2009aSym, label-L_desc-T1lesion masks) so "
        "that code written for ATLAS runs unchanged. Grid: "
        f"{parameters['downsample']} mm voxels. Lesion volumes in "
        "participants.tsv are measured on the masks."
    )
    if split == "generalizability":
        notes += (
            " Cohorts that appear neither in train nor in test; their scanners, "
            "anatomy and lesion appearance lie outside the training ranges, "
            "with a residual misregistration of a few mm and degrees (see "
            "atlas_ramp.synthetic.generalizability)."
        )
    return write_dataset_description(
        split_dir,
        f"Synthetic ATLAS-like stroke lesion sample ({split})",
        GeneratedBy=[
            {
                "Name": GENERATOR_NAME,
                "Version": GENERATOR_VERSION,
                "Seed": parameters["seed"],
                "Downsample": parameters["downsample"],
                "Description": (
                    "Synthetic subjects on the MNI152 2009a symmetric template "
                    "(T1 and tissue maps shipped with nilearn): random deformation, "
                    "atrophy, white-matter hypointensities, perivascular spaces, "
                    "chronic stroke lesions, per-cohort scanner profiles."
                ),
            }
        ],
        SourceDatasets=[
            {
                "Description": "MNI ICBM152 2009a nonlinear symmetric template "
                "(as distributed with nilearn)",
                "URL": "https://www.bic.mni.mcgill.ca/ServicesAtlases/ICBM152NLin2009",
            }
        ],
        Notes=notes,
    )
