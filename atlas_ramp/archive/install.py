"""Install the ATLAS R2.0 archive as ``data/train``, ``data/test``: the command.

The steps, each in its own module of :mod:`atlas_ramp.archive`::

    the archive on disk: --archive PATH, or downloaded into a .part file
        (download.py: resumable; the SHA-256 is computed on the way)
      1. password checked on the first block        (openssl.check_password)
      2. SHA-256 checked, before anything is extracted
      3. base64 -> AES-256-CBC -> gunzip -> untar, one streaming pass into a
         temporary folder beside the output          (openssl.py, untar.py)
      4. cohort-stratified train/test split of the labelled Training subjects,
         laid out in that folder                      (layout.py)
      5. moved into place by renames                  (_io.swap_into_place)

Where streaming pays, it is kept: a download is hashed as it arrives (no second
read of 10 GB), and decryption, decompression and extraction are chained in
memory, a chunk at a time, so that no decrypted copy of the archive is ever
written and memory stays flat whatever the archive's size. Hashing a local
archive is one extra read of it, before step 3: unverified data is never even
unpacked, and an intact file that does not unpack can only mean a wrong password.

Whatever goes wrong (wrong password, corrupted or truncated archive, checksum
mismatch, no disk space, Ctrl+C), a :class:`~atlas_ramp.bids.DataError` says what
happened and what to do, the temporary folder is removed, and the data already in
place is untouched.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import urllib.parse
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from .._io import file_sha256, staging_folder, swap_into_place
from ..bids import DataError
from .errors import (
    ChecksumError,
    CorruptArchiveError,
    UnsafeArchiveError,
    WrongPasswordError,
)
from .fetch import DOWNLOAD_RETRIES, ResumableDownload, human_size
from .layout import lay_out_release
from .openssl import GZIP_MAGIC, HEAD_SIZE, check_password
from .password import resolve_password
from .release import ATLAS_ARCHIVE_NAME, ATLAS_SHA256, ATLAS_URL
from .untar import CHUNK_SIZE, unpack_archive_stream

# The extracted files take this many times the archive's size (the ATLAS archive
# expands about 1.1-1.5x; its base64 text is already 4/3 of the binary).
EXPANSION_FACTOR = 1.5

# Entries of the output folder that an installation replaces, all together.
INSTALLED_ENTRIES = ("train", "test", "unlabelled", "extras", "split_manifest.tsv")
DOWNLOADS_DIR_NAME = ".downloads"


# --------------------------------------------------------------------------
# Reading, hashing, checking the archive on disk
# --------------------------------------------------------------------------


def _progress_bar(total: int | None, description: str, enabled: bool) -> tqdm:
    return tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=description,
        disable=not enabled,
    )


def _read_file(path: Path, bar: tqdm) -> Iterator[bytes]:
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK_SIZE):
            bar.update(len(chunk))
            yield chunk


def _check_head(head: bytes, password: str, name: str) -> None:
    """Fail fast on a wrong password (a plain ``.tar.gz`` has none to check)."""
    if not head.startswith(GZIP_MAGIC):
        check_password(head, password, name=name)


def _sha256_of_file(path: Path, progress: bool) -> str:
    size = path.stat().st_size
    with _progress_bar(size, f"SHA-256 of {path.name}", progress) as bar:
        return file_sha256(path, on_chunk=bar.update, chunk_size=CHUNK_SIZE)


def _download(download: ResumableDownload, password: str, progress: bool) -> str:
    """Download to the ``.part`` file; check the password early; return the SHA-256."""
    hasher = hashlib.sha256()
    head = b""
    name = Path(download.part_path.name).stem  # the archive's name, not ".part"
    chunks = download.chunks()
    with _progress_bar(download.total, f"download {name}", progress) as bar:
        try:
            for chunk in chunks:
                hasher.update(chunk)
                bar.update(len(chunk))
                if len(head) < HEAD_SIZE:
                    head += chunk[:HEAD_SIZE]
                    if len(head) >= HEAD_SIZE:
                        _check_head(head, password, download.url)
        finally:
            chunks.close()  # the .part file and the connection
    if len(head) < HEAD_SIZE:
        _check_head(head, password, download.url)  # a tiny file
    return hasher.hexdigest()


def _verify_checksum(
    digest: str, expected: str | None, name: str, downloaded: bool = False
) -> bool:
    """True if ``digest`` is the expected one; False if there is none to compare.

    ``downloaded``: the file was just downloaded (and will be deleted), so the
    advice is to run again, not to download it by hand.
    """
    if expected is None:
        return False
    if digest != expected:
        advice = (
            "The downloaded file was deleted; run again to download it afresh "
            "(with --skip-checksum if this address serves another release that "
            "you trust)."
            if downloaded
            else "Download it again, or pass --skip-checksum if you trust this release."
        )
        raise ChecksumError(
            f"The SHA-256 of {name} is {digest}, expected {expected}: the file is "
            f"damaged or truncated, or is another release. Nothing was installed. "
            f"{advice}"
        )
    return True


def _unpack(
    path: Path,
    password: str,
    destination: Path,
    name: str,
    verified: bool,
    progress: bool,
) -> None:
    """:func:`unpack_archive_stream` on a file, with a progress bar.

    Once the file is known intact (``verified``: its SHA-256 is the release's),
    a failure to decrypt or decompress can only be a wrong password that passed
    the first-block check by chance; the user must not be sent to download
    10 GB again.
    """
    with _progress_bar(path.stat().st_size, Path(name).name, progress) as bar:
        try:
            unpack_archive_stream(
                _read_file(path, bar), password, destination, name=name
            )
        except (CorruptArchiveError, WrongPasswordError) as error:
            if not verified:
                raise
            raise WrongPasswordError(
                f"Wrong password for {name}: the file is intact (its SHA-256 is the "
                "one of the ATLAS release), but it does not decrypt and decompress "
                "with this password. Check the password that came with the ATLAS "
                "data use agreement (mind the case and spaces) and run again; there "
                "is no need to fetch the file again."
            ) from error


# --------------------------------------------------------------------------
# Checks before starting
# --------------------------------------------------------------------------


def _refuse_to_replace(output: Path, force: bool) -> None:
    if output.exists() and not output.is_dir():
        raise DataError(f"{output} is a file; --output must be a folder.")
    existing = [
        name for name in ("train", "test", "unlabelled") if (output / name).exists()
    ]
    if existing and not force:
        raise DataError(
            f"{output} already holds {', '.join(existing)}. Pass --force to replace "
            "it: the current data stays untouched until the new tree is complete."
        )


def _check_free_space(needs: dict[Path, float]) -> None:
    """Refuse to start when a file system lacks the bytes we will write there."""
    by_device: dict[int, list] = {}
    for path, nbytes in needs.items():
        by_device.setdefault(os.stat(path).st_dev, [path, 0.0])[1] += nbytes
    for path, nbytes in by_device.values():
        free = shutil.disk_usage(path).free
        if free < nbytes:
            raise DataError(
                f"Not enough disk space in {path}: the archive needs about "
                f"{human_size(nbytes)} there, {human_size(free)} are free. Free "
                "some space, or choose an --output folder on another disk."
            )


# --------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------


def install_atlas(
    output_dir: Path | str,
    archive: Path | str | None = None,
    url: str = ATLAS_URL,
    password: str | None = None,
    *,
    skip_checksum: bool = False,
    expected_sha256: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    force: bool = False,
    progress: bool = True,
    keep_download: bool = False,
    retries: int = DOWNLOAD_RETRIES,
    password_file: Path | str | None = None,
) -> Path:
    """Install the encrypted ATLAS R2.0 archive as ``train``, ``test``, ``unlabelled``.

    The archive (read from ``archive``, or downloaded from ``url`` with resume)
    has its password checked on the first block and its SHA-256 checked, then is
    decrypted, decompressed and extracted in one streaming pass into a temporary
    folder beside ``output_dir``; the labelled Training subjects are split
    (cohort-stratified, seeded) into ``train`` and ``test``, the Testing subjects
    go to ``unlabelled``, anything else in the archive to ``extras``; then the new
    tree replaces the old one by renames. Files keep the ATLAS layout
    (``train/R001/sub-r001s001/ses-1/anat/...``). Each split gets a
    ``dataset_description.json``; ``split_manifest.tsv`` lists
    ``subject, cohort, split``.

    Parameters
    ----------
    output_dir : path
        The data folder (``data``).
    archive : path, optional
        The archive, downloaded already. Else it is downloaded from ``url`` into
        ``<output_dir>/.downloads/<name>.part``, kept across runs to resume.
    url : str
        Where to download the archive from.
    password : str, optional
        Its password; else :func:`resolve_password` asks.
    skip_checksum : bool
        Do not compare the archive's SHA-256 with the expected one.
    expected_sha256 : str, optional
        Expected SHA-256, :data:`ATLAS_SHA256` by default.
    test_fraction : float
        Share of labelled subjects held out as ``test``.
    seed : int
        Seed of the split.
    force : bool
        Replace existing ``train``/``test``/``unlabelled`` (only once the new tree
        is complete).
    progress : bool
        Show progress bars and a summary.
    keep_download : bool
        Keep the verified download as ``<output_dir>/.downloads/<name>``
        (deleted by default, once installed).
    retries : int
        Reconnections in a row, without progress, before a download gives up.
    password_file : path, optional
        Where to read the password when ``password`` is None (else
        ``$ATLAS_PASSWORD``, else a prompt); asked after the quick checks.

    Returns
    -------
    Path
        ``output_dir``.

    Raises
    ------
    DataError
        With what happened and what to do: wrong password
        (:class:`WrongPasswordError`), a file encrypted another way than ATLAS's
        (:class:`NotAtlasFormatError`), damaged or truncated archive
        (:class:`CorruptArchiveError`, :class:`UnsafeArchiveError`), checksum
        mismatch (:class:`ChecksumError`), no disk space, lost connection,
        interruption (Ctrl+C), existing data without ``force``. Nothing is
        installed then, and existing data is untouched.
    """
    # Resolved, so that a data folder linked to another disk is staged there.
    output = Path(output_dir).resolve()
    _refuse_to_replace(output, force)
    if not 0 < test_fraction < 1:
        raise DataError(f"--test-fraction must be in (0, 1), got {test_fraction}.")
    expected = None if skip_checksum else (expected_sha256 or ATLAS_SHA256).lower()
    download = None
    if archive is not None:
        archive = Path(archive)
        if not archive.is_file():
            raise DataError(
                f"{archive} does not exist. Check the path, or leave out --archive "
                "to download the archive."
            )
        name, source = str(archive), archive.name
    else:
        file_name = PurePosixPath(urllib.parse.urlparse(url).path).name
        part_path = (
            output / DOWNLOADS_DIR_NAME / f"{file_name or ATLAS_ARCHIVE_NAME}.part"
        )
        download = ResumableDownload(url, part_path, retries=retries)
        name = source = url
    # Asked only now: a wrong path or existing data is said before any typing.
    if password is None:
        password = resolve_password(password_file)
    output.parent.mkdir(parents=True, exist_ok=True)
    # Everything is built here, on the output's file system, then renamed.
    staging = staging_folder(output.parent, f".{output.name}.atlas-")
    try:
        if download is None:
            size = archive.stat().st_size
            _check_free_space({staging: size * EXPANSION_FACTOR})
            with open(archive, "rb") as file:
                _check_head(file.read(HEAD_SIZE), password, name)
            path = archive
            digest = _sha256_of_file(archive, progress) if expected else None
        else:
            download.start()
            size = download.total
            if size is not None:
                _check_free_space(
                    {
                        staging: size * EXPANSION_FACTOR,
                        download.part_path.parent: size - download.kept,
                    }
                )
            digest = _download(download, password, progress)
            path = download.part_path
        verified = _verify_checksum(digest, expected, name, download is not None)
        _unpack(path, password, staging / "extracted", name, verified, progress)
        rows = lay_out_release(
            staging / "extracted",
            staging / "new",
            test_fraction=test_fraction,
            seed=seed,
            source=source,
        )
        swap_into_place(staging / "new", output, INSTALLED_ENTRIES, staging / "old")
    except KeyboardInterrupt as interrupt:
        # A DataError, so that callers handle one exception type; the original
        # interruption stays chained.
        kept = ""
        if download is not None and download.received:
            kept = (
                f" The {human_size(download.received)} downloaded so far are kept "
                f"in {download.part_path}; the next run resumes from there."
            )
        raise DataError(
            f"Interrupted: nothing was installed in {output}, and what was there is "
            f"untouched.{kept} Run the command again to finish."
        ) from interrupt
    except ChecksumError:
        if download is not None:  # its message says so
            download.close()
            download.discard()
        raise
    except (CorruptArchiveError, UnsafeArchiveError) as error:
        if download is None:
            raise
        download.close()
        download.discard()
        raise type(error)(
            f"{error} The downloaded file was deleted; run again to download it afresh."
        ) from error
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        raise DataError(
            f"The disk holding {output.parent} is full ({error}). Nothing was "
            "installed. Free some space and run again."
        ) from error
    finally:
        if download is not None:
            download.close()
        shutil.rmtree(staging, ignore_errors=True)
    if download is not None:
        download.finish(keep=keep_download)
    if progress:
        counts = {
            split: sum(row[2] == split for row in rows)
            for split in ("train", "test", "unlabelled")
        }
        print(
            f"Installed ATLAS R2.0 in {output}: {counts['train']} train, "
            f"{counts['test']} test and {counts['unlabelled']} unlabelled subjects."
        )
    return output
