"""What the ramp-board tests and benchmark need: the server's environment, and a
throwaway PostgreSQL cluster on 127.0.0.1.

The server's environment is a virtual environment built from
``requirements-server.txt`` and the kit (``pip install -r requirements-server.txt
.``), kept in ``~/.cache/atlas-ramp/`` under a name that changes when
``requirements-server.txt`` or ``pyproject.toml`` do, so it is built once and
reused. ``ATLAS_RAMP_SERVER_VENV`` names another folder. The kit's code in it is
shadowed at run time by this repository's (``PYTHONPATH``), so the cached copy
never goes stale. Build it ahead (CI does)::

    python -m tests.ramp_board_setup
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PG_USER, PG_PASSWORD, PG_DATABASE = "ramp", "ramp-test-password", "ramp_atlas"


def server_venv_path() -> Path:
    """Where the server's environment lives (not necessarily built yet)."""
    if os.environ.get("ATLAS_RAMP_SERVER_VENV"):
        return Path(os.environ["ATLAS_RAMP_SERVER_VENV"])
    digest = hashlib.sha256()
    for name in ("requirements-server.txt", "pyproject.toml"):
        digest.update((REPO / name).read_bytes())
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "atlas-ramp" / f"server-venv-{digest.hexdigest()[:12]}"


def build_server_venv(log=print) -> Path:
    """Build the server's environment unless it is complete; its ``bin/python``.

    A ``.complete`` marker is written last: a half-built environment (an
    interrupted build) is removed and built again.
    """
    venv = server_venv_path()
    python = venv / "bin" / "python"
    if (venv / ".complete").exists():
        return python
    start = time.perf_counter()
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    requirements = ["install", "--quiet", "-r", "requirements-server.txt", "."]
    try:
        made = subprocess.run([sys.executable, "-m", "venv", str(venv)])
        if made.returncode == 0:
            pip = [str(python), "-m", "pip"]
        else:
            # Debian's python without python3-venv has no ensurepip: make the
            # environment without pip and install into it with this pip.
            shutil.rmtree(venv, ignore_errors=True)
            command = [sys.executable, "-m", "venv", "--without-pip", str(venv)]
            subprocess.run(command, check=True)
            pip = [sys.executable, "-m", "pip", "--python", str(python)]
        subprocess.run([*pip, *requirements], check=True, cwd=REPO)
    except BaseException:
        shutil.rmtree(venv, ignore_errors=True)
        raise
    (venv / ".complete").write_text("", encoding="utf-8")
    log(f"server environment built in {time.perf_counter() - start:.0f} s: {venv}")
    return python


def _postgres_bin() -> Path | None:
    """The folder of ``initdb``/``pg_ctl``: Debian's versioned one, or PATH."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    found = candidates[0] if candidates else shutil.which("initdb")
    return Path(found).parent if found else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PostgresUnavailable(RuntimeError):
    """PostgreSQL could not be started here (the message says why)."""


class ThrowawayPostgres:
    """A PostgreSQL cluster in a temporary folder, on 127.0.0.1 only.

    Run as the ``postgres`` system user when we are root (PostgreSQL refuses to
    run as root). Use as a context manager: the server is stopped and its folder
    removed on exit.

    Attributes
    ----------
    port : int
    sqlalchemy : dict
        The ``sqlalchemy`` section of ramp-board's ``config.yml``.
    """

    def __init__(self):
        self.bin = _postgres_bin()
        self.port = free_port()
        self.sqlalchemy = {
            "drivername": "postgresql",
            "username": PG_USER,
            "password": PG_PASSWORD,
            "host": "127.0.0.1",
            "port": self.port,
            "database": PG_DATABASE,
        }
        self.folder = None
        self._started = False

    def _as_owner(self, *command: str) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *command]
        return list(command)

    def _run(self, *command: str) -> None:
        result = subprocess.run(
            self._as_owner(*command), capture_output=True, text=True, timeout=120
        )
        if result.returncode:
            raise PostgresUnavailable(
                f"{' '.join(command[:2])} failed: {result.stderr.strip()[-800:]}"
            )

    def __enter__(self) -> ThrowawayPostgres:
        if self.bin is None:
            raise PostgresUnavailable(
                "no initdb found (install Debian's postgresql package)"
            )
        if os.geteuid() == 0:
            try:
                import pwd

                owner = pwd.getpwnam("postgres")
            except KeyError as error:
                raise PostgresUnavailable("no 'postgres' system user") from error
        # /tmp, not pytest's tmp_path: the postgres user must reach it.
        self.folder = Path(tempfile.mkdtemp(prefix="atlas-ramp-pg-"))
        try:
            if os.geteuid() == 0:
                os.chown(self.folder, owner.pw_uid, owner.pw_gid)
            password_file = self.folder / "password"
            password_file.write_text(PG_PASSWORD + "\n", encoding="utf-8")
            if os.geteuid() == 0:
                os.chown(password_file, owner.pw_uid, owner.pw_gid)
            data = self.folder / "data"
            self._run(
                str(self.bin / "initdb"), "-D", str(data), "-U", PG_USER,
                f"--pwfile={password_file}", "--auth-local=trust",
                "--auth-host=scram-sha-256", "--encoding=UTF8", "--no-sync",
            )  # fmt: skip
            options = (
                f"-c listen_addresses=127.0.0.1 -c port={self.port} "
                f"-c unix_socket_directories={self.folder} -c fsync=off"
            )
            self._run(
                str(self.bin / "pg_ctl"), "-D", str(data), "-o", options,
                "-l", str(self.folder / "server.log"), "-w", "-t", "60", "start",
            )  # fmt: skip
            self._started = True
            self._run(
                str(self.bin / "createdb"), "-h", str(self.folder), "-p",
                str(self.port), "-U", PG_USER, PG_DATABASE,
            )  # fmt: skip
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        if self._started:
            subprocess.run(
                self._as_owner(
                    str(self.bin / "pg_ctl"),
                    "-D",
                    str(self.folder / "data"),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ),  # fmt: skip
                capture_output=True,
                timeout=120,
            )
            self._started = False
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


def write_database_config(deployment: Path, sqlalchemy: dict) -> Path:
    """ramp-board's ``config.yml`` (flask and sqlalchemy sections)."""
    lines = [
        "flask:",
        "    secret_key: test-only-secret",
        "    mail_server: 127.0.0.1",
        "    mail_port: 8025",
        "    mail_default_sender: ['RAMP admin', 'rampmailer@localhost']",
        "sqlalchemy:",
        *(f"    {key}: {value}" for key, value in sqlalchemy.items()),
    ]
    deployment.mkdir(parents=True, exist_ok=True)
    config = deployment / "config.yml"
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return config


if __name__ == "__main__":
    print(build_server_venv())
