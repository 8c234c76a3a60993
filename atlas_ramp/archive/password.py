"""The archive's password: from a file, the environment, or a prompt, never echoed."""

from __future__ import annotations

import getpass
import os
from pathlib import Path

from ..bids import DataError

PASSWORD_ENV_VAR = "ATLAS_PASSWORD"


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
