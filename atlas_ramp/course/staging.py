"""What the course sandbox is given, prepared outside it by trusted code.

* :func:`warm_volume_cache`: every volume of ``data/train`` and ``data/test``
  decoded into the volume cache once (the sandbox sees it read-only);
* :func:`stage_test_images`: a ``data/test`` of the test images only, with
  their cache entries;
* :func:`linked_from`: the folders that links in ``data/train`` lead to, which
  the sandbox shows at their own paths;
* :func:`stage_dir` and :func:`sweep_stale_stages`: the staging folder of one
  run, and the removal of those left by killed runners.

:mod:`atlas_ramp.course.sandbox` runs the sandbox on what this prepares.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd

from .._io import link_or_copy, staging_folder
from ..bids import DataError, find_subjects, walk_files
from ..volume_cache import default_cache_dir, fresh_entry_files
from ..volumes import ImageSequence, load_masks

#: A staging folder this old was left by a killed runner (no submission runs
#: two days: ramp-board's time-outs are hours).
STALE_STAGE_SECONDS = 2 * 24 * 3600


def warm_volume_cache(data_dir: Path | str) -> None:
    """Decode every volume of ``data/train`` and ``data/test`` into the cache once.

    The sandbox sees the cache read-only (a submission must not change what
    another one reads), so trusted code fills it, outside: the first
    submission of a course pays the decoding, later ones find it done.
    A file that cannot be read is left for ``ramp-test`` to report.
    """
    for split in ("train", "test"):
        try:
            images = ImageSequence.from_folder(Path(data_dir) / "data" / split)
        except DataError:
            continue
        for position in range(len(images)):
            try:  # one bad volume leaves the others to be cached
                images[position]
            except DataError:
                continue
        if split == "train":
            try:
                load_masks(images)
            except DataError:
                pass


def stage_test_images(data_dir: Path | str, stage: Path | str) -> tuple[Path, Path]:
    """A copy of ``<data_dir>/data/test`` holding the images only.

    T1w images are hard-linked (copied across file systems) at their relative
    paths; ``participants.tsv`` files keep their ``participant_id`` and
    ``cohort`` columns only; the images' fresh volume-cache entries are linked
    too, so the sandbox does not decode them again.

    Returns
    -------
    test, cache : Path
        The staged ``test`` folder and its staged volume cache.
    """
    source = Path(data_dir) / "data" / "test"
    test, cache = Path(stage) / "test", Path(stage) / "test-cache"
    test.mkdir(parents=True)
    cache.mkdir(parents=True)
    real_cache = default_cache_dir(source)
    for subject in find_subjects(source):
        image = Path(subject.t1w_path)
        link_or_copy(image, test / image.relative_to(source))
        for entry in fresh_entry_files(real_cache, image):
            link_or_copy(entry, cache / entry.relative_to(real_cache))
    # Linked cohort or subject folders are entered, as discovery does.
    tables = (path for path in walk_files(source) if path.name == "participants.tsv")
    for table in tables:
        rows = pd.read_csv(table, sep="\t", dtype=str)
        kept = [name for name in ("participant_id", "cohort") if name in rows]
        target = test / table.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        rows[kept].to_csv(target, sep="\t", index=False)
    return test, cache


def linked_from(folder: Path | str) -> list[Path]:
    """Where links below ``folder`` lead, outside it: real paths, outermost only.

    A course's training data may link cohort or subject folders from a shared
    drive. The sandbox shows these targets read-only at their own paths, so
    that the links resolve inside as outside (and the volume cache, which
    names its sources by real path, finds its entries).
    """
    real_root = Path(folder).resolve()
    targets, visited = set(), set()
    for root, folders, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in visited:  # a folder reached twice, or a cycle
            folders.clear()
            continue
        visited.add(real)
        for name in folders + files:
            path = os.path.join(root, name)
            if os.path.islink(path):
                target = Path(os.path.realpath(path))
                if target.exists() and not target.is_relative_to(real_root):
                    targets.add(target)
    return sorted(
        target
        for target in targets
        if not any(
            other != target and target.is_relative_to(other) for other in targets
        )
    )


def stage_dir(data_dir: Path) -> Path:
    """A staging folder on the data's file system (hard links), else in /tmp."""
    sweep_stale_stages(data_dir)
    try:
        return staging_folder(data_dir, ".sandbox-")
    except OSError:
        return Path(tempfile.mkdtemp(prefix="atlas-ramp-sandbox-"))


def sweep_stale_stages(data_dir: Path, older_than: float = STALE_STAGE_SECONDS):
    """Remove staging folders left by runners that were killed (``.sandbox-*``).

    Other runners may be staging beside this one: only folders untouched for
    ``older_than`` seconds, longer than any submission runs, are removed.
    """
    limit = time.time() - older_than
    for stage in Path(data_dir).glob(".sandbox-*"):
        try:
            stale = stage.is_dir() and not stage.is_symlink()
            stale = stale and stage.stat().st_mtime < limit
        except OSError:
            continue
        if stale:
            shutil.rmtree(stage, ignore_errors=True)
