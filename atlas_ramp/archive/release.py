"""The ATLAS R2.0 release: where it is published, and how a split of it is described.

One home for the facts about the real data that several parts of the kit need:
the archive's name, URL and SHA-256 (the installer, :mod:`atlas_ramp.archive`,
and the command line, :mod:`atlas_ramp.download`), and the license and reference
that every folder made from ATLAS subjects carries in its
``dataset_description.json`` (the installer and
:mod:`atlas_ramp.course.instructor`). It uses the standard library only, and no
network.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .._io import write_dataset_description, write_tsv

#: The encrypted archive as INDI publishes it.
ATLAS_ARCHIVE_NAME = "ATLAS_R2.0_encrypted.tar.gz"
ATLAS_URL = (
    f"https://fcp-indi.s3.amazonaws.com/data/Projects/ATLAS/{ATLAS_ARCHIVE_NAME}"
)
ATLAS_SHA256 = "b9cdf26486e7dd325d5d6617f2218204bbaa0b649dbca03e729a41a449bef671"

#: Liew et al., Scientific Data 2022: the paper that describes ATLAS v2.0.
ATLAS_REFERENCE = "https://doi.org/10.1038/s41597-022-01401-7"
ATLAS_LICENSE = (
    "ATLAS R2.0 data use agreement: do not redistribute; share only with people "
    "who signed it."
)


def write_split_description(
    split_dir: Path | str, name: str, description: str, source: str | None = None
) -> Path:
    """Write the ``dataset_description.json`` of a folder of ATLAS subjects.

    Parameters
    ----------
    split_dir : path
        The split folder (``data/train``).
    name : str
        The dataset's name.
    description : str
        How the split was made (seed, fractions), for whoever reads it later.
    source : str, optional
        Where the data came from (a URL or an archive's name).

    Returns
    -------
    Path
        The file written.
    """
    fields = {
        "License": ATLAS_LICENSE,
        "GeneratedBy": [{"Name": "atlas_ramp", "Description": description}],
        "ReferencesAndLinks": [ATLAS_REFERENCE],
    }
    if source:
        fields["SourceDatasets"] = [{"URL": source}]
    return write_dataset_description(split_dir, name, **fields)


def write_split_manifest(
    path: Path | str, rows: Iterable[tuple[str, str, str]]
) -> Path:
    """Write a ``split_manifest.tsv``: one ``subject, cohort, split`` row each."""
    return write_tsv(path, ("subject", "cohort", "split"), sorted(rows))
