"""A ramp-engine worker that runs ``ramp-test`` from a Python environment, no conda.

ramp-engine's local (``conda``) worker asks conda where the environment of an
event lives (``conda info --envs``), then runs ``<env>/bin/ramp-test
--submission <name> --save-output ...``. :class:`VirtualenvWorker` skips that
question: the event's worker configuration (or the command line) gives the
environment's prefix as ``python_env``, any virtual environment where the kit
is installed (``python -m pip install -r requirements.txt``). Everything else
(logs, time-outs, collecting predictions, error messages) is ramp-engine's own
code.

:func:`dispatch` runs the course's dispatcher (:mod:`atlas_ramp.dispatcher`)
with it, from the server's environment::

    python -m atlas_ramp.server dispatch --config /srv/ramp/config.yml \\
        --event-config /srv/ramp/events/atlas_stroke_course/config.yml \\
        --python-env /srv/atlas-worker

and with ``--dask-scheduler tcp://HOST:8786`` it trains on a pool of dask
workers on any number of machines instead (:mod:`atlas_ramp.dask_pool`).
Where conda exists, ramp-engine's own ``ramp launch dispatcher --event-config
...`` trains the same deployment with its ``conda`` worker (``conda_env`` of
the event's configuration), without the course dispatcher's changes.

This module imports ramp-engine: it runs in the server's environment only.
"""

from __future__ import annotations

import os
from pathlib import Path

from ramp_engine.base import BaseWorker
from ramp_engine.local import CondaEnvWorker
from ramp_utils import read_config

from .dask_pool import DaskPoolWorker, close_pool_clients
from .dispatcher import CourseDispatcher
from .event_kit import DeployError

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
        ``python_env``: the prefix of the environment to run ``ramp-test`` from.
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
) -> None:
    """Run the course's dispatcher for one event with a conda-free worker.

    The dispatcher is ramp-engine's, made to survive failed submissions and to
    keep ramp-board's contributivity up to date (:mod:`atlas_ramp.dispatcher`).

    Parameters
    ----------
    config, event_config : path
        ramp-board's database ``config.yml`` and the event's ``config.yml``.
    python_env : path, optional
        The workers' environment prefix; default: the event's ``python_env``.
    dask_scheduler : str, optional
        Train on the dask workers of this scheduler, on any number of hosts
        (:mod:`atlas_ramp.dask_pool`), instead of local processes.
    n_workers, n_threads : int, optional
        Default: the event's ``dispatcher`` section (1 worker, no thread cap).
    exit_when_done : bool
        Stop when no submission is left to train (else poll for new ones).
    """
    event = read_config(str(event_config))
    settings = event.get("dispatcher", {})
    overrides = {}
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
