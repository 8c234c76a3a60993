"""ramp-engine's dispatcher, made to survive a failed submission and to blend.

Two things change in ramp-engine 0.10.1's ``Dispatcher`` loop (fetch new
submissions, launch workers, collect results, write scores):

* **one submission's failure is that submission's**: in ramp-engine, an
  exception while collecting a worker (a lost dask worker, a missing log, a
  failed copy of the predictions) or while reading its scores leaves the loop,
  stops the dispatcher and sends every submission in training back to ``new``.
  Here every worker is wrapped in :class:`GuardedWorker`, and scores are
  written submission by submission: a failure ends that submission in
  ``checking_error`` with a message saying what failed, and the loop goes on;
* **contributivity is kept up to date**: once submissions have been newly
  scored, ramp-board's ``compute-contributivity`` runs in the background
  (:class:`atlas_ramp.course.contributivity.ContributivityRunner`): when nothing is
  left to train, or every few minutes while training goes on; nothing runs
  when nothing new was scored.

ramp-engine logs to ``dispatcher.log`` and ``worker.log`` in the current folder
(and to standard error). This module imports ramp-engine: it runs in the
server's environment.
"""

from __future__ import annotations

import os
from pathlib import Path

from ramp_database.tools.leaderboard import (
    update_all_user_leaderboards,
    update_leaderboards,
)
from ramp_database.tools.submission import (
    get_submission_state,
    set_bagged_scores,
    set_scores,
    set_submission_error_msg,
    set_submission_state,
    set_time,
)
from ramp_engine import Dispatcher

from .contributivity import ContributivityRunner
from .worker_host import RAMP_SIDE_EXIT_CODE, ramp_side_message


class GuardedWorker:
    """A ramp-engine worker whose failures become its submission's error.

    Wraps any ramp-engine worker: what the dispatcher calls on it (``status``,
    ``collect_results``, ``teardown``) never raises; an exception becomes the
    result ``(2, message)``, which the dispatcher records as
    ``checking_error``.

    Parameters
    ----------
    worker : ramp_engine.base.BaseWorker
        The worker of one submission.
    logger : logging.Logger
    """

    def __init__(self, worker, logger):
        self.worker = worker
        self.submission = worker.submission
        self.name = f"{type(worker).__name__}({worker.submission})"
        self.logger = logger
        self._failure = None

    def _record(self, what: str, error: BaseException) -> None:
        if self._failure is None:
            self._failure = ramp_side_message(what, error)
        self.logger.exception(f"{self.name}: {what}")

    @property
    def status(self):
        if self._failure is not None:
            return "finished"
        try:
            return self.worker.status
        except Exception as error:
            self._record("the worker could not be reached", error)
            return "finished"

    @status.setter
    def status(self, value):
        self.worker.status = value

    def setup(self):
        self.worker.setup()

    def launch_submission(self):
        self.worker.launch_submission()

    def time_since_last_status_check(self):
        return self.worker.time_since_last_status_check()

    def collect_results(self):
        if self._failure is None:
            try:
                return self.worker.collect_results()
            except Exception as error:
                self._record("its results could not be collected", error)
        self.worker.status = "collected"
        return RAMP_SIDE_EXIT_CODE, self._failure

    def teardown(self):
        try:
            self.worker.teardown()
        except Exception:
            self.logger.exception(f"{self.name}: teardown failed (ignored)")

    def __str__(self):
        # Not the worker's own: ramp-engine's reads its status, which may raise.
        return f'{self.name}: status="{self.status}"'

    __repr__ = __str__


class CourseDispatcher(Dispatcher):
    """ramp-engine's ``Dispatcher``, with the changes of the module's notes.

    Parameters
    ----------
    config, event_config : str
        ramp-board's database ``config.yml`` and the event's ``config.yml``.
    worker : callable
        ``worker(worker_config, submission)`` returns a ramp-engine worker.
    **options
        The rest of ramp-engine's ``Dispatcher`` parameters.
    """

    def __init__(self, config, event_config, worker, **options):
        super().__init__(config, event_config, worker=worker, **options)
        self.worker = lambda config, name: GuardedWorker(
            worker(config, name), self._logger
        )
        self._contributivity = ContributivityRunner(
            config,
            event_config,
            Path(self._worker_config["logs_dir"]) / "contributivity.log",
            self._logger,
        )

    def _fail(self, session, submission_id, name, what, error) -> None:
        """End one submission in ``checking_error``; never raises."""
        self._logger.exception(f"Submission {name}: {what}")
        try:
            session.rollback()
            set_submission_state(session, submission_id, "checking_error")
            set_submission_error_msg(
                session, submission_id, ramp_side_message(what, error)
            )
        except Exception:
            session.rollback()
            self._logger.exception(f"Submission {name}: its error was not recorded")

    def update_database_results(self, session):
        """Write each tested submission's scores; blend if any was scored."""
        processed, scored = False, []
        while not self._processed_submission_queue.empty():
            processed = True
            submission_id, name = self._processed_submission_queue.get_nowait()
            try:
                if "error" in get_submission_state(session, submission_id):
                    continue
                self._logger.info(f"Write info in database for submission {name}")
                predictions = os.path.join(self._worker_config["predictions_dir"], name)
                set_time(session, submission_id, predictions)
                set_scores(session, submission_id, predictions)
                set_bagged_scores(session, submission_id, predictions)
                set_submission_state(session, submission_id, "scored")
                scored.append(name)
            except Exception as error:
                self._fail(
                    session, submission_id, name, "its scores could not be read", error
                )
        if processed:
            event = self._ramp_config["event_name"]
            try:
                update_leaderboards(session, event)
                update_all_user_leaderboards(session, event)
                self._logger.info("Leaderboards updated")
            except Exception:
                session.rollback()
                self._logger.exception("The leaderboards could not be updated")
        self._contributivity.request(scored)
        idle = (
            self._processing_worker_queue.empty()
            and self._awaiting_worker_queue.empty()
        )
        self._contributivity.poll(idle)

    def launch(self):
        """Run the loop; on exit, finish the pending blend."""
        try:
            super().launch()
        except BaseException:
            self._contributivity.stop()
            raise
        self._contributivity.finish()
