"""The OpenSSL ``enc`` format of the ATLAS archive, decrypted as a stream.

``openssl enc -aes-256-cbc -md sha256 -a`` writes, in base64 with a line break
every 64 characters: ``Salted__``, an 8-byte random salt, then the AES-256-CBC
ciphertext of the data padded with PKCS#7. Key and IV come from the password and
the salt by OpenSSL's ``EVP_BytesToKey`` with SHA-256 and one iteration (see
:func:`evp_bytes_to_key`). The format has no MAC, so a wrong password is only
noticed by what the decrypted bytes look like: gzip's magic bytes in the first
block (:func:`check_password`), valid padding in the last.

What is written by hand here, and why: ``EVP_BytesToKey`` (``cryptography``
offers only modern key derivations; it is six lines, and shows how weak the
format is) and a base64 decoder that keeps the 0-3 characters of a group cut
between two chunks (:mod:`binascii` decodes whole groups only). AES-CBC and the
PKCS#7 padding check are ``cryptography``'s.
"""

from __future__ import annotations

import binascii
import hashlib
import itertools
from collections.abc import Iterable, Iterator

from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from .errors import CorruptArchiveError, NotAtlasFormatError, WrongPasswordError
from .release import ATLAS_ARCHIVE_NAME

SALT_HEADER = b"Salted__"
BASE64_SALT_HEADER = b"U2FsdGVkX1"  # base64 of "Salted__", as far as it is fixed
GZIP_MAGIC = b"\x1f\x8b"
AES_BLOCK = 16
KEY_LENGTH, IV_LENGTH = 32, 16
#: Bytes of the file's start that :func:`check_password` needs (one base64 line).
HEAD_SIZE = 64
#: ``openssl enc -pbkdf2`` without ``-iter``: PBKDF2-HMAC-SHA256, 10,000 rounds.
OPENSSL_PBKDF2_ITERATIONS = 10_000

_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_WHITESPACE = b" \t\r\n"


def evp_bytes_to_key(
    password: bytes,
    salt: bytes,
    key_length: int = KEY_LENGTH,
    iv_length: int = IV_LENGTH,
    digest: str = "sha256",
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
    digest : str
        The hash (``-md``): ``sha256`` for ATLAS, ``md5`` before OpenSSL 1.1.

    Returns
    -------
    key, iv : bytes
    """
    derived = b""
    block = b""
    while len(derived) < key_length + iv_length:
        block = hashlib.new(digest, block + password + salt).digest()
        derived += block
    return derived[:key_length], derived[key_length : key_length + iv_length]


def pbkdf2_key(password: bytes, salt: bytes) -> tuple[bytes, bytes]:
    """Key and IV of ``openssl enc -pbkdf2`` (default iterations, SHA-256)."""
    derived = PBKDF2HMAC(
        hashes.SHA256(), KEY_LENGTH + IV_LENGTH, salt, OPENSSL_PBKDF2_ITERATIONS
    ).derive(password)
    return derived[:KEY_LENGTH], derived[KEY_LENGTH:]


#: How ``openssl enc`` turns a password and salt into key and IV, by option:
#: ATLAS's first, then the usual others (to name them when a file uses one).
KEY_DERIVATIONS = {
    "-md sha256": evp_bytes_to_key,
    "-pbkdf2": pbkdf2_key,  # 10,000 rounds of SHA-256
    "-md md5": lambda password, salt: evp_bytes_to_key(password, salt, digest="md5"),
}
#: The one the ATLAS archive uses.
ATLAS_KEY_DERIVATION = "-md sha256"


def _encoded(password: str | bytes) -> bytes:
    return password.encode("utf-8") if isinstance(password, str) else password


def peek(chunks: Iterator[bytes], size: int) -> tuple[bytes, Iterator[bytes]]:
    """The first ``size`` bytes of a stream, and the whole stream, head included."""
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


def _binary_stream(chunks: Iterable[bytes], name: str) -> Iterator[bytes]:
    """The binary ``enc`` output, whether the file is base64 (``-a``) or not."""
    head, chunks = peek(iter(chunks), len(BASE64_SALT_HEADER))
    if head.startswith(BASE64_SALT_HEADER):
        return _decode_base64(chunks, name)
    if head.startswith(SALT_HEADER):
        return chunks
    raise CorruptArchiveError(
        f"{name} is not an OpenSSL-encrypted file (it does not start with "
        f"'Salted__', in base64 or binary). Check that it is {ATLAS_ARCHIVE_NAME}"
        " and download it again if it is."
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
    binary = _binary_stream(chunks, name)
    header, ciphertext = _take(binary, len(SALT_HEADER) + 8)
    if len(header) < len(SALT_HEADER) + 8:
        raise CorruptArchiveError(
            f"{name} stops inside its OpenSSL header: it is truncated. Download it "
            "again."
        )
    key, iv = evp_bytes_to_key(_encoded(password), header[len(SALT_HEADER) :])
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    # The unpadder holds the last block back until the stream ends: only then
    # is it known to be the one that carries the padding.
    unpadder = padding.PKCS7(8 * AES_BLOCK).unpadder()
    for piece in ciphertext:
        plain = unpadder.update(decryptor.update(piece))
        if plain:
            yield plain
    try:
        tail = unpadder.update(decryptor.finalize())
    except ValueError as error:  # the length is not a whole number of blocks
        raise CorruptArchiveError(
            f"{name} is truncated: its encrypted part does not end on a whole AES "
            "block. Download it again (a download resumes where it stopped)."
        ) from error
    try:
        tail += unpadder.finalize()
    except ValueError as error:
        raise WrongPasswordError(
            f"{name} does not decrypt cleanly (invalid padding at the end): the "
            "password is wrong, or the file is truncated or damaged. Check the "
            "password; if it is right, download the archive again."
        ) from error
    if tail:
        yield tail


def _salt_and_first_block(head: bytes) -> tuple[bytes, bytes] | None:
    """The salt and first ciphertext block from the file's start, if it has them."""
    if head.startswith(BASE64_SALT_HEADER):
        text = head.translate(None, _WHITESPACE)
        head = binascii.a2b_base64(text[: len(text) - len(text) % 4])
    if not head.startswith(SALT_HEADER) or len(head) < 16 + AES_BLOCK:
        return None  # not encrypted, or too short: the stream will say
    return head[8:16], head[16 : 16 + AES_BLOCK]


def _starts_like_gzip(key: bytes, iv: bytes, block: bytes) -> bool:
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    return decryptor.update(block).startswith(GZIP_MAGIC)


def check_password(head: bytes, password: str | bytes, *, name: str) -> None:
    """Check the password on the first block of an encrypted ``.tar.gz``.

    The first decrypted bytes of the ATLAS archive are gzip's magic bytes; with
    a wrong password they are random (a wrong password passes this check about
    once in 65,536 tries, and is caught later). When the ATLAS key derivation
    fails, the usual other ones of ``openssl enc`` (``-pbkdf2``, ``-md md5``)
    are tried, so that a file encrypted another way is named as such.

    Parameters
    ----------
    head : bytes
        The first :data:`HEAD_SIZE` bytes of the file (or all of it).
    password : str or bytes
    name : str
        What to call the file in error messages.

    Raises
    ------
    WrongPasswordError
        The password does not decrypt the first block to gzip, in any format.
    NotAtlasFormatError
        It does, but with another key derivation than ATLAS's.
    """
    found = _salt_and_first_block(head)
    if found is None:
        return
    salt, block = found
    password = _encoded(password)
    if _starts_like_gzip(*evp_bytes_to_key(password, salt), block):
        return
    for option, derive in KEY_DERIVATIONS.items():
        if option != ATLAS_KEY_DERIVATION and _starts_like_gzip(
            *derive(password, salt), block
        ):
            raise NotAtlasFormatError(
                f"{name} was encrypted with 'openssl enc {option}', not in the "
                "format of the ATLAS archive ('openssl enc -aes-256-cbc -md "
                "sha256 -a'), and this password opens it that way. Decrypt it "
                f"with 'openssl enc -d -aes-256-cbc {option} -a -in FILE -out "
                "atlas.tar.gz' (without -a if the file is binary), then pass "
                "--archive atlas.tar.gz."
            )
    raise WrongPasswordError(
        f"Wrong password for {name}, or the file is not in the ATLAS format "
        "('openssl enc -aes-256-cbc -md sha256 -a'): with this password it does "
        "not decrypt to a gzip file. Check the password that came with the ATLAS "
        "data use agreement (mind the case and spaces) and run again. If the "
        "file was encrypted another way (e.g. 'openssl enc -pbkdf2'), decrypt it "
        "with openssl and pass the .tar.gz with --archive."
    )
