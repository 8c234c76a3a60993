"""What can go wrong with an archive: one :class:`~atlas_ramp.bids.DataError` each.

All are data errors (the archive's or the user's, never a submission's), so a
caller that catches :class:`~atlas_ramp.bids.DataError` catches them all; the
subclasses let the installer decide what to do with a download (a damaged file
is deleted, a wrong password keeps it) and let tests check which case it was.
"""

from __future__ import annotations

from ..bids import DataError


class WrongPasswordError(DataError):
    """The archive does not decrypt with this password."""


class NotAtlasFormatError(DataError):
    """The archive is encrypted, but not the way ATLAS's is (e.g. ``-pbkdf2``)."""


class CorruptArchiveError(DataError):
    """The archive is truncated or damaged (or is not the expected file)."""


class UnsafeArchiveError(DataError):
    """A tar member would be written outside the target folder, or is a device."""


class ChecksumError(DataError):
    """The archive's SHA-256 differs from the expected one."""
