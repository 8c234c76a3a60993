"""What runs on a dask worker's host: one submission, from its files to its outputs.

The dispatcher's dask pool (:mod:`atlas_ramp.course.dask_pool`) sends each submission
to the pool as ONE task, :func:`run_submission_here`: it receives the
submission's files as bytes, runs ``ramp-test`` on the host of the dask worker
that picked the task (in the sandbox of :mod:`atlas_ramp.course.sandbox`, which
scores the test predictions outside it, unless the event turned the sandbox
off), and returns the log and the scored predictions as bytes. Every
step of a submission therefore runs on one worker, whatever the hosts' names,
and nothing travels through a shared filesystem. What the host needs, at the
paths of the event's configuration: the kit folder (``problem.py``), the data
folder, and ``python_env``, the environment where the kit and ``distributed``
are installed (``requirements-worker.txt``).

:func:`run_submission_here` is the one function to replace to run submissions
differently on the workers' hosts: the pool only needs its signature and its
returned dictionary. A worker host also needs bubblewrap for the sandbox.

This module uses the standard library only: dask workers import it by name,
in the workers' environment.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import tarfile
import tempfile
from pathlib import Path

# Outputs of a previous run and caches are never shipped with a submission.
_NOT_SHIPPED = {"training_output", "__pycache__"}
TIMEOUT_EXIT_CODE = 124  # ramp-engine's code for "killed after its timeout"
# ramp-engine's dispatcher records this exit code as "checking_error": a failure
# on the server's side, not the submission's ("training_error", any other code).
RAMP_SIDE_EXIT_CODE = 2


def ramp_side_message(what: str, error: BaseException) -> str:
    """The error message a student reads for a failure on the server's side."""
    return (
        f"There was a problem on RAMP's side: {what} ({type(error).__name__}: "
        f"{str(error).rstrip('.')}). It is most likely not related to your code; "
        "if it happens again, please contact the event organizers."
    )


def read_submission_files(folder: Path | str) -> dict[str, bytes]:
    """The files of a submission folder, by path relative to it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"The submission folder {folder} does not exist.")
    files = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and not _NOT_SHIPPED.intersection(relative.parts):
            files[relative.as_posix()] = path.read_bytes()
    return files


def write_submission_files(files: dict[str, bytes], folder: Path) -> None:
    """Write :func:`read_submission_files`'s files; none may leave ``folder``."""
    root = folder.resolve()
    for name, content in files.items():
        target = (root / name).resolve()
        if root not in target.parents:
            raise ValueError(f"Submission file {name!r} points outside its folder.")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)


def pack_folder(folder: Path) -> bytes:
    """A folder as the bytes of a ``.tar.gz`` (its content, relative names)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(folder, arcname=".")
    return buffer.getvalue()


def ramp_test_command(
    settings: dict, submission: str, submissions_dir: Path
) -> list[str]:
    """ramp-engine's ``ramp-test`` command line, run at a lower priority."""
    ramp_test = Path(settings["python_env"]) / "bin" / "ramp-test"
    return [
        "nice", "-n", "5", str(ramp_test),
        "--submission", submission,
        "--ramp-kit-dir", settings["kit_dir"],
        "--ramp-data-dir", settings["data_dir"],
        "--ramp-submission-dir", str(submissions_dir),
        "--save-output", "--ignore-warning",
    ]  # fmt: skip


def sandboxed_command(
    settings: dict, submission: str, submissions_dir: Path, scratch: Path
) -> list[str]:
    """The same run in the sandbox, scored outside it.

    See :mod:`atlas_ramp.course.sandbox`.

    The scored ``training_output`` lands in ``scratch/sandboxed_output``; the
    run appends to ``scratch/log``.
    """
    return sandbox_runner_command(
        Path(settings["python_env"]) / "bin" / "python",
        kit_dir=settings["kit_dir"],
        data_dir=settings["data_dir"],
        submission_dir=submissions_dir / submission,
        python_env=settings["python_env"],
        output_dir=scratch / "sandboxed_output",
        log=scratch / "log",
        timeout=settings.get("timeout"),
    )


def sandbox_runner_command(
    python, *, kit_dir, data_dir, submission_dir, python_env, output_dir, log, timeout
) -> list[str]:
    """``python -m atlas_ramp.course.sandbox ...`` with these paths.

    ``timeout`` (seconds, or None) is the caller's own kill: the runner gets a
    little less, so that it stops the sandbox and removes its staging folder
    itself.
    """
    command = [
        str(python), "-m", "atlas_ramp.course.sandbox",
        "--kit-dir", str(kit_dir),
        "--data-dir", str(data_dir),
        "--submission-dir", str(submission_dir),
        "--python-env", str(python_env),
        "--output-dir", str(output_dir),
        "--log", str(log),
    ]  # fmt: skip
    if timeout:
        command += ["--timeout", str(max(1.0, 0.99 * timeout - 5))]
    return command


def _worker_name() -> str:
    """This dask worker's name and address (or the host name outside dask)."""
    try:
        from distributed import get_worker

        worker = get_worker()
        return f"{worker.name} ({worker.address})"
    except (ImportError, ValueError):
        return socket.gethostname()


def _check_host(settings: dict, where: str) -> None:
    """The kit, the data and ramp-test where the event's configuration says."""
    needed = {
        "the kit's problem.py": Path(settings["kit_dir"]) / "problem.py",
        "the data folder": Path(settings["data_dir"]) / "data",
        "ramp-test": Path(settings["python_env"]) / "bin" / "ramp-test",
    }
    for what, path in needed.items():
        if not path.exists():
            raise FileNotFoundError(
                f"{path} ({what}) does not exist on dask worker {where}: install the "
                "kit, the data and the worker environment at the paths of the event's "
                "config.yml on every worker host."
            )


def run_submission_here(
    files: dict[str, bytes], submission: str, settings: dict
) -> dict:
    """Train and test one submission on this host; its log and predictions.

    Parameters
    ----------
    files : dict
        The submission's files (:func:`read_submission_files`).
    submission : str
        Its name (ramp-board's ``submission_<id>``).
    settings : dict
        ``python_env``, ``kit_dir``, ``data_dir`` (paths on this host),
        ``timeout`` (seconds), ``n_threads`` (None: no cap) and ``sandbox``
        (default True: train in the sandbox, score outside it).

    Returns
    -------
    dict
        ``returncode`` (124 after the timeout), ``log`` (bytes: ramp-test's
        output), ``outputs`` (bytes of :func:`pack_folder` of its
        ``training_output``, None if it failed) and ``worker`` (where it ran).
    """
    where = _worker_name()
    _check_host(settings, where)
    env = dict(os.environ)
    if settings.get("n_threads"):
        for library in ("OMP", "MKL", "OPENBLAS"):
            env[f"{library}_NUM_THREADS"] = str(settings["n_threads"])
    with tempfile.TemporaryDirectory(prefix="atlas-ramp-submission-") as scratch:
        submissions_dir = Path(scratch) / "submissions"
        write_submission_files(files, submissions_dir / submission)
        log_path = Path(scratch) / "log"
        if settings.get("sandbox", True):
            command = sandboxed_command(
                settings, submission, submissions_dir, Path(scratch)
            )
            outputs = Path(scratch) / "sandboxed_output"
        else:
            command = ramp_test_command(settings, submission, submissions_dir)
            outputs = submissions_dir / submission / "training_output"
        # Appending: the sandbox's runner writes to the same file.
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own group: a timeout kills it all
            )
            try:
                returncode = process.wait(timeout=settings.get("timeout"))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
                process.wait()
                returncode = TIMEOUT_EXIT_CODE
        log_bytes = log_path.read_bytes()
        if returncode == TIMEOUT_EXIT_CODE:
            log_bytes += (
                f"\nKilled after the event's timeout of {settings['timeout']} s.\n"
            ).encode()
        packed = pack_folder(outputs) if returncode == 0 and outputs.is_dir() else None
        if returncode == 0 and packed is None:
            returncode = 1
            log_bytes += b"\nramp-test wrote no training_output.\n"
    return {
        "returncode": returncode,
        "log": log_bytes,
        "outputs": packed,
        "worker": where,
    }
