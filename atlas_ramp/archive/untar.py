"""The archive's content: gzip, then tar, extracted front to back and safely.

The standard library does the work: :class:`gzip.GzipFile` decompresses (and
checks the CRC and length of every gzip member), :mod:`tarfile` reads the tar as
a stream (``mode="r|"``, never seeking) and its ``data`` extraction filter
(PEP 706) refuses what a data archive has no business holding: paths or links
that leave the target folder, absolute links, devices and FIFOs; it also drops
owners and dangerous permission bits.

After it, :func:`safe_member` runs a small check of our own, on every Python:

* **absolute member names are refused**. The filter would strip the leading
  ``/`` and extract them inside: safe, but it hides that the archive is not the
  one the kit expects.
* **links are followed as the archive wrote them, strictly**. The ``data``
  filters before the June 2025 fixes (gh-135034: CVE-2025-4517, CVE-2025-4330,
  CVE-2025-4138, CVE-2024-12718; fixed in Python 3.10.18, 3.11.13, 3.12.11,
  3.13.4) resolve paths with a ``realpath`` that silently stops at a loop of
  links or a path longer than ``PATH_MAX``, so that a chain of links can look
  inside while pointing outside, and they create a link's target unnormalised,
  so that what was checked is not what is created. :func:`_resolve` raises on
  such errors instead, and link targets are created normalised, as the fixed
  filter does. The fixed filter, though, *neutralises* an archive whose links
  change meaning once normalised (by its code, the three link-chain cases of
  the kit's hostile suite would extract harmlessly instead of being refused);
  resolving with the targets as written refuses them, on old and new Pythons
  alike. An archive that plays such tricks is not the ATLAS release, and the
  user should know. So the kit does not require a fixed Python (3.11.7 runs
  its tests): it keeps this check, which the filter alone fails without (the
  CVE-2025-4517 chain overwrites a file outside on 3.10.13, 3.11.7, 3.12.1 and
  3.13.0; see ``tests/test_archive.py``).
* **a hard link must point to a file extracted before**, so that tarfile never
  falls back to copying a member it would have to look up elsewhere.

What is ours is these few checks and :func:`_resolve` (no library resolves a
path with link targets other than those on disk); the extraction is tarfile's.
"""

from __future__ import annotations

import errno
import gzip
import os
import platform
import re
import stat
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..bids import DataError
from .errors import CorruptArchiveError, UnsafeArchiveError
from .openssl import (
    BASE64_SALT_HEADER,
    GZIP_MAGIC,
    HEAD_SIZE,
    check_password,
    decrypt_openssl_stream,
    peek,
)

CHUNK_SIZE = 1 << 20  # bytes read, decrypted, decompressed at a time
TAR_BUFFER_SIZE = 1 << 16  # small: tarfile copies its buffer on each header read
_MAX_LINKS = 40  # links followed in one path before calling it a loop (as Linux)

_SPECIAL_KINDS = {
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
}


class ChunkReader:
    """A read-only file object over an iterator of byte chunks.

    What :class:`gzip.GzipFile` and :mod:`tarfile` need to read a stream: a
    ``read(size)`` method. Memory stays at one chunk.
    """

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks = iter(chunks)
        self._view = memoryview(b"")

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            rest = b"".join([bytes(self._view), *self._chunks])
            self._view = memoryview(b"")
            return rest
        while not self._view:
            chunk = next(self._chunks, None)
            if chunk is None:
                return b""
            self._view = memoryview(chunk)
        piece = bytes(self._view[:size])
        self._view = self._view[size:]
        return piece


def _is_inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def _unsafe(name: str, member: str, why: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(
        f"{name} contains an unsafe member {member!r}: {why}. Extraction stopped "
        "and nothing was installed. Do not use this archive; download the original "
        "again."
    )


def _resolve(path: str, links: dict[str, str]) -> str:
    """The real path of ``path``, following links with the targets in ``links``.

    Like ``os.path.realpath(path, strict=os.path.ALLOW_MISSING)``: links that
    exist are followed one component at a time, components that do not exist
    are taken as written, and any other error (a loop of links, a path too long)
    is raised rather than silently ending the resolution. A link created from
    the archive is followed with its target as the archive wrote it
    (``links``: created path -> target), not as it was created (normalised).
    ``path`` is absolute.
    """
    drive, rest = os.path.splitdrive(path)
    if os.altsep:  # Windows: tar names use "/"
        rest = rest.replace(os.altsep, os.sep)
    top = resolved = drive + os.sep
    pending = list(reversed(rest.split(os.sep)))
    followed = 0
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            resolved = os.path.dirname(resolved)
            continue
        candidate = os.path.join(resolved, part)
        try:
            is_link = stat.S_ISLNK(os.lstat(candidate).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            is_link = False  # missing: nothing to follow
        if not is_link:
            resolved = candidate
            continue
        followed += 1
        if followed > _MAX_LINKS:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
        target = links.get(candidate) or os.readlink(candidate)
        if os.path.isabs(target):
            resolved = top
        pending.extend(reversed(target.split(os.sep)))
    return resolved


def _check_paths(
    member: tarfile.TarInfo, root: str, links: dict[str, str], name: str
) -> tarfile.TarInfo:
    """Our link checks (see the module docstring); returns the member to create."""
    path = os.path.join(root, member.name)
    try:
        folder = _resolve(os.path.dirname(path), links)
        written_at = _resolve(path, links)
        if member.issym():
            targets = {member.linkname, os.path.normpath(member.linkname)}
            pointed = [_resolve(os.path.join(folder, t), links) for t in targets]
        elif member.islnk():
            pointed = [_resolve(os.path.join(root, member.linkname), links)]
    except OSError as error:
        raise _unsafe(
            name, member.name, f"its path cannot be resolved ({error.strerror})"
        ) from error
    if not _is_inside(written_at, root) or not _is_inside(folder, root):
        raise _unsafe(name, member.name, "it would be written outside the tree")
    if not (member.issym() or member.islnk()):
        return member
    if not all(_is_inside(target, root) for target in pointed):
        raise _unsafe(
            name, member.name, f"it links to {member.linkname!r}, outside the tree"
        )
    if member.islnk() and not os.path.isfile(pointed[0]):
        raise _unsafe(
            name,
            member.name,
            f"it is a hard link to {member.linkname!r}, not a file extracted before",
        )
    if member.issym():
        links[os.path.join(folder, os.path.basename(path))] = member.linkname
    return member.replace(linkname=os.path.normpath(member.linkname), deep=False)


def _filter_error_reason(error: tarfile.FilterError) -> str:
    member = error.tarinfo
    if isinstance(error, tarfile.SpecialFileError):
        return "it is " + _SPECIAL_KINDS.get(member.type, "a special file")
    if isinstance(error, tarfile.AbsoluteLinkError):
        return f"it links to the absolute path {member.linkname!r}"
    if isinstance(error, tarfile.LinkOutsideDestinationError):
        return f"it links to {member.linkname!r}, outside the tree"
    if isinstance(error, tarfile.OutsideDestinationError):
        return "its path leaves the tree"
    return str(error)


def safe_member(
    member: tarfile.TarInfo,
    root: str,
    links: dict[str, str],
    *,
    name: str = "the archive",
) -> tarfile.TarInfo:
    """The extraction filter of the installer: our checks, then tarfile's ``data``.

    Parameters
    ----------
    member : tarfile.TarInfo
    root : str
        The real path of the folder extracted into.
    links : dict
        The symbolic links extracted so far (path -> target as written); updated.
    name : str
        What to call the archive in error messages.

    Returns
    -------
    tarfile.TarInfo
        The member as it will be extracted.

    Raises
    ------
    UnsafeArchiveError
        Naming the member and why it is refused.
    """
    if re.match(r"^([A-Za-z]:)?[\\/]", member.name):
        raise _unsafe(name, member.name, "its path is absolute")
    try:
        filtered = tarfile.data_filter(member, root)
    except tarfile.FilterError as error:
        raise _unsafe(name, member.name, _filter_error_reason(error)) from error
    except OSError as error:  # fixed filters raise on loops and too long paths
        raise _unsafe(
            name, member.name, f"its path cannot be resolved ({error.strerror})"
        ) from error
    # The filter's checks passed; ours see the link target as the archive wrote it.
    unfiltered_target = filtered.replace(linkname=member.linkname, deep=False)
    return _check_paths(unfiltered_target, root, links, name)


def extract_tar_stream(fileobj, destination: Path | str, *, name: str = "the archive"):
    """Extract a tar read front to back from ``fileobj``, refusing unsafe members.

    Refused (:class:`UnsafeArchiveError`, naming the member): absolute paths,
    paths that leave ``destination`` (``..``, or through a link), symbolic or hard
    links that leave it, devices and FIFOs. Owners from the archive are not
    applied, nor permission bits beyond ``rwxr-xr-x``.

    Parameters
    ----------
    fileobj : file-like
        Anything with ``read(size)``; never seeked.
    destination : path
        The folder to extract into (created if needed).
    name : str
        What to call the archive in error messages.

    Returns
    -------
    int
        The number of members extracted.
    """
    if not hasattr(tarfile, "data_filter"):
        raise DataError(
            f"This Python ({platform.python_version()}) cannot extract {name} "
            "safely: tarfile's extraction filters came with Python 3.10.12, 3.11.4 "
            "and 3.12. Upgrade Python (a later 3.10 or 3.11 will do) and run again."
        )
    root = os.path.realpath(destination)
    os.makedirs(root, exist_ok=True)
    count = 0

    links: dict[str, str] = {}

    def checked(member, path):
        nonlocal count
        member = safe_member(member, path, links, name=name)
        count += 1
        return member

    try:
        with tarfile.open(fileobj=fileobj, mode="r|", bufsize=TAR_BUFFER_SIZE) as tar:
            tar.extractall(root, filter=checked)
    except (tarfile.TarError, EOFError) as error:
        raise CorruptArchiveError(
            f"{name}: the tar inside is damaged or truncated ({error}). Download the "
            "archive again."
        ) from error
    return count


def _decompression_error(name: str, error: Exception) -> CorruptArchiveError:
    return CorruptArchiveError(
        f"{name}: the compressed data is damaged ({error}), or the password is "
        "wrong (a wrong one passes the first check about once in 65,536 tries). "
        "Check the password first; if it is right, download the archive again."
    )


def unpack_archive_stream(
    chunks: Iterable[bytes],
    password: str | bytes,
    destination: Path | str,
    *,
    name: str = "the archive",
) -> int:
    """Decrypt, decompress and extract an archive in one streaming pass.

    The password is checked on the first block (:func:`check_password`), before
    anything is extracted. The stream is then read to its very end, so that the
    gzip CRC and the padding are checked. A plain, unencrypted ``.tar.gz`` (gzip
    magic bytes at the start) is accepted as well.

    Parameters
    ----------
    chunks : iterable of bytes
        The archive file, in pieces.
    password : str or bytes
        Its password.
    destination : path
        Folder to extract into.
    name : str
        What to call the archive in error messages.

    Returns
    -------
    int
        The number of tar members extracted.
    """
    head, raw = peek(iter(chunks), max(HEAD_SIZE, len(BASE64_SALT_HEADER)))
    if head.startswith(GZIP_MAGIC):
        compressed: Iterator[bytes] = raw  # decrypted by hand already
    else:
        check_password(head, password, name=name)
        compressed = decrypt_openssl_stream(raw, password, name=name)
    try:
        with gzip.GzipFile(fileobj=ChunkReader(compressed), mode="rb") as tar_stream:
            count = extract_tar_stream(tar_stream, destination, name=name)
            while tar_stream.read(CHUNK_SIZE):  # tar padding, gzip CRC, AES padding
                pass
    except (gzip.BadGzipFile, zlib.error) as error:
        raise _decompression_error(name, error) from error
    except EOFError as error:
        raise CorruptArchiveError(
            f"{name} is truncated: the compressed data stops before its end. "
            "Download it again (a download resumes where it stopped)."
        ) from error
    return count
