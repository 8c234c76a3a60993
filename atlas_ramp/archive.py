"""Install the real, encrypted ATLAS R2.0 archive as ``data/train``, ``data/test``.

The archive ``ATLAS_R2.0_encrypted.tar.gz`` (about 10 GB, given after signing the
ATLAS data use agreement) is a gzip-compressed tar, encrypted with
``openssl enc -aes-256-cbc -md sha256 -a``. By hand, installing it takes wget,
openssl, tar, a reshuffle script, and room for three copies. Here it is one
streaming pass, with memory that does not grow with the archive::

    bytes (HTTP download with resume, or the local file)
      ├─> SHA-256 (checked at the end: unverified data is never installed)
      └─> base64 → AES-256-CBC → gunzip → tar → files in a temporary folder

then a cohort-stratified train/test split of the labelled Training subjects,
built in that temporary folder and moved into place by renames at the very end.
Whatever goes wrong (wrong password, corrupted or truncated archive, checksum
mismatch, no disk space, Ctrl+C), a :class:`~atlas_ramp.bids.DataError` says what
happened and what to do, the temporary folder is removed, and the data already in
place is untouched.

The OpenSSL ``enc`` format, for the curious
-------------------------------------------
``openssl enc -aes-256-cbc -md sha256 -a`` writes, in base64 with a line break
every 64 characters: ``Salted__``, an 8-byte random salt, then the AES-256-CBC
ciphertext of the data padded with PKCS#7. Key and IV come from the password and
the salt by ``EVP_BytesToKey`` with SHA-256 and one iteration (see
:func:`evp_bytes_to_key`). The format has no MAC, so a wrong password is only
noticed by what the decrypted bytes look like: we expect gzip's magic bytes in the
first block, and valid padding in the last.
"""

from __future__ import annotations

import binascii
import errno
import getpass
import hashlib
import http.client
import itertools
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from tqdm.auto import tqdm

from ._io import swap_into_place
from .bids import DataError, Subject, find_subjects
from .splits import stratified_holdout

ATLAS_ARCHIVE_NAME = "ATLAS_R2.0_encrypted.tar.gz"
ATLAS_URL = (
    f"https://fcp-indi.s3.amazonaws.com/data/Projects/ATLAS/{ATLAS_ARCHIVE_NAME}"
)
ATLAS_SHA256 = "b9cdf26486e7dd325d5d6617f2218204bbaa0b649dbca03e729a41a449bef671"
PASSWORD_ENV_VAR = "ATLAS_PASSWORD"

# The extracted files take this many times the archive's size (the ATLAS archive
# expands about 1.1-1.5x; its base64 text is already 4/3 of the binary).
EXPANSION_FACTOR = 1.5

CHUNK_SIZE = 1 << 20  # bytes read, decrypted, decompressed at a time
TAR_BUFFER_SIZE = 1 << 16  # small: tarfile copies its buffer on each header read
DOWNLOAD_TIMEOUT_S = 60
DOWNLOAD_RETRIES = 3  # reconnections in a row without progress before giving up
RETRY_BACKOFF_S = 1.0  # first wait before reconnecting; doubles each time

SALT_HEADER = b"Salted__"
BASE64_SALT_HEADER = b"U2FsdGVkX1"  # base64 of "Salted__", as far as it is fixed
GZIP_MAGIC = b"\x1f\x8b"
AES_BLOCK = 16
_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_WHITESPACE = b" \t\r\n"

# Entries of the output folder that an installation replaces, all together.
INSTALLED_ENTRIES = ("train", "test", "unlabelled", "extras", "split_manifest.tsv")
DOWNLOADS_DIR_NAME = ".downloads"
ATLAS_REFERENCE = "https://doi.org/10.1038/s41597-022-01401-7"
ATLAS_LICENSE = (
    "ATLAS R2.0 data use agreement: do not redistribute; share only with people "
    "who signed it."
)


class WrongPasswordError(DataError):
    """The archive decrypts to bytes that are not gzip: the password is wrong."""


class CorruptArchiveError(DataError):
    """The archive is truncated or damaged (or is not the expected file)."""


class UnsafeArchiveError(DataError):
    """A tar member would be written outside the target folder, or is a device."""


class ChecksumError(DataError):
    """The archive's SHA-256 differs from the expected one."""


# --------------------------------------------------------------------------
# Password
# --------------------------------------------------------------------------


def resolve_password(password_file: Path | str | None = None) -> str:
    """Get the archive password, never echoing it.

    Sources, in order: the first line of ``password_file``, the environment
    variable ``ATLAS_PASSWORD``, an interactive prompt (``getpass``).

    Parameters
    ----------
    password_file : path, optional
        A file whose first line is the password (trailing newline ignored).

    Returns
    -------
    str
        The password.

    Raises
    ------
    DataError
        The file is missing or empty, or no password could be obtained.
    """
    if password_file is not None:
        path = Path(password_file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as error:
            raise DataError(
                f"Cannot read the password file {path}: {error.strerror}. Check the "
                f"path, or set ${PASSWORD_ENV_VAR} instead."
            ) from error
        if not lines or not lines[0]:
            raise DataError(
                f"The password file {path} is empty: its first line must be the "
                "password that came with the ATLAS data use agreement."
            )
        return lines[0]
    from_env = os.environ.get(PASSWORD_ENV_VAR)
    if from_env:
        return from_env
    try:
        password = getpass.getpass(
            "ATLAS archive password (from the data use agreement): "
        )
    except EOFError:
        password = ""
    if not password:
        raise DataError(
            f"No password given. Type it at the prompt, set ${PASSWORD_ENV_VAR}, or "
            "pass --password-file FILE."
        )
    return password


# --------------------------------------------------------------------------
# OpenSSL enc format: key derivation, decryption, encryption
# --------------------------------------------------------------------------


def evp_bytes_to_key(
    password: bytes, salt: bytes, key_length: int = 32, iv_length: int = 16
) -> tuple[bytes, bytes]:
    """Derive key and IV like ``openssl enc -md sha256`` (OpenSSL's EVP_BytesToKey).

    ``D1 = sha256(password + salt)``, ``D2 = sha256(D1 + password + salt)``, ...;
    the key is the first ``key_length`` bytes of ``D1 + D2 + ...``, the IV the next
    ``iv_length`` bytes. One iteration, as ``openssl enc`` without ``-pbkdf2``.

    Parameters
    ----------
    password : bytes
        The password, encoded as typed (UTF-8).
    salt : bytes
        The 8 bytes after ``Salted__`` in the file.

    Returns
    -------
    key, iv : bytes
    """
    derived = b""
    block = b""
    while len(derived) < key_length + iv_length:
        block = hashlib.sha256(block + password + salt).digest()
        derived += block
    return derived[:key_length], derived[key_length : key_length + iv_length]


def _peek(chunks: Iterator[bytes], size: int) -> tuple[bytes, Iterator[bytes]]:
    """Look at the first ``size`` bytes of a stream without consuming them.

    Returns the head (shorter if the stream is) and an iterator over the whole
    stream, head included.
    """
    seen = []
    length = 0
    for chunk in chunks:
        seen.append(chunk)
        length += len(chunk)
        if length >= size:
            break
    return b"".join(seen)[:size], itertools.chain(seen, chunks)


def _take(chunks: Iterator[bytes], size: int) -> tuple[bytes, Iterator[bytes]]:
    """Split the first ``size`` bytes off a stream; return them and the rest."""
    head = bytearray()
    for chunk in chunks:
        head += chunk
        if len(head) >= size:
            break
    rest = bytes(head[size:])
    return bytes(head[:size]), itertools.chain([rest] if rest else [], chunks)


def _decode_base64(chunks: Iterable[bytes], name: str) -> Iterator[bytes]:
    """Decode base64 text chunk by chunk, ignoring line breaks.

    Each chunk is decoded up to a multiple of 4 characters; the 0-3 characters
    left over wait for the next chunk.
    """
    pending = b""
    for chunk in chunks:
        text = pending + chunk.replace(b"\n", b"")  # fast path for OpenSSL's lines
        stray = text.translate(None, _BASE64_ALPHABET)
        if stray:
            if stray.translate(None, _WHITESPACE):
                raise CorruptArchiveError(
                    f"{name} holds characters that are not base64: the file is "
                    "damaged. Download it again."
                )
            text = text.translate(None, _WHITESPACE)  # \r\n line ends, spaces
        usable = len(text) - len(text) % 4
        pending = text[usable:]
        if usable:
            yield binascii.a2b_base64(memoryview(text)[:usable])
    if pending:
        raise CorruptArchiveError(
            f"{name} ends in the middle of a base64 group: the file is truncated. "
            "Download it again (a download resumes where it stopped)."
        )


def decrypt_openssl_stream(
    chunks: Iterable[bytes], password: str | bytes, *, name: str = "the archive"
) -> Iterator[bytes]:
    """Decrypt ``openssl enc -aes-256-cbc -md sha256 [-a]`` output, chunk by chunk.

    The base64 form (``-a``, as ATLAS is distributed) and the binary form are told
    apart by their first bytes. Memory stays at about one chunk.

    Parameters
    ----------
    chunks : iterable of bytes
        The encrypted file, in pieces of any size.
    password : str or bytes
        The password (``str`` is encoded as UTF-8, as OpenSSL gets a typed one).
    name : str
        What to call the input in error messages (a file name or a URL).

    Yields
    ------
    bytes
        Decrypted pieces, padding removed.

    Raises
    ------
    CorruptArchiveError
        Not OpenSSL ``enc`` output, or truncated.
    WrongPasswordError
        The last block's padding is invalid: wrong password (or a damaged file).
    """
    if isinstance(password, str):
        password = password.encode("utf-8")
    head, chunks = _peek(iter(chunks), len(BASE64_SALT_HEADER))
    if head.startswith(BASE64_SALT_HEADER):
        binary = _decode_base64(chunks, name)
    elif head.startswith(SALT_HEADER):
        binary = chunks
    else:
        raise CorruptArchiveError(
            f"{name} is not an OpenSSL-encrypted file (it does not start with "
            f"'Salted__', in base64 or binary). Check that it is {ATLAS_ARCHIVE_NAME}"
            " and download it again if it is."
        )
    header, ciphertext = _take(binary, len(SALT_HEADER) + 8)
    if len(header) < len(SALT_HEADER) + 8:
        raise CorruptArchiveError(
            f"{name} stops inside its OpenSSL header: it is truncated. Download it "
            "again."
        )
    key, iv = evp_bytes_to_key(password, header[len(SALT_HEADER) :])
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    # CBC gives whole blocks. Hold the last one back: only at the end of the
    # stream do we know it is the one carrying the padding.
    last_block = b""
    for piece in ciphertext:
        plain = decryptor.update(piece)
        if not plain:
            continue
        ready = last_block + memoryview(plain)[:-AES_BLOCK]
        last_block = plain[-AES_BLOCK:]
        if ready:
            yield ready
    try:
        decryptor.finalize()
    except ValueError as error:  # the length is not a whole number of blocks
        raise CorruptArchiveError(
            f"{name} is truncated: its encrypted part does not end on a whole AES "
            "block. Download it again (a download resumes where it stopped)."
        ) from error
    padding = last_block[-1] if last_block else 0
    if not 1 <= padding <= AES_BLOCK or last_block[-padding:] != bytes(
        [padding] * padding
    ):
        raise WrongPasswordError(
            f"{name} does not decrypt cleanly (invalid padding at the end): the "
            "password is wrong, or the file is truncated or damaged. Check the "
            "password; if it is right, download the archive again."
        )
    if last_block[:-padding]:
        yield last_block[:-padding]


def encrypt_openssl_stream(
    chunks: Iterable[bytes],
    password: str | bytes,
    *,
    base64: bool = True,
    salt: bytes | None = None,
) -> Iterator[bytes]:
    """Encrypt like ``openssl enc -aes-256-cbc -md sha256 -salt [-a]``.

    The inverse of :func:`decrypt_openssl_stream`; ``openssl enc -d`` reads its
    output. The kit uses it to build test archives and benchmarks.

    Parameters
    ----------
    chunks : iterable of bytes
        The plain data, in pieces of any size.
    password : str or bytes
        The password.
    base64 : bool
        Write base64 text with 64-character lines (``-a``), else binary.
    salt : bytes, optional
        8 bytes; random by default (as OpenSSL does). Fix it for reproducible files.

    Yields
    ------
    bytes
        The encrypted file, in pieces.
    """
    if isinstance(password, str):
        password = password.encode("utf-8")
    salt = os.urandom(8) if salt is None else salt
    if len(salt) != 8:
        raise ValueError(f"The salt must be 8 bytes, got {len(salt)}.")
    key, iv = evp_bytes_to_key(password, salt)
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()

    def binary() -> Iterator[bytes]:
        yield SALT_HEADER + salt
        length = 0
        for chunk in chunks:
            length += len(chunk)
            yield encryptor.update(chunk)
        padding = AES_BLOCK - length % AES_BLOCK  # PKCS#7: 1 to 16 bytes
        yield encryptor.update(bytes([padding] * padding)) + encryptor.finalize()

    if not base64:
        yield from binary()
        return
    # 48 bytes make one 64-character line, so encode whole lines only.
    pending = b""
    for piece in binary():
        data = pending + piece
        usable = len(data) - len(data) % 48
        pending = data[usable:]
        if usable:
            yield _base64_lines(data[:usable])
    if pending:
        yield _base64_lines(pending)


def _base64_lines(data: bytes) -> bytes:
    """Base64 text in 64-character lines, each ending with a newline (as OpenSSL)."""
    text = binascii.b2a_base64(data, newline=False)
    return b"".join(text[i : i + 64] + b"\n" for i in range(0, len(text), 64))


def encrypt_openssl_file(
    source: Path | str,
    destination: Path | str,
    password: str | bytes,
    *,
    base64: bool = True,
    salt: bytes | None = None,
) -> Path:
    """Encrypt a file like ``openssl enc -aes-256-cbc -md sha256 -salt [-a]``.

    See :func:`encrypt_openssl_stream`. Returns ``destination``.
    """
    destination = Path(destination)
    with open(source, "rb") as plain, open(destination, "wb") as encrypted:
        pieces = iter(lambda: plain.read(CHUNK_SIZE), b"")
        for piece in encrypt_openssl_stream(pieces, password, base64=base64, salt=salt):
            encrypted.write(piece)
    return destination


# --------------------------------------------------------------------------
# gzip and tar, streaming and safe
# --------------------------------------------------------------------------


def gunzip_stream(
    chunks: Iterable[bytes], *, name: str = "the archive"
) -> Iterator[bytes]:
    """Decompress gzip data chunk by chunk, checking its CRC at the end.

    No output piece is larger than :data:`CHUNK_SIZE`, however well the input
    compresses, so memory stays flat. Concatenated gzip members are read in turn;
    zero bytes after the last one are ignored.

    Raises
    ------
    CorruptArchiveError
        The data is not gzip, is damaged (bad CRC), or stops early.
    """
    decompressor = zlib.decompressobj(wbits=31)  # 31: gzip header and trailer
    for chunk in chunks:
        data = chunk
        while data:
            if decompressor.eof:
                if not data.strip(b"\0"):
                    break  # zero padding after the end
                decompressor = zlib.decompressobj(wbits=31)  # another member
            try:
                plain = decompressor.decompress(data, CHUNK_SIZE)
            except zlib.error as error:
                raise CorruptArchiveError(
                    f"{name}: the compressed data is damaged ({error}). Download the "
                    "archive again."
                ) from error
            if plain:
                yield plain
            data = (
                decompressor.unused_data
                if decompressor.eof
                else decompressor.unconsumed_tail
            )
    if not decompressor.eof:
        raise CorruptArchiveError(
            f"{name} is truncated: the compressed data stops before its end. "
            "Download it again (a download resumes where it stopped)."
        )


class _ChunkReader:
    """A read-only file object over an iterator of byte chunks (for tarfile)."""

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

    def drain(self) -> None:
        """Read the stream to its end, discarding it (this runs the checks)."""
        self._view = memoryview(b"")
        for _ in self._chunks:
            pass


def _is_inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def _unsafe(name: str, member: str, why: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(
        f"{name} contains an unsafe member {member!r}: {why}. Extraction stopped "
        "and nothing was installed. Do not use this archive; download the original "
        "again."
    )


def _member_target(member_name: str, root: str, name: str) -> str:
    """Where a member goes below ``root``; refuses absolute paths and ``..``."""
    path = PurePosixPath(member_name)
    if path.is_absolute() or re.match(r"^([A-Za-z]:)?[\\/]", member_name):
        raise _unsafe(name, member_name, "its path is absolute")
    if ".." in path.parts:
        raise _unsafe(name, member_name, "its path goes up with '..'")
    return os.path.join(root, *path.parts)


def _extract_regular_file(tar: tarfile.TarFile, member: tarfile.TarInfo, target: str):
    """Copy one file's content out of the tar stream, a chunk at a time."""
    content = tar.extractfile(member)
    with open(target, "wb") as out:
        shutil.copyfileobj(content, out, CHUNK_SIZE)


_SPECIAL_KINDS = {
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
}


def _extract_member(
    tar: tarfile.TarFile, member: tarfile.TarInfo, root: str, name: str
) -> None:
    target = _member_target(member.name, root, name)
    if not (member.isdir() or member.isfile() or member.issym() or member.islnk()):
        kind = _SPECIAL_KINDS.get(member.type, f"a special file (type {member.type!r})")
        raise _unsafe(name, member.name, f"it is {kind}")
    # A link extracted earlier could make the folder point elsewhere; check
    # before creating anything (realpath resolves the links that exist).
    folder = os.path.dirname(target)
    if not _is_inside(os.path.realpath(folder), root):
        raise _unsafe(name, member.name, "its folder is a link that leaves the tree")
    if member.isdir():
        os.makedirs(target, exist_ok=True)
        return
    os.makedirs(folder, exist_ok=True)
    if os.path.islink(target) or os.path.isfile(target):
        os.unlink(target)  # never write through an earlier link
    if member.isfile():
        _extract_regular_file(tar, member, target)
    elif member.issym():
        pointed = os.path.realpath(os.path.join(folder, member.linkname))
        if os.path.isabs(member.linkname) or not _is_inside(pointed, root):
            raise _unsafe(
                name, member.name, f"it links to {member.linkname!r}, outside the tree"
            )
        os.symlink(member.linkname, target)
    else:  # hard link, to a member extracted earlier
        try:
            source = os.path.realpath(_member_target(member.linkname, root, name))
        except UnsafeArchiveError:
            source = None
        if source is None or not _is_inside(source, root) or not os.path.isfile(source):
            raise _unsafe(
                name,
                member.name,
                f"it is a hard link to {member.linkname!r}, outside the tree",
            )
        try:
            os.link(source, target)
        except OSError:  # file system without hard links
            shutil.copyfile(source, target)


def extract_tar_stream(fileobj, destination: Path | str, *, name: str = "the archive"):
    """Extract a tar read front to back from ``fileobj``, refusing unsafe members.

    Refused (:class:`UnsafeArchiveError`, naming the member): absolute paths,
    paths with ``..``, symbolic or hard links that leave ``destination``, files
    written through such links, devices and FIFOs. File permissions and owners
    from the archive are not applied.

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
    root = os.path.realpath(destination)
    os.makedirs(root, exist_ok=True)
    count = 0
    try:
        with tarfile.open(fileobj=fileobj, mode="r|", bufsize=TAR_BUFFER_SIZE) as tar:
            for member in tar:
                _extract_member(tar, member, root, name)
                count += 1
    except (tarfile.TarError, EOFError) as error:
        raise CorruptArchiveError(
            f"{name}: the tar inside is damaged or truncated ({error}). Download the "
            "archive again."
        ) from error
    return count


# --------------------------------------------------------------------------
# Download with resume
# --------------------------------------------------------------------------

_CONTENT_RANGE_RE = re.compile(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)")
_RETRYABLE_ERRORS = (
    http.client.HTTPException,
    ConnectionError,
    TimeoutError,
    urllib.error.URLError,
)


def _human_size(nbytes: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(nbytes) < 1000 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    raise AssertionError("unreachable")


class _ResumableDownload:
    """An HTTP download kept in a ``.part`` file, resumed across cuts and runs.

    :meth:`start` asks for the bytes after those already in the ``.part`` file
    (``Range: bytes=N-``); :meth:`chunks` yields the whole file in order: the kept
    bytes read back from disk, then the new ones as they arrive (each appended to
    the ``.part`` file first). A cut connection is reopened where it stopped.
    """

    def __init__(self, url: str, part_path: Path, *, retries: int = DOWNLOAD_RETRIES):
        self.url = url
        self.part_path = Path(part_path)
        self.retries = retries
        self.total: int | None = None  # size of the file, when the server says
        self.kept = 0  # bytes of the .part file to replay from disk
        self.received = 0  # bytes passed on so far, kept and new
        self._response = None

    def _connect(self, position: int):
        """Request the file from ``position`` on.

        Returns ``(response, body_start, total)``: ``response`` is None when the
        server answers 416 (nothing after ``position``); ``body_start`` is where the
        body starts (0 when the server ignores ``Range``).
        """
        headers = {"User-Agent": "atlas-ramp"}
        if position:
            headers["Range"] = f"bytes={position}-"
        request = urllib.request.Request(self.url, headers=headers)
        for attempt in itertools.count(1):
            try:
                response = urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S)
                break
            except urllib.error.HTTPError as error:
                error.close()
                if error.code == 416:  # "Range Not Satisfiable": nothing after it
                    match = _CONTENT_RANGE_RE.fullmatch(
                        error.headers.get("Content-Range", "")
                    )
                    if match is None or match[2] == "*":
                        return None, position, None
                    return None, position, int(match[2])
                retryable = error.code >= 500 or error.code == 429
                if not retryable or attempt > self.retries:
                    raise DataError(
                        f"The server answered '{error.code} {error.reason}' for "
                        f"{self.url}. Check --url, or download the archive another "
                        "way and pass --archive PATH."
                    ) from error
            except _RETRYABLE_ERRORS as error:
                if attempt > self.retries:
                    raise DataError(
                        f"Cannot reach {self.url} ({error}). Check your connection "
                        "and run again (a download resumes where it stopped), or "
                        "download the archive another way and pass --archive PATH."
                    ) from error
            time.sleep(RETRY_BACKOFF_S * 2 ** (attempt - 1))
        if response.status == 206:
            match = _CONTENT_RANGE_RE.fullmatch(response.headers["Content-Range"] or "")
            if match is None or match[1] is None or int(match[1]) != position:
                response.close()
                raise DataError(
                    f"{self.url} sent the wrong part of the file (Content-Range "
                    f"{response.headers['Content-Range']!r} for bytes {position}-). "
                    f"Delete {self.part_path} and run again."
                )
            return response, position, None if match[2] == "*" else int(match[2])
        length = response.headers["Content-Length"]
        return response, 0, int(length) if length else None

    def start(self) -> None:
        """Open the download, resuming the ``.part`` file if the server allows."""
        self.part_path.parent.mkdir(parents=True, exist_ok=True)
        kept = self.part_path.stat().st_size if self.part_path.exists() else 0
        response, body_start, total = self._connect(kept)
        if response is None and kept and total == kept:
            self.total = self.kept = kept  # complete already: replay it only
            return
        if response is None or body_start != kept:
            # The server ignores ranges, or the .part file is not a prefix of
            # this file (larger than it): start over.
            if response is None:
                response, body_start, total = self._connect(0)
            self.part_path.unlink(missing_ok=True)
            kept = 0
        self.total, self.kept = total, kept
        if kept:
            # Reconnect after replaying the kept bytes, rather than leave this
            # connection idle while they are processed.
            response.close()
            response = None
        self._response = response

    def _reopen(self, position: int):
        """Reconnect at ``position`` after a cut; skip bytes if ranges are ignored."""
        response, body_start, total = self._connect(position)
        if response is None or (self.total is not None and total != self.total):
            if response is not None:
                response.close()
            raise CorruptArchiveError(
                f"The file at {self.url} changed while it was being downloaded."
            )
        to_skip = position - body_start
        while to_skip:
            skipped = len(response.read(min(CHUNK_SIZE, to_skip)))
            if not skipped:
                raise ConnectionError("connection closed while skipping")
            to_skip -= skipped
        return response

    def chunks(self) -> Iterator[bytes]:
        """Yield the whole file in order; the new bytes are saved first."""
        if self.kept:
            with open(self.part_path, "rb") as kept_file:
                while self.received < self.kept:
                    chunk = kept_file.read(min(CHUNK_SIZE, self.kept - self.received))
                    if not chunk:
                        raise CorruptArchiveError(f"{self.part_path} shrank meanwhile.")
                    self.received += len(chunk)
                    yield chunk
        response, self._response = self._response, None
        failures = 0
        try:
            with open(self.part_path, "ab") as part_file:
                while self.total is None or self.received < self.total:
                    chunk, error = b"", None
                    try:
                        if response is None:
                            response = self._reopen(self.received)
                        chunk = response.read(CHUNK_SIZE)
                    except _RETRYABLE_ERRORS as network_error:
                        error = network_error
                    if not chunk:
                        if response is not None:
                            response.close()
                            response = None
                        if error is None and self.total is None:
                            break  # the end of a body of unknown length
                        failures += 1
                        if failures > self.retries:
                            raise DataError(
                                f"The connection to {self.url} was lost "
                                f"{failures} times in a row ({error or 'closed'}). "
                                f"The {_human_size(self.received)} received so "
                                f"far are kept in {self.part_path}: run the same "
                                "command again to resume."
                            )
                        time.sleep(RETRY_BACKOFF_S * 2 ** (failures - 1))
                        continue
                    failures = 0
                    part_file.write(chunk)
                    self.received += len(chunk)
                    yield chunk
        finally:
            if response is not None:
                response.close()

    def discard(self) -> None:
        """Delete the ``.part`` file (it holds a damaged or different file)."""
        self.part_path.unlink(missing_ok=True)

    def finish(self, keep: bool) -> Path | None:
        """After success: keep the verified file under its own name, or delete it."""
        kept_path = None
        if keep:
            kept_path = self.part_path.with_suffix("")  # drop ".part"
            os.replace(self.part_path, kept_path)
        else:
            self.part_path.unlink(missing_ok=True)
        try:
            self.part_path.parent.rmdir()  # only if empty
        except OSError:
            pass
        return kept_path


def _read_file(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK_SIZE):
            yield chunk


# --------------------------------------------------------------------------
# The one pass: bytes → checksum, decrypt, gunzip, untar
# --------------------------------------------------------------------------


class _Tally:
    """Passes chunks through, hashing and counting them on the way."""

    def __init__(self, progress_bar):
        self.hasher = hashlib.sha256()
        self.progress_bar = progress_bar
        self.finished = False  # True once the whole source went through

    def __call__(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        # hashlib releases the GIL on large inputs: hash in a second thread while
        # this one decodes. One chunk in flight at a time keeps memory flat.
        with ThreadPoolExecutor(max_workers=1) as hashing:
            in_flight = None
            for chunk in chunks:
                self.progress_bar.update(len(chunk))
                if in_flight is not None:
                    in_flight.result()
                in_flight = hashing.submit(self.hasher.update, chunk)
                yield chunk
            if in_flight is not None:
                in_flight.result()
        self.finished = True


def _expect_gzip(chunks: Iterable[bytes], name: str) -> Iterator[bytes]:
    """Fail fast on a wrong password: the decrypted archive must start as gzip."""
    head, chunks = _peek(iter(chunks), len(GZIP_MAGIC))
    if head != GZIP_MAGIC:
        raise WrongPasswordError(
            f"Wrong password for {name}: the decrypted data does not start like a "
            "gzip file. Check the password that came with the ATLAS data use "
            "agreement (mind the case and spaces) and run again."
        )
    yield from chunks


def unpack_archive_stream(
    chunks: Iterable[bytes],
    password: str | bytes,
    destination: Path | str,
    *,
    name: str = "the archive",
) -> int:
    """Decrypt, decompress and extract an archive in one streaming pass.

    The stream is read to its very end, so that padding and gzip CRC are checked
    (and a checksum computed on the way is complete). A plain, unencrypted
    ``.tar.gz`` (gzip magic bytes at the start) is accepted as well.

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
    head, raw = _peek(iter(chunks), len(BASE64_SALT_HEADER))
    if head.startswith(GZIP_MAGIC):
        compressed = raw  # decrypted by hand already
    else:
        compressed = _expect_gzip(
            decrypt_openssl_stream(raw, password, name=name), name
        )
    tar_stream = _ChunkReader(gunzip_stream(compressed, name=name))
    count = extract_tar_stream(tar_stream, destination, name=name)
    tar_stream.drain()  # tar padding, gzip trailer, AES padding
    return count


# --------------------------------------------------------------------------
# Layout of the installed data, and the final swap
# --------------------------------------------------------------------------


def write_dataset_description(
    split_dir: Path, name: str, description: str, source: str | None = None
) -> Path:
    """Write a BIDS ``dataset_description.json`` for one split folder.

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
    """
    content = {
        "Name": name,
        "BIDSVersion": "1.8.0",
        "DatasetType": "derivative",
        "License": ATLAS_LICENSE,
        "GeneratedBy": [{"Name": "atlas_ramp", "Description": description}],
        "ReferencesAndLinks": [ATLAS_REFERENCE],
    }
    if source:
        content["SourceDatasets"] = [{"URL": source}]
    path = Path(split_dir) / "dataset_description.json"
    path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    return path


def write_split_manifest(path: Path, rows: Iterable[tuple[str, str, str]]) -> Path:
    """Write a ``split_manifest.tsv``: one ``subject, cohort, split`` row each."""
    lines = ["subject\tcohort\tsplit", *("\t".join(row) for row in sorted(rows))]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Path(path)


def _locate_release_folder(root: Path, folder_name: str) -> Path | None:
    """The folder called ``folder_name`` that holds T1w images, at any depth."""
    found = [
        folder
        for folder in sorted(root.rglob(folder_name))
        if folder.is_dir() and next(folder.rglob("sub-*_T1w.nii.gz"), None)
    ]
    if len(found) > 1:
        listing = ", ".join(str(folder.relative_to(root)) for folder in found)
        raise DataError(
            f"The archive holds several '{folder_name}' folders with images "
            f"({listing}); expected one. Is it the ATLAS R2.0 archive?"
        )
    return found[0] if found else None


def _move_subject(subject: Subject, split_root: Path, destination: Path) -> None:
    """Move a subject's folder (or its files) keeping the path below the split."""
    folder = next(
        (
            parent
            for parent in subject.t1w_path.parents
            if parent.name == subject.subject_id and split_root in parent.parents
        ),
        None,
    )
    if folder is not None:
        paths = [folder]
    else:
        paths = [p for p in (subject.t1w_path, subject.mask_path) if p is not None]
    for path in paths:
        target = destination / path.relative_to(split_root)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(path, target)


def _remove_empty_folders(root: Path) -> None:
    for folder, _, _ in os.walk(root, topdown=False):
        try:
            os.rmdir(folder)
        except OSError:
            pass  # not empty


def _lay_out_release(
    extracted: Path,
    new_root: Path,
    *,
    test_fraction: float,
    seed: int,
    source: str,
) -> list[tuple[str, str, str]]:
    """Move the extracted release into ``train``, ``test``, ``unlabelled``.

    Returns the manifest rows ``(subject, cohort, split)``.
    """
    training = _locate_release_folder(extracted, "Training")
    if training is None:
        raise DataError(
            f"No 'Training' folder with T1w images (sub-*_T1w.nii.gz) in {source}. "
            "Is it the ATLAS R2.0 archive?"
        )
    testing = _locate_release_folder(extracted, "Testing")
    labelled = find_subjects(training)
    if labelled[0].mask_path is None:
        raise DataError(
            f"The subjects of {source}'s Training folder have no lesion masks; "
            "they cannot be used to train or score."
        )
    subject_ids = [subject.subject_id for subject in labelled]
    cohorts = [subject.cohort for subject in labelled]
    train_ids, test_ids = stratified_holdout(subject_ids, cohorts, test_fraction, seed)
    if not train_ids or not test_ids:
        raise DataError(
            f"{source} has {len(subject_ids)} labelled subjects: too few to hold out "
            f"a test split with --test-fraction {test_fraction}."
        )
    split_of = dict.fromkeys(train_ids, "train") | dict.fromkeys(test_ids, "test")
    for subject in labelled:
        _move_subject(subject, training, new_root / split_of[subject.subject_id])
    rows = [(s.subject_id, s.cohort, split_of[s.subject_id]) for s in labelled]
    how = (
        "cohort-stratified hold-out of the labelled ATLAS R2.0 Training subjects "
        f"(atlas_ramp.splits.stratified_holdout, test_fraction={test_fraction}, "
        f"seed={seed})"
    )
    write_dataset_description(
        new_root / "train", "ATLAS R2.0, train split", f"Train side of a {how}.", source
    )
    write_dataset_description(
        new_root / "test", "ATLAS R2.0, test split", f"Test side of a {how}.", source
    )
    if testing is not None:
        unlabelled = find_subjects(testing)
        os.rename(testing, new_root / "unlabelled")
        rows += [(s.subject_id, s.cohort, "unlabelled") for s in unlabelled]
        write_dataset_description(
            new_root / "unlabelled",
            "ATLAS R2.0, unlabelled Testing subjects",
            "The ATLAS R2.0 Testing subjects, whose lesion masks are withheld.",
            source,
        )
    # Whatever else the archive holds (metadata tables, READMEs) is kept aside.
    _remove_empty_folders(extracted)
    if extracted.exists():
        os.rename(extracted, new_root / "extras")
    write_split_manifest(new_root / "split_manifest.tsv", rows)
    return sorted(rows)


def _unpack_verified(
    chunks: Iterable[bytes],
    password: str,
    destination: Path,
    name: str,
    size: int | None,
    expected: str | None,
    progress: bool,
) -> None:
    """:func:`unpack_archive_stream` with a progress bar and the SHA-256 check."""
    with tqdm(
        total=size,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=Path(name).name,
        disable=not progress,
    ) as bar:
        tally = _Tally(bar)
        try:
            unpack_archive_stream(tally(chunks), password, destination, name=name)
        except DataError as error:
            # Failing at the very end (padding, gzip CRC) with the whole file
            # hashed: a checksum mismatch says best what is wrong.
            if tally.finished and expected is not None:
                _verify_checksum(tally.hasher, expected, name, also=error)
            raise
    if expected is not None:
        _verify_checksum(tally.hasher, expected, name)


def _verify_checksum(hasher, expected: str, name: str, also: Exception = None):
    digest = hasher.hexdigest()
    if digest != expected:
        raise ChecksumError(
            f"The SHA-256 of {name} is {digest}, expected {expected}: the file is "
            "damaged or truncated, or is another release. Nothing was installed. "
            "Download it again, or pass --skip-checksum if you trust this release."
        ) from also


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
                f"{_human_size(nbytes)} there, {_human_size(free)} are free. Free "
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
) -> Path:
    """Install the encrypted ATLAS R2.0 archive as ``train``, ``test``, ``unlabelled``.

    One streaming pass: the archive (read from ``archive``, or downloaded from
    ``url`` with resume) is hashed, decrypted, decompressed and extracted into a
    temporary folder beside ``output_dir``; the labelled Training subjects are
    split (cohort-stratified, seeded) into ``train`` and ``test``, the Testing
    subjects go to ``unlabelled``, anything else in the archive to ``extras``;
    then the new tree replaces the old one by renames. Files keep the ATLAS layout
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
        Show a progress bar and a summary.
    keep_download : bool
        Keep the verified download as ``<output_dir>/.downloads/<name>``
        (deleted by default, once installed).
    retries : int
        Reconnections in a row, without progress, before a download gives up.

    Returns
    -------
    Path
        ``output_dir``.

    Raises
    ------
    DataError
        With what happened and what to do: wrong password
        (:class:`WrongPasswordError`), damaged or truncated archive
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
    if password is None:
        password = resolve_password()
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
        download = _ResumableDownload(url, part_path, retries=retries)
        name = source = url
    output.parent.mkdir(parents=True, exist_ok=True)
    # Everything is built here, on the output's file system, then renamed.
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.atlas-", dir=output.parent))
    chunks = None
    try:
        if download is None:
            size = archive.stat().st_size
            _check_free_space({staging: size * EXPANSION_FACTOR})
            chunks = _read_file(archive)
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
            chunks = download.chunks()
        _unpack_verified(
            chunks, password, staging / "extracted", name, size, expected, progress
        )
        chunks.close()  # closes the file, or the connection and the .part file
        rows = _lay_out_release(
            staging / "extracted",
            staging / "new",
            test_fraction=test_fraction,
            seed=seed,
            source=source,
        )
        swap_into_place(staging / "new", output, INSTALLED_ENTRIES, staging / "old")
    except KeyboardInterrupt as interrupt:
        # A DataError, as the issue asks, so that callers handle one exception
        # type; the original interruption stays chained.
        kept = ""
        if download is not None and download.received:
            kept = (
                f" The {_human_size(download.received)} downloaded so far are kept "
                f"in {download.part_path}; the next run resumes from there."
            )
        raise DataError(
            f"Interrupted: nothing was installed in {output}, and what was there is "
            f"untouched.{kept} Run the command again to finish."
        ) from interrupt
    except (CorruptArchiveError, UnsafeArchiveError, ChecksumError) as error:
        if download is None:
            raise
        if chunks is not None:
            chunks.close()
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
        if chunks is not None:
            chunks.close()
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
