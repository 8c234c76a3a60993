"""Run a student's submission where the private test masks cannot be read.

On a course server, ``ramp-test`` trains and predicts inside a bubblewrap
(``bwrap``) sandbox: new mount, PID, network, IPC and UTS namespaces, killed with
its parent. Its file system holds, read-only, the Python environment (and the
interpreter it is built on), the ``atlas_ramp`` package that environment
imports, the kit's ``problem.py``, ``data/train`` (with its volume cache, and the
folders its links lead to, at their own paths), and a staged ``data/test`` made
of the test **images** only (hard links, and the images' cache entries);
writable, a copy of the submission's folder and ``/tmp``. Nothing else of the
deployment is there: not the test masks, not their cache, not the database
configuration, not the other submissions; ``/proc`` is the sandbox's own, so
``/proc/self/cwd`` or ``/proc/1/root`` lead nowhere else; no network (a private
loopback only). ``ATLAS_RAMP_UNLABELLED_TEST=1`` makes
``problem.py`` read the test split without masks: ``ramp-test`` prints NaN test
scores and saves the test predictions.

Outside the sandbox, trusted kit code (:mod:`atlas_ramp.course.trusted_scoring`)
scores the saved predictions against the private masks and writes every score
file ramp-board reads; what the submission wrote there is replaced.

The data keep their absolute paths inside the sandbox, so that the volume
cache's entries (keyed by path, size and time) stay valid there.

One entry point, :func:`run_sandboxed_submission`, runs a submission on this
host, sandboxed, and scores it; ramp-engine's local worker
(:class:`atlas_ramp.course.ramp_worker.VirtualenvWorker`) runs it as
``python -m atlas_ramp.course.sandbox ...``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

from .._io import replace_folder
from ..testmode import QUICK_TEST_VARIABLE, UNLABELLED_TEST_VARIABLE
from .staging import linked_from, stage_dir, stage_test_images, warm_volume_cache
from .worker_host import RAMP_SIDE_EXIT_CODE, TIMEOUT_EXIT_CODE, ramp_side_message

#: Where the kit and the submissions are, inside the sandbox.
SANDBOX_KIT = "/ramp/kit"
SANDBOX_SUBMISSIONS = "/ramp/submissions"
#: Variables passed into the sandbox; everything else (a database password...)
#: stays outside.
PASSED_VARIABLES = (
    QUICK_TEST_VARIABLE,
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "CUDA_VISIBLE_DEVICES",
    "LANG",
    "LC_ALL",
    "TZ",
)
#: System files a Python process reads; /etc as a whole is not shown.
_ETC_FILES = ("ld.so.cache", "ld.so.conf", "passwd", "group", "localtime", "hosts")


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing, or cannot make namespaces on this machine."""


def check_sandbox() -> str:
    """The path of ``bwrap``, checked to work here.

    Raises
    ------
    SandboxUnavailable
        Saying how to install it, or that the kernel refuses namespaces, and
        what running without it means.
    """
    bwrap = shutil.which("bwrap")
    risk = (
        "Without the sandbox, students' code runs beside the private test masks "
        "and can read them: run with --no-sandbox only if every student is trusted."
    )
    if bwrap is None:
        raise SandboxUnavailable(
            "bubblewrap (bwrap) is not installed: install it (Debian/Ubuntu: "
            f"`apt-get install bubblewrap`). {risk}"
        )
    probe = subprocess.run(
        [bwrap, "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "true"],
        capture_output=True,
        text=True,
    )
    if probe.returncode:
        raise SandboxUnavailable(
            f"bwrap cannot make a sandbox on this machine: {probe.stderr.strip()}. "
            "Allow unprivileged user namespaces (sysctl "
            "kernel.unprivileged_userns_clone=1), or run the workers as root or in a "
            f"container that allows them. {risk}"
        )
    return bwrap


def probe_environment(python_env: Path | str) -> dict:
    """What the sandbox must show of ``python_env``: its interpreter's home, the
    ``atlas_ramp`` package it imports (with this process's ``PYTHONPATH``)."""
    python = Path(python_env) / "bin" / "python"
    code = (
        "import json, sys, atlas_ramp, pathlib; print(json.dumps({'base_prefix': "
        "sys.base_prefix, 'package': str(pathlib.Path(atlas_ramp.__file__)"
        ".resolve().parent)}))"
    )
    result = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, timeout=300
    )
    if result.returncode:
        raise RuntimeError(
            f"{python} cannot import atlas_ramp: {result.stderr.strip()[-500:]}. "
            "Install the kit in that environment."
        )
    return json.loads(result.stdout.strip().splitlines()[-1])


def _system_view() -> list[str]:
    """Read-only ``/usr`` with the merged-usr links, and a few ``/etc`` files."""
    args = ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64"):
        path = Path("/") / name
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    for name in _ETC_FILES:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    return args


def sandbox_command(
    kit_dir: Path | str,
    data_dir: Path | str,
    submissions: Path | str,
    submission: str,
    output: Path | str,
    python_env: Path | str,
    staged_test: tuple[Path, Path],
    environment: dict,
    bwrap: str = "bwrap",
    command: list[str] | None = None,
) -> list[str]:
    """The ``bwrap`` command line that runs ``ramp-test`` in the sandbox.

    Parameters
    ----------
    kit_dir, data_dir : path
        ramp-board's kit and data folders (``data_dir`` holds ``data/``).
    submissions : path
        A folder holding a copy of ``<submission>/`` with an empty
        ``training_output/`` (shown read-only as ``/ramp/submissions``).
    submission : str
    output : path
        An empty folder, shown writable as that ``training_output``: what
        ramp-test saves, all that comes out.
    python_env : path
    staged_test : (Path, Path)
        What :func:`stage_test_images` returned.
    environment : dict
        :func:`probe_environment` of ``python_env``.
    bwrap : str
    command : list of str, optional
        Run this instead of ``ramp-test`` (tests of the view).
    """
    original_env, python_env = python_env, Path(python_env).resolve()
    # Resolved: the volume cache's entries name their sources by real path;
    # ``data`` may be a link to them (a kit's ``data`` folder often is).
    data_link = Path(os.path.abspath(Path(data_dir) / "data"))
    data = data_link.resolve()
    package = Path(environment["package"])
    view = [
        bwrap, "--unshare-all", "--die-with-parent", "--new-session",
        "--clearenv", *_system_view(),
        # First: the binds below may lie under /tmp (a test's deployment).
        "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--chdir", "/tmp",
        "--ro-bind", environment["base_prefix"], environment["base_prefix"],
        "--ro-bind", str(python_env), str(python_env),
        "--ro-bind", str(package), str(package),
        "--ro-bind", str(Path(kit_dir) / "problem.py"), f"{SANDBOX_KIT}/problem.py",
        "--ro-bind", str(data / "train"), str(data / "train"),
        "--ro-bind-try", str(data / ".cache" / "train"), str(data / ".cache" / "train"),
        "--ro-bind", str(staged_test[0]), str(data / "test"),
        "--ro-bind", str(staged_test[1]), str(data / ".cache" / "test"),
        # The submission read-only; its output folder (a mount point, so that
        # it cannot be swapped for a link) the one place it writes.
        "--ro-bind", str(submissions), SANDBOX_SUBMISSIONS,
        "--bind", str(output), f"{SANDBOX_SUBMISSIONS}/{submission}/training_output",
    ]  # fmt: skip
    for target in linked_from(data / "train"):  # after /tmp's tmpfs, as above
        view += ["--ro-bind", str(target), str(target)]
    if data_link != data:
        view += ["--symlink", str(data), str(data_link)]
    if Path(given_env := os.path.abspath(original_env)) != python_env:
        view += ["--symlink", str(python_env), given_env]  # scripts' shebangs
    for device in sorted(glob.glob("/dev/nvidia*")):  # GPUs, where there are some
        view += ["--dev-bind", device, device]
    variables = {
        name: os.environ[name] for name in PASSED_VARIABLES if name in os.environ
    }
    variables.update(
        PATH=f"{python_env / 'bin'}:/usr/bin:/bin",
        HOME="/tmp",
        PYTHONPATH=str(package.parent),
        PYTHONDONTWRITEBYTECODE="1",
        **{UNLABELLED_TEST_VARIABLE: "1"},
    )
    for name, value in sorted(variables.items()):
        view += ["--setenv", name, value]
    if command is None:
        command = [
            str(python_env / "bin" / "ramp-test"), "--submission", submission,
            "--ramp-kit-dir", SANDBOX_KIT, "--ramp-data-dir", str(data_link.parent),
            "--ramp-submission-dir", SANDBOX_SUBMISSIONS, "--save-output",
            "--ignore-warning",
        ]  # fmt: skip
    return [*view, "--", *command]


def remove_links(folder: Path | str, log) -> None:
    """Delete what is not a plain file or folder below ``folder``.

    A symbolic link the submission left (to a host file, another student's
    predictions) would otherwise be followed by the trusted scorer or by
    ramp-engine's copy of the results.
    """
    for root, folders, files in os.walk(folder):
        for name in folders + files:
            path = Path(root) / name
            if path.is_symlink() or not (path.is_dir() or path.is_file()):
                log(f"[sandbox] removed {path.relative_to(folder)}: not a plain file")
                path.unlink()


def score_outside(python_env, kit_dir, data_dir, produced: Path, log_file) -> int:
    """Run :mod:`atlas_ramp.course.trusted_scoring` on ``produced``; its exit code."""
    command = [
        str(Path(python_env) / "bin" / "python"),
        "-m", "atlas_ramp.course.trusted_scoring",
        "--kit-dir", str(kit_dir), "--data-dir", str(data_dir),
        "--training-output", str(produced),
    ]  # fmt: skip
    environment = dict(os.environ)
    environment.pop(UNLABELLED_TEST_VARIABLE, None)  # the masks are read here
    return subprocess.run(
        command, stdout=log_file, stderr=subprocess.STDOUT, env=environment
    ).returncode


def run_sandboxed_submission(
    kit_dir: Path | str,
    data_dir: Path | str,
    submission_dir: Path | str,
    python_env: Path | str,
    output_dir: Path | str,
    log_path: Path | str,
    timeout: float | None = None,
) -> int:
    """Train and predict a submission in the sandbox, then score it outside.

    Parameters
    ----------
    kit_dir : path
        ramp-board's kit folder (its ``problem.py`` is used).
    data_dir : path
        ramp-board's data folder, holding ``data/train`` and ``data/test``.
    submission_dir : path
        The submission's folder (``<submissions_dir>/<name>``); not written.
    python_env : path
        Prefix of the environment holding ``ramp-test`` and the kit.
    output_dir : path
        Where the scored ``training_output`` is put (replaced) on success: the
        ``fold_<i>/`` folders and ``bagged_scores.csv`` ramp-board reads.
    log_path : path
        The run's log, appended to: ``ramp-test``'s output, then the scores.
    timeout : float, optional
        Seconds; the sandbox is killed past it.

    Returns
    -------
    int
        0 when trained and scored; ``ramp-test``'s or the scorer's exit code
        otherwise (the scorer's is 1 for a forged output, 2 for a failure on
        the server's side); 124 at the time limit.
    """
    bwrap = check_sandbox()
    kit_dir, data_dir = Path(kit_dir).resolve(), Path(data_dir).resolve()
    submission_dir, output_dir = Path(submission_dir), Path(output_dir)
    name = submission_dir.name
    stage = stage_dir(data_dir)
    with open(log_path, "ab") as log_file:

        def log(message: str) -> None:
            log_file.write(f"{message}\n".encode())
            log_file.flush()

        try:
            environment = probe_environment(python_env)
            warm_volume_cache(data_dir)
            staged = stage_test_images(data_dir, stage)
            submissions, produced = stage / "submissions", stage / "output"
            copy = submissions / name
            shutil.copytree(
                submission_dir, copy, ignore=shutil.ignore_patterns("training_output")
            )
            (copy / "training_output").mkdir()
            produced.mkdir()
            command = sandbox_command(
                kit_dir, data_dir, submissions, name, produced, python_env, staged,
                environment, bwrap,
            )  # fmt: skip
            start = time.perf_counter()
            log(f"[sandbox] training {name} in a bubblewrap sandbox (no test masks)")
            try:
                completed = subprocess.run(
                    ["nice", "-n", "5", *command],
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                )
            except subprocess.TimeoutExpired:
                log(f"[sandbox] killed after {timeout} s")
                return TIMEOUT_EXIT_CODE
            log(f"[sandbox] ramp-test ran {time.perf_counter() - start:.1f} s")
            if completed.returncode:
                return completed.returncode
            remove_links(produced, log)
            scored = score_outside(python_env, kit_dir, data_dir, produced, log_file)
            if scored:
                return scored
            replace_folder(produced, output_dir)
            return 0
        finally:
            shutil.rmtree(stage, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m atlas_ramp.course.sandbox``: :func:`run_sandboxed_submission`."""
    parser = argparse.ArgumentParser(
        prog="python -m atlas_ramp.course.sandbox",
        description="Train a submission sandboxed, then score it outside.",
    )
    for option in ("kit-dir", "data-dir", "submission-dir", "python-env"):
        parser.add_argument(f"--{option}", type=Path, required=True)
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--timeout", type=float)
    args = parser.parse_args(argv)
    try:
        return run_sandboxed_submission(
            args.kit_dir, args.data_dir, args.submission_dir, args.python_env,
            args.output_dir, args.log, args.timeout,
        )  # fmt: skip
    except Exception as error:
        # The runner is the server's code (the submission runs in a child
        # process, whose failure is an exit code): no bubblewrap, an
        # environment that cannot import the kit, unreadable data, a full
        # disk... are the server's failures, not the student's.
        traceback.print_exc()
        message = ramp_side_message("the sandbox could not run the submission", error)
        print(f"atlas_ramp.course.sandbox: error: {message}", file=sys.stderr)
        return RAMP_SIDE_EXIT_CODE


if __name__ == "__main__":
    raise SystemExit(main())
