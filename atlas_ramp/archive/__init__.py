"""The real, encrypted ATLAS R2.0 archive, turned into ``data/train``, ``data/test``.

The archive ``ATLAS_R2.0_encrypted.tar.gz`` (about 10 GB, given after signing the
ATLAS data use agreement) is a gzip-compressed tar, encrypted with
``openssl enc -aes-256-cbc -md sha256 -a``. By hand, installing it takes wget,
openssl, tar, a reshuffle script, and room for three copies. Here it is one
command, :func:`install_atlas` (``python download_data.py --atlas``), with memory
that does not grow with the archive. One module per step:

* :mod:`~atlas_ramp.archive.fetch`: resumable HTTP download (requests);
* :mod:`~atlas_ramp.archive.password`: where the password comes from;
* :mod:`~atlas_ramp.archive.openssl`: the ``openssl enc`` format, decrypted as a
  stream, and the password check on the first block;
* :mod:`~atlas_ramp.archive.untar`: gzip and tar, extracted safely (tarfile's
  ``data`` filter, plus what older Pythons miss);
* :mod:`~atlas_ramp.archive.layout`: the cohort-stratified ``train``/``test``
  layout of the extracted release;
* :mod:`~atlas_ramp.archive.install`: the command: checks, the steps in order,
  the final swap, and what to say when something goes wrong;
* :mod:`~atlas_ramp.archive.errors`: one :class:`~atlas_ramp.bids.DataError` per
  kind of failure.

The facts about the release (URL, SHA-256, license) live in
:mod:`atlas_ramp.archive.release`; encrypting archives, which only tests and
benchmarks need, in :mod:`atlas_ramp.testing.archives`.
"""

from .errors import (
    ChecksumError,
    CorruptArchiveError,
    NotAtlasFormatError,
    UnsafeArchiveError,
    WrongPasswordError,
)
from .fetch import ResumableDownload
from .install import DOWNLOADS_DIR_NAME, INSTALLED_ENTRIES, install_atlas
from .openssl import (
    BASE64_SALT_HEADER,
    check_password,
    decrypt_openssl_stream,
    evp_bytes_to_key,
)
from .password import PASSWORD_ENV_VAR, resolve_password
from .release import ATLAS_ARCHIVE_NAME, ATLAS_SHA256, ATLAS_URL
from .untar import extract_tar_stream, safe_member, unpack_archive_stream

__all__ = [
    "ATLAS_ARCHIVE_NAME",
    "ATLAS_SHA256",
    "ATLAS_URL",
    "BASE64_SALT_HEADER",
    "DOWNLOADS_DIR_NAME",
    "INSTALLED_ENTRIES",
    "PASSWORD_ENV_VAR",
    "ChecksumError",
    "CorruptArchiveError",
    "NotAtlasFormatError",
    "ResumableDownload",
    "UnsafeArchiveError",
    "WrongPasswordError",
    "check_password",
    "decrypt_openssl_stream",
    "evp_bytes_to_key",
    "extract_tar_stream",
    "install_atlas",
    "resolve_password",
    "safe_member",
    "unpack_archive_stream",
]
