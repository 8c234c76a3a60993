"""ramp-board's contributivity and combined scores, kept up to date by the dispatcher.

The collaborative phase of a RAMP event rests on ramp-board's blend: the
submissions' predictions are combined greedily, fold by fold (ramp-workflow's
``blend_submissions``, what ``ramp-blend`` runs), which gives the event's
combined scores and each submission's **contributivity**, its share of the
blend (the shares of an event sum to 1). ramp-engine 0.10.1's dispatcher never
computes them; ``ramp database compute-contributivity`` does, by hand, and goes
stale with the next submission.

:class:`ContributivityRunner` makes the kit's dispatcher run ramp-board's own
``compute-contributivity`` (blend, historical contributivity, leaderboards)
once submissions have been newly scored, in a separate process so that
training never waits for a blend nor dies with one: its output goes to
``<logs_dir>/contributivity.log``, its outcome (or failure) to the dispatcher's
log. A blend starts when the dispatcher has nothing left to train, or, while
training goes on, at most every ``min_interval`` seconds (several submissions
scored close together make one blend); submissions scored while a blend runs
are blended by the next one.

``python -m atlas_ramp.course.contributivity CONFIG EVENT_CONFIG`` is that process; it
prints, last, one line ``CONTRIBUTIVITY <json>``: the event's combined scores
and each scored submission's contributivity. ramp-board is imported inside
functions only: this module runs in the server's environment.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

MARKER = "CONTRIBUTIVITY "


def compute(config: str, event_config: str) -> dict:
    """Run ramp-board's ``compute-contributivity``; what it stored.

    Returns
    -------
    dict
        ``combined_valid`` and ``combined_test`` (the event's combined
        scores) and ``contributivity`` (per scored submission, by name).
    """
    from ramp_database.cli import main as ramp_database
    from ramp_database.tools._query import select_submissions_by_state
    from ramp_database.tools.event import get_event
    from ramp_database.utils import session_scope
    from ramp_utils import generate_ramp_config, read_config

    ramp_database(
        ["compute-contributivity", "--config", config, "--config-event", event_config],
        standalone_mode=False,
    )
    event_name = generate_ramp_config(event_config, config)["event_name"]
    with session_scope(read_config(config)["sqlalchemy"]) as session:
        event = get_event(session, event_name)
        scored = select_submissions_by_state(session, event_name, "scored")
        return {
            "combined_valid": event.combined_combined_valid_score,
            "combined_test": event.combined_combined_test_score,
            "contributivity": {s.basename: s.contributivity for s in scored},
        }


def describe(summary: dict) -> str:
    """One line for the dispatcher's log."""
    shares = ", ".join(
        f"{name} {value:.3f}" for name, value in summary["contributivity"].items()
    )
    valid, test = summary["combined_valid"], summary["combined_test"]
    return f"combined valid/test score {valid!r}/{test!r}; contributivity: {shares}"


class ContributivityRunner:
    """Runs :func:`compute` in the background when asked, one run at a time.

    Parameters
    ----------
    config, event_config : path
        ramp-board's database ``config.yml`` and the event's ``config.yml``.
    log_path : path
        Where each run's output goes (overwritten by the next run).
    logger : logging.Logger
        Receives what was done, and failures.
    min_interval : float
        Seconds between the starts of two blends while training goes on.
    """

    def __init__(self, config, event_config, log_path, logger, min_interval=300):
        self.command = [
            sys.executable, "-m", "atlas_ramp.course.contributivity",
            str(config), str(event_config),
        ]  # fmt: skip
        self.log_path = Path(log_path)
        self.logger = logger
        self.min_interval = min_interval
        self._process = None
        self._started = -float("inf")
        self._pending: list[str] = []
        self._running: list[str] = []

    def request(self, submissions: list[str]) -> None:
        """Blend again soon: ``submissions`` have been newly scored."""
        self._pending.extend(submissions)

    def poll(self, idle: bool) -> None:
        """Report a finished blend; start the next one if it is time.

        Parameters
        ----------
        idle : bool
            Whether the dispatcher has nothing left to train.
        """
        if self._process is not None:
            if self._process.poll() is None:
                return
            self._report()
        waited = time.monotonic() - self._started
        if self._pending and (idle or waited >= self.min_interval):
            self._start()

    def finish(self) -> None:
        """Wait for the running blend and run the pending one (dispatcher exit)."""
        while self._process is not None or self._pending:
            if self._process is not None:
                self._process.wait()
            self.poll(idle=True)

    def stop(self) -> None:
        """Kill the running blend (dispatcher interrupted)."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._process = None

    def _start(self) -> None:
        self._running, self._pending = self._pending, []
        self.logger.info(
            f"Contributivity: blending the scored submissions (new: "
            f"{', '.join(self._running)}); output in {self.log_path}"
        )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._started = time.monotonic()
        try:
            with open(self.log_path, "wb") as output:
                self._process = subprocess.Popen(
                    self.command, stdout=output, stderr=subprocess.STDOUT
                )
        except OSError as error:
            self.logger.error(f"Contributivity could not start: {error}")
            self._process = None

    def _report(self) -> None:
        seconds = time.monotonic() - self._started
        returncode, self._process = self._process.returncode, None
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError as error:
            lines = [f"(no output: {error})"]
        found = [line for line in lines if line.startswith(MARKER)]
        if returncode == 0 and found:
            try:
                summary = json.loads(found[-1][len(MARKER) :])
                self.logger.info(
                    f"Contributivity updated in {seconds:.1f} s: {describe(summary)}"
                )
                return
            except (ValueError, KeyError, TypeError) as error:
                lines.append(f"unreadable summary: {error}")
        tail = "\n".join(lines[-15:])
        self.logger.error(
            f"Contributivity failed (exit {returncode}, {seconds:.1f} s); training "
            f"goes on. See {self.log_path}; its end:\n{tail}"
        )


def main(argv: list[str] | None = None) -> int:
    """``python -m atlas_ramp.course.contributivity CONFIG EVENT_CONFIG``."""
    config, event_config = sys.argv[1:] if argv is None else argv
    summary = compute(config, event_config)
    print(MARKER + json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
