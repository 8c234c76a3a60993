"""ramp-engine workers that run ``ramp-test`` from a Python environment, no conda.

ramp-engine's local (``conda``) and ``dask`` workers ask conda where the
environment of an event lives (``conda info --envs``), then run
``<env>/bin/ramp-test --submission <name> --save-output ...``. These two
subclasses skip that question: the event's worker configuration (or the command
line) gives the environment's prefix as ``python_env``, any virtual environment
where the kit is installed (``python -m pip install -r requirements.txt``).
Everything else (logs, time-outs, collecting predictions, error messages) is
ramp-engine's own code.

The local worker trains each submission in a sandbox where the private test
masks cannot be read, and scores its test predictions outside it
(:func:`atlas_ramp.sandbox.run_sandboxed_submission`); ``--no-sandbox`` (the
event's ``worker: sandbox: false``) runs plain ``ramp-test`` instead, where
bubblewrap cannot work and every student is trusted.

Launch the dispatcher with them from the server's environment::

    python -m atlas_ramp.server dispatch --config /srv/ramp/config.yml \\
        --event-config /srv/ramp/events/atlas_stroke_course/config.yml \\
        --python-env /srv/atlas-worker

and with ``--dask-scheduler tcp://HOST:8786`` to train on the host of a dask
cluster (ramp-engine wants all its dask workers on one machine). Where conda
exists, ramp-engine's own ``ramp launch dispatcher --event-config ...`` trains
the same deployment with its ``conda`` worker (``conda_env`` of the event's
configuration).

This module imports ramp-engine: it runs in the server's environment only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from datetime import datetime
from pathlib import Path
from urllib.parse import urlparse

from ramp_engine import Dispatcher
from ramp_engine.base import BaseWorker
from ramp_engine.local import CondaEnvWorker
from ramp_engine.remote import DaskWorker, _check_dask_workers_single_machine
from ramp_utils import read_config

from .event_kit import DeployError
from .sandbox import SandboxUnavailable, check_sandbox

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
        """Start ``python -m atlas_ramp.sandbox`` (or plain ``ramp-test``).

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
        options = {
            "--kit-dir": self.config["kit_dir"],
            "--data-dir": self.config["data_dir"],
            "--submission-dir": submission_dir,
            "--python-env": str(Path(self._python_bin_path).parent),
            "--output-dir": os.path.join(submission_dir, "training_output"),
            "--log": log_path,
            # A little before ramp-engine's own kill, so that the runner stops
            # the sandbox and removes its staging folder itself.
            "--timeout": str(max(1.0, 0.99 * self.timeout - 5)),
        }
        command = [sys.executable, "-m", "atlas_ramp.sandbox"]
        for option, value in options.items():
            command += [option, value]
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


class VirtualenvDaskWorker(DaskWorker):
    """ramp-engine's dask worker, running ``<python_env>/bin/ramp-test``.

    ``python_env`` is a path on the dask workers' host. See :class:`DaskWorker`
    for the rest of the configuration (``dask_scheduler`` among it).
    """

    def setup(self):
        from dask.distributed import Client

        for name in (*_REQUIRED, "dask_scheduler"):
            self._check_config_name(self.config, name)
        self._python_bin_path = _ramp_test_bin(self)
        self._client = Client(self.config["dask_scheduler"])
        urls = list(self._client.nthreads())
        _check_dask_workers_single_machine(urls)
        self._is_local_cluster = (
            urlparse(self.config["dask_scheduler"]).hostname
            == urlparse(urls[0]).hostname
        )
        ramp_test = os.path.join(self._python_bin_path, "ramp-test")
        if not self._client.submit(os.path.isfile, ramp_test, pure=False).result():
            self.status = "error"
            raise ValueError(f"{ramp_test} does not exist on the dask workers' host.")
        BaseWorker.setup(self)

    def teardown(self):
        if self.status == "error":
            if hasattr(self, "_client"):
                self._client.close()
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
    """Run ramp-engine's dispatcher for one event with a conda-free worker.

    Parameters
    ----------
    config, event_config : path
        ramp-board's database ``config.yml`` and the event's ``config.yml``.
    python_env : path, optional
        The workers' environment prefix; default: the event's ``python_env``.
    dask_scheduler : str, optional
        Train on a dask cluster (one host) instead of local processes.
    n_workers, n_threads : int, optional
        Default: the event's ``dispatcher`` section (1 worker, no thread cap).
    exit_when_done : bool
        Stop when no submission is left to train (else poll for new ones).
    sandbox : bool, optional
        Train in the sandbox (:mod:`atlas_ramp.sandbox`); default: the event's
        ``worker: sandbox`` setting, True when absent. False lets students'
        code read the private test masks.

    Raises
    ------
    DeployError
        No python_env; the sandbox wanted but bubblewrap missing or refused
        here; the sandbox wanted with a dask cluster (not sandboxed yet).
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
    if dask_scheduler is not None:
        overrides["dask_scheduler"] = dask_scheduler
    if sandbox and dask_scheduler is not None:
        raise DeployError(
            "The dask worker does not train in the sandbox yet: pass --no-sandbox "
            "to train there anyway (students' code can then read the private test "
            "masks), or train with local workers (no --dask-scheduler)."
        )
    if sandbox:
        try:
            check_sandbox()
        except SandboxUnavailable as error:
            raise DeployError(str(error)) from error
    else:
        warnings.warn(
            "Training WITHOUT the sandbox (--no-sandbox): students' code runs "
            "beside the private test masks and can read them; the private "
            "leaderboard is only as honest as every student.",
            stacklevel=2,
        )
    worker_class = VirtualenvDaskWorker if dask_scheduler else VirtualenvWorker

    def worker(worker_config, submission):
        return worker_class({**worker_config, **overrides}, submission)

    Dispatcher(
        config=str(config),
        event_config=str(event_config),
        worker=worker,
        n_workers=n_workers or settings.get("n_workers", 1),
        n_threads=n_threads or settings.get("n_threads"),
        hunger_policy="exit" if exit_when_done else settings.get("hunger_policy"),
        time_between_collection=settings.get("time_between_collection", 1),
    ).launch()
