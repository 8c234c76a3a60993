"""When the dispatcher blends, and what it logs (no ramp-board needed).

:class:`ContributivityRunner` runs ramp-board's ``compute-contributivity`` in a
separate process; here that process is replaced by small Python commands, to
check the schedule and that a failed blend is logged and never raised. The real
blend, with ramp-board and PostgreSQL, is checked in ``test_ramp_board.py``.
"""

import json
import logging
import sys

from atlas_ramp.course.contributivity import MARKER, ContributivityRunner

SUMMARY = {
    "combined_valid": 0.553,
    "combined_test": 0.529,
    "contributivity": {"submission_000000001": 0.583, "submission_000000002": 0.417},
}


def runner(tmp_path, code: str) -> ContributivityRunner:
    blend = ContributivityRunner(
        "config.yml", "event.yml", tmp_path / "contributivity.log",
        logging.getLogger("test_contributivity"), min_interval=3600,
    )  # fmt: skip
    blend.command = [sys.executable, "-c", code]
    return blend


def test_a_blend_runs_once_for_submissions_scored_together(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    code = f"print('blend tables'); print({MARKER + json.dumps(SUMMARY)!r})"
    blend = runner(tmp_path, code)
    blend.poll(idle=True)
    assert "blending" not in caplog.text  # nothing newly scored: no blend
    blend.request(["submission_000000001"])
    blend.poll(idle=False)  # the first blend starts at once ...
    blend.finish()
    assert "Contributivity updated" in caplog.text
    assert "submission_000000001 0.583, submission_000000002 0.417" in caplog.text
    assert "0.553/0.529" in caplog.text
    caplog.clear()
    blend.request(["submission_000000002"])
    blend.poll(idle=False)  # ... the next waits while training goes on
    assert "blending" not in caplog.text
    blend.request(["submission_000000003"])
    blend.poll(idle=True)  # nothing left to train: one blend for both
    assert "(new: submission_000000002, submission_000000003)" in caplog.text
    blend.finish()
    assert caplog.text.count("Contributivity updated") == 1


def test_a_failed_blend_is_logged_and_never_raised(tmp_path, caplog):
    blend = runner(tmp_path, "print('reading predictions'); raise SystemExit(3)")
    blend.request(["submission_000000001"])
    blend.poll(idle=True)
    blend.finish()
    assert "Contributivity failed (exit 3" in caplog.text
    assert "reading predictions" in caplog.text  # the end of its output
    assert str(tmp_path / "contributivity.log") in caplog.text
