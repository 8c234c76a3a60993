"""Download the archive into a ``.part`` file that survives cuts and runs.

`requests`_ does the HTTP, with urllib3's :class:`~urllib3.util.Retry` for what
happens before the body starts (connection refused, 5xx and 429 answers, with
exponential back-off); a ``Range: bytes=N-`` header resumes the file where the
``.part`` file ends, in the same run after a cut connection and in the next run
after an interruption. What is left to us is what HTTP leaves to the client:
check that the server sent the part asked for (``206`` and its
``Content-Range``), and start over when it ignores ranges (``200``).

The body is read with urllib3's ``raw.stream(..., decode_content=False)`` rather
than ``requests``' ``iter_content``: the latter drops the bytes of its last,
incomplete buffer when a connection is cut, and would undo a server's
``Content-Encoding``, while the bytes must be the file's, exactly.

.. _requests: https://requests.readthedocs.io
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.util import Retry

from ..bids import DataError
from .errors import CorruptArchiveError

CHUNK_SIZE = 1 << 20  # bytes read at a time
DOWNLOAD_TIMEOUT_S = 60
DOWNLOAD_RETRIES = 3  # reconnections in a row without progress before giving up
RETRY_BACKOFF_S = 1.0  # first wait before reconnecting; doubles each time
_RETRY_STATUSES = (429, 500, 502, 503, 504)
_CONTENT_RANGE_RE = re.compile(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)")
# A cut in the middle of the body: urllib3's errors when read raw, requests' when
# the connection fails, OSError for the socket itself.
_NETWORK_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, OSError)


def human_size(nbytes: float) -> str:
    """``1234567`` -> ``'1.2 MB'`` (powers of 1000, as disks are sold)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(nbytes) < 1000 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    raise AssertionError("unreachable")


def _session(retries: int) -> requests.Session:
    retry = Retry(
        total=retries,
        backoff_factor=RETRY_BACKOFF_S,
        status_forcelist=_RETRY_STATUSES,
        allowed_methods={"GET"},
        raise_on_status=False,  # the last answer comes back; we word the error
    )
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    # The exact bytes of the file: no transparent compression.
    session.headers.update({"User-Agent": "atlas-ramp", "Accept-Encoding": "identity"})
    return session


class ResumableDownload:
    """An HTTP download kept in a ``.part`` file, resumed across cuts and runs.

    :meth:`start` asks for the bytes after those already in the ``.part`` file;
    :meth:`chunks` yields the whole file in order: the kept bytes read back from
    disk, then the new ones as they arrive (each appended to the ``.part`` file
    first). A cut connection is reopened where it stopped.

    Parameters
    ----------
    url : str
    part_path : path
        Where the bytes received so far are kept.
    retries : int
        Reconnections in a row, without progress, before giving up.
    """

    def __init__(self, url: str, part_path: Path, *, retries: int = DOWNLOAD_RETRIES):
        self.url = url
        self.part_path = Path(part_path)
        self.retries = retries
        self.total: int | None = None  # size of the file, when the server says
        self.kept = 0  # bytes of the .part file to replay from disk
        self.received = 0  # bytes passed on so far, kept and new
        self._session = _session(retries)
        self._response = None

    def _connect(self, position: int):
        """Request the file from ``position`` on.

        Returns ``(response, body_start, total)``: ``response`` is None when the
        server answers 416 (nothing after ``position``); ``body_start`` is where the
        body starts (0 when the server ignores ``Range``).
        """
        headers = {"Range": f"bytes={position}-"} if position else {}
        try:
            response = self._session.get(
                self.url, headers=headers, stream=True, timeout=DOWNLOAD_TIMEOUT_S
            )
        except requests.RequestException as error:
            raise DataError(
                f"Cannot reach {self.url} ({error}). Check your connection and run "
                "again (a download resumes where it stopped), or download the "
                "archive another way and pass --archive PATH."
            ) from error
        content_range = response.headers.get("Content-Range", "")
        match = _CONTENT_RANGE_RE.fullmatch(content_range)
        if response.status_code == 416:  # "Range Not Satisfiable": nothing after it
            response.close()
            total = None if match is None or match[2] == "*" else int(match[2])
            return None, position, total
        if response.status_code >= 400:
            response.close()
            raise DataError(
                f"The server answered '{response.status_code} {response.reason}' for "
                f"{self.url}. Check --url, or download the archive another way and "
                "pass --archive PATH."
            )
        if response.status_code == 206:
            if match is None or match[1] is None or int(match[1]) != position:
                response.close()
                raise DataError(
                    f"{self.url} sent the wrong part of the file (Content-Range "
                    f"{content_range!r} for bytes {position}-). Delete "
                    f"{self.part_path} and run again."
                )
            return response, position, None if match[2] == "*" else int(match[2])
        length = response.headers.get("Content-Length")
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
            skipped = len(response.raw.read(min(CHUNK_SIZE, to_skip)))
            if not skipped:
                raise ConnectionError("connection closed while skipping")
            to_skip -= skipped
        return response

    def _replay_kept(self) -> Iterator[bytes]:
        with open(self.part_path, "rb") as kept_file:
            while self.received < self.kept:
                chunk = kept_file.read(min(CHUNK_SIZE, self.kept - self.received))
                if not chunk:
                    raise CorruptArchiveError(f"{self.part_path} shrank meanwhile.")
                self.received += len(chunk)
                yield chunk

    def chunks(self) -> Iterator[bytes]:
        """Yield the whole file in order; the new bytes are saved first."""
        if self.kept:
            yield from self._replay_kept()
        response, self._response = self._response, None
        failures = 0
        try:
            with open(self.part_path, "ab") as part_file:
                while self.total is None or self.received < self.total:
                    error = None
                    try:
                        if response is None:
                            response = self._reopen(self.received)
                        for chunk in response.raw.stream(
                            CHUNK_SIZE, decode_content=False
                        ):
                            part_file.write(chunk)
                            self.received += len(chunk)
                            failures = 0
                            yield chunk
                    except _NETWORK_ERRORS as network_error:
                        error = network_error
                    if response is not None:
                        response.close()
                        response = None
                    if error is None and (
                        self.total is None or self.received >= self.total
                    ):
                        break  # the end of the body
                    failures += 1
                    if failures > self.retries:
                        raise DataError(
                            f"The connection to {self.url} was lost {failures} "
                            f"times in a row ({error or 'closed early'}). The "
                            f"{human_size(self.received)} received so far are kept "
                            f"in {self.part_path}: run the same command again to "
                            "resume."
                        )
                    time.sleep(RETRY_BACKOFF_S * 2 ** (failures - 1))
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

    def close(self) -> None:
        """Close the connection, if one is open."""
        if self._response is not None:
            self._response.close()
            self._response = None
        self._session.close()
