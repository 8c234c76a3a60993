"""A ramp-engine worker that runs ``ramp-test`` from a Python environment, no conda.

ramp-engine's local (``conda``) worker asks conda where the environment of an
event lives (``conda info --envs``), then runs ``<env>/bin/ramp-test
--submission <name> --save-output ...``. :class:`VirtualenvWorker` skips that
question: the event's worker configuration (or the command line) gives the
environment's prefix as ``python_env``, any virtual environment where the kit
is installed (``python -m pip install -r requirements.txt``). Everything else
(logs, time-outs, collecting predictions, error messages) is ramp-engine's own
code.

Each submission trains in a sandbox where the private test masks cannot be
read, and its test predictions are scored outside it
(:func:`atlas_ramp.course.sandbox.run_sandboxed_submission`), on the dispatcher's host
or on a dask worker's; ``--no-sandbox`` (the event's ``worker: sandbox:
false``) runs plain ``ramp-test`` instead, where bubblewrap cannot work and
every student is trusted.

:func:`dispatch` runs the course's dispatcher (:mod:`atlas_ramp.course.dispatcher`)
with it, from the server's environment::

    atlas-ramp server dispatch --config /srv/ramp/config.yml \\
        --event-config /srv/ramp/events/atlas_stroke_course/config.yml \\
        --python-env /srv/atlas-worker

and with ``--dask-scheduler tcp://HOST:8786`` it trains on a pool of dask
workers on any number of machines instead (:mod:`atlas_ramp.course.dask_pool`).
Where conda exists, ramp-engine's own ``ramp launch dispatcher --event-config
...`` trains the same deployment with its ``conda`` worker (``conda_env`` of
the event's configuration), without the course dispatcher's changes.

This module imports ramp-engine: it runs in the server's environment only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from datetime import datetime
from pathlib import Path

from ramp_engine.base import BaseWorker
from ramp_engine.local import CondaEnvWorker
from ramp_utils import read_config

from .dask_pool import DaskPoolWorker, close_pool_clients
from .dispatcher import CourseDispatcher
from .event_kit import DeployError
from .sandbox import SandboxUnavailable, check_sandbox
from .worker_host import sandbox_runner_command

_REQUIRED = ("kit_dir", "data_dir", "submissions_dir", "logs_dir", "predictions_dir")


def _ramp_test_bin(worker: BaseWorker) -> str:
    """The ``bin/`` folder of the worker's ``python_env`` (status 'error' if none)."""
    prefix = worker.config.get("python_env")
    if not prefix:
        worker.status = "error"
        raise ValueError(
            "No python_env in the event's worker configuration: give the prefix of "
            "the environment holding the kit (`--python-env`)."
        )
    return str(Path(prefix) / "bin")


class VirtualenvWorker(CondaEnvWorker):
    """ramp-engine's local worker, running ``<python_env>/bin/ramp-test``.

    Parameters
    ----------
    config : dict
        ramp-engine's worker configuration (``kit_dir``, ``data_dir``,
        ``submissions_dir``, ``logs_dir``, ``predictions_dir``, ``timeout``) and
        ``python_env``: the prefix of the environment to run ``ramp-test`` from;
        ``sandbox`` (default True): train in the sandbox, score outside.
    submission : str
        The name of the submission to train.
    """

    def setup(self):
        for name in _REQUIRED:
            self._check_config_name(self.config, name)
        self._python_bin_path = _ramp_test_bin(self)
        if not os.path.isfile(os.path.join(self._python_bin_path, "ramp-test")):
            self.status = "error"
            raise ValueError(
                f"{self._python_bin_path}/ramp-test does not exist: install the kit "
                "in that environment, or correct python_env."
            )
        BaseWorker.setup(self)

    def launch_submission(self):
        """Start ``python -m atlas_ramp.course.sandbox`` (or plain ``ramp-test``).

        Its output goes to ramp-engine's log, as ``ramp-test``'s does; the
        scored ``training_output`` is where ramp-engine collects it from.
        """
        if not self.config.get("sandbox", True):
            return super().launch_submission()
        if self.status == "running":
            raise ValueError(
                "Wait that the submission is processed before to launch a new one."
            )
        self._log_dir = os.path.join(self.config["logs_dir"], self.submission)
        os.makedirs(self._log_dir, exist_ok=True)
        log_path = os.path.join(self._log_dir, "log")
        open(log_path, "wb").close()
        # Appending: the sandbox's processes write to the same file.
        self._log_file = open(log_path, "ab")
        submission_dir = os.path.join(self.config["submissions_dir"], self.submission)
        command = sandbox_runner_command(
            sys.executable,
            kit_dir=self.config["kit_dir"],
            data_dir=self.config["data_dir"],
            submission_dir=submission_dir,
            python_env=Path(self._python_bin_path).parent,
            output_dir=os.path.join(submission_dir, "training_output"),
            log=log_path,
            timeout=self.timeout,  # ramp-engine's own kill
        )
        self._proc = subprocess.Popen(
            command, stdout=self._log_file, stderr=subprocess.STDOUT
        )
        BaseWorker.launch_submission(self)
        self._start_date = datetime.utcnow()

    def teardown(self):
        if self.status == "error":  # never launched: nothing to collect
            BaseWorker.teardown(self)
            return
        super().teardown()


def dispatch(
    config: Path | str,
    event_config: Path | str,
    *,
    python_env: Path | str | None = None,
    dask_scheduler: str | None = None,
    n_workers: int | None = None,
    n_threads: int | None = None,
    exit_when_done: bool = False,
    sandbox: bool | None = None,
) -> None:
    """Run the course's dispatcher for one event with a conda-free worker.

    The dispatcher is ramp-engine's, made to survive failed submissions and to
    keep ramp-board's contributivity up to date (:mod:`atlas_ramp.course.dispatcher`).

    Parameters
    ----------
    config, event_config : path
        ramp-board's database ``config.yml`` and the event's ``config.yml``.
    python_env : path, optional
        The workers' environment prefix; default: the event's ``python_env``.
    dask_scheduler : str, optional
        Train on the dask workers of this scheduler, on any number of hosts
        (:mod:`atlas_ramp.course.dask_pool`), instead of local processes.
    n_workers, n_threads : int, optional
        Default: the event's ``dispatcher`` section (1 worker, no thread cap).
    exit_when_done : bool
        Stop when no submission is left to train (else poll for new ones).
    sandbox : bool, optional
        Train in the sandbox (:mod:`atlas_ramp.course.sandbox`); default: the event's
        ``worker: sandbox`` setting, True when absent. False lets students'
        code read the private test masks.

    Raises
    ------
    DeployError
        No python_env; the sandbox wanted but bubblewrap missing or refused
        here (local workers).
    """
    event = read_config(str(event_config))
    settings = event.get("dispatcher", {})
    if sandbox is None:
        sandbox = bool(event.get("worker", {}).get("sandbox", True))
    overrides = {"sandbox": sandbox}
    if python_env is not None:
        overrides["python_env"] = str(Path(python_env).resolve())
    prefix = overrides.get("python_env", event.get("worker", {}).get("python_env"))
    if not prefix:
        raise DeployError(
            f"{event_config} names no python_env (the workers' environment): pass "
            "--python-env PREFIX, the environment where the kit is installed."
        )
    n_threads = n_threads or settings.get("n_threads")
    if dask_scheduler is not None:
        overrides["dask_scheduler"] = dask_scheduler
        overrides["n_threads"] = n_threads  # set on the worker hosts
    if sandbox and dask_scheduler is None:
        try:
            check_sandbox()
        except SandboxUnavailable as error:
            raise DeployError(str(error)) from error
    # (with a dask pool, each worker host checks for bubblewrap itself: a host
    # without it ends the submission in an error that says so)
    if not sandbox:
        warnings.warn(
            "Training WITHOUT the sandbox (--no-sandbox): students' code runs "
            "beside the private test masks and can read them; the private "
            "leaderboard is only as honest as every student.",
            stacklevel=2,
        )
    worker_class = DaskPoolWorker if dask_scheduler else VirtualenvWorker

    def worker(worker_config, submission):
        return worker_class({**worker_config, **overrides}, submission)

    try:
        CourseDispatcher(
            config=str(config),
            event_config=str(event_config),
            worker=worker,
            n_workers=n_workers or settings.get("n_workers", 1),
            n_threads=n_threads,
            hunger_policy="exit" if exit_when_done else settings.get("hunger_policy"),
            time_between_collection=settings.get("time_between_collection", 1),
        ).launch()
    finally:
        close_pool_clients()
