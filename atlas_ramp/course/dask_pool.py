"""Train submissions on a pool of dask workers, on any number of machines.

ramp-engine 0.10.1's ``DaskWorker`` accepts dask workers on one host only,
decides whether to upload the submission by comparing host names, and sends
the upload, the run, the log read and the copy of the predictions as separate
tasks that may land on different workers. :class:`DaskPoolWorker` sends each
submission as **one** task (:func:`atlas_ramp.course.worker_host.run_submission_here`):
the submission's files go in as bytes, its log and predictions come back as
bytes, so every step runs on the one worker that picked the task, and the
workers share no filesystem with the dispatcher. N machines each running
``dask worker --nthreads 1`` train N submissions at once.

What a worker host needs: the kit and the data folders at the paths of the
event's ``config.yml`` (``kit_dir``, ``data_dir``), and ``python_env``, an
environment with the kit and ``distributed`` (``pip install -r
requirements-worker.txt``), from which it runs ``dask worker``.

When a dask worker dies while it trains (a machine lost, out of memory), the
dask scheduler runs the task again on another worker, up to its
``distributed.scheduler.allowed-failures`` (dask's default: 3); after that,
and for any other failure of the pool (scheduler gone, task cancelled, results
that cannot be written), the submission ends in ``checking_error`` with a
message saying what happened, and the dispatcher carries on.

This module imports ramp-engine and dask: it runs in the server's environment.
"""

from __future__ import annotations

import io
import logging
import shutil
import tarfile
import time
import uuid
from pathlib import Path

from ramp_engine.base import BaseWorker, _get_traceback

from .._io import atomic_write_text, replace_folder, staging_folder
from .worker_host import (
    RAMP_SIDE_EXIT_CODE,
    TIMEOUT_EXIT_CODE,
    ramp_side_message,
    read_submission_files,
    run_submission_here,
)

logger = logging.getLogger("RAMP-WORKER")

# How long after the event's timeout the dispatcher stops waiting for a task
# that the worker host itself should have stopped.
TIMEOUT_GRACE_SECONDS = 300
_REQUIRED = (
    "kit_dir",
    "data_dir",
    "submissions_dir",
    "logs_dir",
    "predictions_dir",
    "python_env",
    "dask_scheduler",
)
_clients: dict = {}


def pool_client(address: str):
    """One dask client per scheduler for the whole dispatcher process."""
    from distributed import Client

    client = _clients.get(address)
    if client is None or client.status not in ("running", "connecting"):
        client = Client(address, timeout="30s", set_as_default=False)
        _clients[address] = client
    return client


def close_pool_clients() -> None:
    """Close the clients opened by :func:`pool_client`."""
    while _clients:
        _, client = _clients.popitem()
        client.close()


def unpack_folder(packed: bytes, destination: Path) -> None:
    """Extract the bytes of :func:`~atlas_ramp.course.worker_host.pack_folder`
    as ``destination``.

    The folder is built aside and renamed into place, replacing an old one.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    stage = staging_folder(destination.parent, f".{destination.name}-")
    try:
        with tarfile.open(fileobj=io.BytesIO(packed), mode="r:gz") as archive:
            archive.extractall(stage / "new", filter="data")
        replace_folder(stage / "new", destination)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


class DaskPoolWorker(BaseWorker):
    """ramp-engine worker for one submission, run as one task on a dask pool.

    Parameters
    ----------
    config : dict
        ramp-engine's worker configuration (``kit_dir``, ``data_dir``: paths on
        the worker hosts; ``submissions_dir``, ``logs_dir``,
        ``predictions_dir``: paths on the dispatcher's host; ``timeout``),
        ``python_env`` (the environment's prefix on the worker hosts),
        ``dask_scheduler`` (its address) and ``n_threads`` (optional).
    submission : str
        ramp-board's name of the submission (``submission_<id>``).

    Attributes
    ----------
    run_remotely : callable
        The task run on a worker: same signature and result as
        :func:`atlas_ramp.course.worker_host.run_submission_here`.
    """

    run_remotely = staticmethod(run_submission_here)

    def setup(self):
        for name in _REQUIRED:
            self._check_config_name(self.config, name)
        self._client = pool_client(self.config["dask_scheduler"])
        if not self._client.scheduler_info().get("workers"):
            logger.warning(
                f"No dask worker is connected to {self.config['dask_scheduler']} "
                f"yet: {self.submission} waits for one."
            )
        super().setup()

    @property
    def timeout(self) -> float:
        return self.config.get("timeout", 7200)

    def launch_submission(self):
        files = read_submission_files(
            Path(self.config["submissions_dir"]) / self.submission
        )
        settings = {
            "python_env": self.config["python_env"],
            "kit_dir": self.config["kit_dir"],
            "data_dir": self.config["data_dir"],
            "timeout": self.timeout,
            "n_threads": self.config.get("n_threads"),
            "sandbox": self.config.get("sandbox", True),
        }
        self._future = self._client.submit(
            self.run_remotely,
            files,
            self.submission,
            settings,
            key=f"ramp-test-{self.submission}-{uuid.uuid4().hex[:8]}",
            pure=False,
        )
        self._started = time.monotonic()
        super().launch_submission()

    def _is_submission_interrupted(self):
        return False

    def _is_submission_finished(self):
        overdue = (
            time.monotonic() - self._started > self.timeout + TIMEOUT_GRACE_SECONDS
        )
        if overdue and not self._future.done():
            self._future.cancel()
            self._overdue = True
            return True
        return self._future.done()

    def _write_log(self, text: str) -> None:
        log = Path(self.config["logs_dir"]) / self.submission / "log"
        log.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(log, text)

    def collect_results(self):
        """Write the log and predictions; ``(returncode, error message)``."""
        super().collect_results()
        self.status = "collected"
        if getattr(self, "_overdue", False):
            message = (
                f"Worker killed due to timeout after {self.timeout}s (the dask "
                "worker training it did not answer)."
            )
            self._write_log(message + "\n")
            return TIMEOUT_EXIT_CODE, message
        try:
            result = self._future.result()
        except Exception as error:  # lost worker, cancelled task, scheduler gone
            message = ramp_side_message("training on the dask pool failed", error)
            logger.error(f"{self.submission} failed on the dask pool: {message}")
            self._write_log(message + "\n")
            return RAMP_SIDE_EXIT_CODE, message
        log = result["log"].decode("utf-8", errors="replace")
        self._write_log(f"Trained on dask worker {result['worker']}\n{log}")
        logger.info(f"{self.submission} ran on dask worker {result['worker']}")
        if result["returncode"]:
            return result["returncode"], _get_traceback(log)
        predictions = Path(self.config["predictions_dir"]) / self.submission
        unpack_folder(result["outputs"], predictions)
        return 0, _get_traceback(log)

    def teardown(self):
        future = getattr(self, "_future", None)
        if future is not None:
            future.release()
        super().teardown()
