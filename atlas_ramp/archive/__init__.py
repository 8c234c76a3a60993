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

Every name below is imported on first use (PEP 562): ``python download_data.py``
for the synthetic sample, or any module that needs only the release's facts,
does not load requests, cryptography and scikit-learn.
"""

import importlib

#: Public name -> the module of this package that defines it.
_EXPORTS = {
    "ChecksumError": "errors",
    "CorruptArchiveError": "errors",
    "NotAtlasFormatError": "errors",
    "UnsafeArchiveError": "errors",
    "WrongPasswordError": "errors",
    "ResumableDownload": "fetch",
    "DOWNLOADS_DIR_NAME": "install",
    "INSTALLED_ENTRIES": "install",
    "install_atlas": "install",
    "BASE64_SALT_HEADER": "openssl",
    "check_password": "openssl",
    "decrypt_openssl_stream": "openssl",
    "evp_bytes_to_key": "openssl",
    "PASSWORD_ENV_VAR": "password",
    "resolve_password": "password",
    "ATLAS_ARCHIVE_NAME": "release",
    "ATLAS_SHA256": "release",
    "ATLAS_URL": "release",
    "extract_tar_stream": "untar",
    "safe_member": "untar",
    "unpack_archive_stream": "untar",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__():
    return sorted([*globals(), *_EXPORTS])
