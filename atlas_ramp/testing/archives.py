"""Archives like ATLAS's, made locally: encrypted tar.gz files for tests and benchmarks.

The installer (:mod:`atlas_ramp.archive`) only decrypts; what encrypts lives
here, because the kit never needs it: ``openssl enc -aes-256-cbc -md sha256
-salt -a`` written in Python (:func:`encrypt_openssl_stream`), its
``-pbkdf2`` variant (to test that a file encrypted the other way is named as
such), small tar.gz builders, and :func:`lucky_wrong_password_archive`, the rare
archive whose wrong password passes the first-block check.
"""

from __future__ import annotations

import binascii
import io
import os
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ..archive.openssl import (
    AES_BLOCK,
    ATLAS_KEY_DERIVATION,
    GZIP_MAGIC,
    KEY_DERIVATIONS,
    SALT_HEADER,
    evp_bytes_to_key,
)

CHUNK_SIZE = 1 << 20


def encrypt_openssl_stream(
    chunks: Iterable[bytes],
    password: str | bytes,
    *,
    base64: bool = True,
    salt: bytes | None = None,
    key_derivation: str = ATLAS_KEY_DERIVATION,
) -> Iterator[bytes]:
    """Encrypt like ``openssl enc -aes-256-cbc -md sha256 -salt [-a]``.

    The inverse of :func:`atlas_ramp.archive.decrypt_openssl_stream`;
    ``openssl enc -d`` reads its output.

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
    key_derivation : {"-md sha256", "-pbkdf2", "-md md5"}
        The ``openssl enc`` option (see ``archive.openssl.KEY_DERIVATIONS``):
        ``"-pbkdf2"`` writes what ``openssl enc -pbkdf2`` does instead of ATLAS's
        format, ``"-md md5"`` what ``-md md5`` (the default before OpenSSL 1.1)
        does.

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
    key, iv = KEY_DERIVATIONS[key_derivation](password, salt)
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
            yield base64_lines(data[:usable])
    if pending:
        yield base64_lines(pending)


def base64_lines(data: bytes) -> bytes:
    """Base64 text in 64-character lines, each ending with a newline (as OpenSSL)."""
    text = binascii.b2a_base64(data, newline=False)
    return b"".join(text[i : i + 64] + b"\n" for i in range(0, len(text), 64))


def encrypt_openssl_file(
    source: Path | str,
    destination: Path | str,
    password: str | bytes,
    **options,
) -> Path:
    """Encrypt a file like ``openssl enc -aes-256-cbc -md sha256 -salt [-a]``.

    ``options`` are those of :func:`encrypt_openssl_stream`. Returns
    ``destination``.
    """
    destination = Path(destination)
    with open(source, "rb") as plain, open(destination, "wb") as encrypted:
        pieces = iter(lambda: plain.read(CHUNK_SIZE), b"")
        for piece in encrypt_openssl_stream(pieces, password, **options):
            encrypted.write(piece)
    return destination


def encrypted_bytes(plain: bytes, password: str | bytes, **options) -> bytes:
    """``plain`` encrypted in memory (see :func:`encrypt_openssl_stream`)."""
    return b"".join(encrypt_openssl_stream([plain], password, **options))


def make_tar_gz(folder: Path, path: Path, arcname: str) -> Path:
    """``tar czf path folder`` with ``folder`` stored as ``arcname``."""
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname=arcname)
    return path


def tar_gz_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    """A .tar.gz in memory from hand-made members (for malicious archives)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, content in members:
            if content is not None:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
            else:
                tar.addfile(info)
    return buffer.getvalue()


def _aes_ecb(key: bytes, blocks: np.ndarray, decrypt: bool = False) -> np.ndarray:
    cipher = Cipher(algorithms.AES(key), modes.ECB())
    worker = cipher.decryptor() if decrypt else cipher.encryptor()
    out = worker.update(blocks.tobytes()) + worker.finalize()
    return np.frombuffer(out, np.uint8).reshape(blocks.shape)


def lucky_wrong_password_archive(
    tar_gz: bytes, password: str, wrong_password: str, salt: bytes = b"12345678"
) -> bytes:
    """Encrypt ``tar_gz`` so that ``wrong_password`` passes the first-block check.

    A wrong password decrypts the first block to random bytes, which start with
    gzip's magic bytes once in 65,536 tries. Rather than try 65,536 passwords,
    this tries modification times: bytes 4-7 of a gzip header are free (the CRC
    covers the data only), and each value changes the first ciphertext block.
    The result decrypts with ``password`` to ``tar_gz`` with another mtime.

    Returns
    -------
    bytes
        The encrypted archive, in base64 (``-a``).
    """
    key, iv = evp_bytes_to_key(password.encode(), salt)
    wrong_key, wrong_iv = evp_bytes_to_key(wrong_password.encode(), salt)
    first = np.frombuffer(tar_gz[:AES_BLOCK], np.uint8)
    magic = np.frombuffer(GZIP_MAGIC, np.uint8)
    batch = 1 << 16
    for start in range(0, 1 << 32, batch):
        mtimes = np.arange(start, start + batch, dtype="<u4")
        blocks = np.tile(first, (batch, 1))
        blocks[:, 4:8] = mtimes.view(np.uint8).reshape(batch, 4)
        # CBC's first block: C = AES_k(P xor IV); the wrong key reads
        # AES^-1_k'(C) xor IV'.
        ciphertext = _aes_ecb(key, blocks ^ np.frombuffer(iv, np.uint8))
        seen = _aes_ecb(wrong_key, ciphertext, decrypt=True)
        seen = seen ^ np.frombuffer(wrong_iv, np.uint8)
        lucky = np.flatnonzero((seen[:, :2] == magic).all(axis=1))
        if lucky.size:
            mtime = mtimes[lucky[0]].tobytes()
            plain = tar_gz[:4] + mtime + tar_gz[8:]
            return encrypted_bytes(plain, password, salt=salt)
    raise AssertionError("no modification time works")  # never, in practice
