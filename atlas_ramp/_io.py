"""Safe writing: files and folders appear whole under their final name, or not at all.

Every module of the kit that writes (the volume cache, saved predictions, the
synthetic sample, exported masks, the installed ATLAS data) follows one rule: a
final name never holds a half-written file, and an existing good file or folder
is only replaced by a complete new one. The standard library gives the pieces
(:func:`tempfile.mkstemp` for a unique name on the same file system,
:func:`os.replace` for an atomic rename); this module puts them together once.

It also holds the small writers that several modules share: a 1D object array
that numpy never broadcasts, and the BIDS side files (``dataset_description.json``,
TSV tables).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

#: The BIDS version the kit writes in ``dataset_description.json``.
BIDS_VERSION = "1.8.0"


def _double_suffix(path: Path) -> str:
    # nibabel picks the format from the name: keep ".nii.gz", not just ".gz".
    return "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix


@contextlib.contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """A temporary path beside ``target``, renamed to ``target`` on success.

    Write the file to the yielded path (with any writer that takes a file name:
    ``nib.save``, ``np.save``, ``open``); when the block ends without an error it
    replaces ``target`` in one rename. On an error the temporary file is removed
    and ``target`` is left as it was.

    Parameters
    ----------
    target : path
        The final file name. Its folder must exist.

    Yields
    ------
    Path
        A hidden, unique name in the same folder, with the same suffix.

    Examples
    --------
    >>> with atomic_path("mask.nii.gz") as temporary:  # doctest: +SKIP
    ...     nib.save(image, temporary)
    """
    target = Path(target)
    handle, temporary = tempfile.mkstemp(
        dir=target.parent,
        prefix=f".{target.name}.",
        suffix=".partial" + _double_suffix(target),
    )
    os.close(handle)
    temporary = Path(temporary)
    # mkstemp makes the file private (0600) and the rename keeps that: give it
    # the mode any new file gets here, so that a course server's other users
    # (the RAMP worker, students on a shared disk) can read what the kit wrote.
    os.chmod(temporary, 0o666 & ~_umask())
    try:
        yield temporary
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _umask() -> int:
    umask = os.umask(0)  # the only portable way to read it is to set it
    os.umask(umask)
    return umask


def staging_folder(parent: Path | str, prefix: str) -> Path:
    """A new, uniquely named folder in ``parent``, to build a tree before renaming it.

    Like :func:`tempfile.mkdtemp`, but with the mode of an ordinary new folder
    (mkdtemp's is 0700, private), since the folder or its content becomes the
    final tree.
    """
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(folder, 0o777 & ~_umask())
    return folder


def atomic_write_bytes(target: Path | str, data: bytes) -> Path:
    """Write ``data`` to ``target`` through a temporary file and a rename."""
    with atomic_path(target) as temporary:
        temporary.write_bytes(data)
    return Path(target)


def atomic_write_text(target: Path | str, text: str) -> Path:
    """Write UTF-8 ``text`` to ``target`` through a temporary file and a rename."""
    return atomic_write_bytes(target, text.encode("utf-8"))


def write_json(target: Path | str, content: dict) -> Path:
    """Write ``content`` as indented JSON, atomically."""
    return atomic_write_text(target, json.dumps(content, indent=2) + "\n")


def write_tsv(
    target: Path | str, columns: Sequence[str], rows: Iterable[Sequence]
) -> Path:
    """Write a BIDS-style tab-separated table (header line, then one line a row).

    Values are written with ``str``; format numbers before passing them.
    """
    lines = ["\t".join(columns)]
    for row in rows:
        if len(row) != len(columns):
            raise ValueError(
                f"Row {row!r} has {len(row)} values for {len(columns)} columns."
            )
        lines.append("\t".join(str(value) for value in row))
    return atomic_write_text(target, "\n".join(lines) + "\n")


def write_dataset_description(folder: Path | str, name: str, **fields) -> Path:
    """Write a BIDS derivative's ``dataset_description.json`` in ``folder``.

    Parameters
    ----------
    folder : path
        The dataset's root (a split folder, an export folder).
    name : str
        The dataset's ``Name``.
    **fields
        Other BIDS fields, by their BIDS names (``GeneratedBy``, ``License``,
        ``SourceDatasets``...).
    """
    content = {
        "Name": name,
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        **fields,
    }
    return write_json(Path(folder) / "dataset_description.json", content)


def swap_into_place(
    new_root: Path, destination: Path, entries: Iterable[str], trash: Path
) -> None:
    """Move ``entries`` of ``new_root`` into ``destination``, replacing old ones.

    Every step is a rename on one file system. Old entries (all of ``entries``
    found in ``destination``, even those the new tree lacks) go to ``trash``, in
    the order given; then the new ones come, in the reverse order. So a
    completion marker listed first is the first old entry to go and the last
    new one to come: it never vouches for a tree that is half moved. If anything
    fails, everything is put back as it was.

    Parameters
    ----------
    new_root : path
        The complete new tree.
    destination : path
        The folder to update (created if needed).
    entries : iterable of str
        Names of the entries that belong to the installation.
    trash : path
        A new folder on the same file system, for the replaced entries.
    """
    entries = list(entries)
    destination.mkdir(parents=True, exist_ok=True)
    trash.mkdir()
    parked, placed = [], []
    try:
        for entry in entries:
            if os.path.lexists(destination / entry):
                os.rename(destination / entry, trash / entry)
                parked.append(entry)
        for entry in reversed(entries):
            if os.path.lexists(new_root / entry):
                os.rename(new_root / entry, destination / entry)
                placed.append(entry)
    except BaseException:
        for entry in reversed(placed):
            os.rename(destination / entry, new_root / entry)
        for entry in reversed(parked):
            os.rename(trash / entry, destination / entry)
        raise


def replace_folder(source: Path | str, destination: Path | str) -> None:
    """Put the folder ``source`` at ``destination``, replacing the folder there.

    ``source`` is first moved beside ``destination`` (copied, if it is on
    another file system); then the old folder leaves and the new one comes by
    two renames (:func:`swap_into_place`). So ``destination`` is never half
    written, and if the swap fails the old folder is put back.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    stage = staging_folder(destination.parent, f".{destination.name}-")
    try:
        (stage / "new").mkdir()
        shutil.move(str(source), str(stage / "new" / destination.name))
        swap_into_place(
            stage / "new", destination.parent, [destination.name], stage / "old"
        )
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def object_array(items) -> np.ndarray:
    """A 1D object array of ``items``, never broadcast into more dimensions.

    ``np.array(list_of_objects, dtype=object)`` turns equal-length sequences into
    a 2D array; filling an empty 1D array keeps one element per item.
    """
    items = list(items)
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def link_or_copy(source: Path | str, target: Path | str, link: bool = True) -> None:
    """Hard-link ``source`` at ``target`` (a copy where links are not possible).

    Linking costs no disk space; across file systems, or where hard links are
    not supported, the file is copied (``shutil.copy2``, times kept).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.link(source, target)
            return
        except OSError:  # another file system, or no hard links there
            pass
    shutil.copy2(source, target)


def file_sha256(
    path: Path | str,
    on_chunk: Callable[[int], object] | None = None,
    chunk_size: int = 1 << 20,
) -> str:
    """SHA-256 of a file, read a chunk at a time (``hashlib.file_digest`` is 3.11+).

    ``on_chunk(n_bytes)`` is called after each chunk (a progress bar's update).
    """
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(chunk_size):
            digest.update(chunk)
            if on_chunk is not None:
                on_chunk(len(chunk))
    return digest.hexdigest()
