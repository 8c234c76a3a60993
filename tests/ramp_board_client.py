"""A student's and an instructor's actions on a ramp-board deployment.

Runs in the server's environment (it imports ramp-board), called by the tests and
the benchmark as ``python tests/ramp_board_client.py COMMAND --config ...``; each
command prints one JSON object. Everything goes through ramp-board's own
database API and ramp-frontend's Flask app.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import zipfile


def _session(config):
    from ramp_database.utils import session_scope
    from ramp_utils import read_config

    return session_scope(read_config(config)["sqlalchemy"])


def submit(config, event, team, name, path):
    """Add a submission (as the student would, from the sandbox)."""
    from ramp_database.exceptions import TooEarlySubmissionError
    from ramp_database.tools.submission import add_submission

    with _session(config) as session:
        try:
            add_submission(session, event, team, name, path)
        except TooEarlySubmissionError as error:
            return {"refused": str(error)}
    return {"submitted": name}


def results(config, event, team, name):
    """State, error message, per-fold and bagged scores of a submission."""
    from ramp_database.tools.submission import (
        get_bagged_scores,
        get_scores,
        get_submission_by_name,
        get_submission_error_msg,
        get_time,
    )

    with _session(config) as session:
        submission = get_submission_by_name(session, event, team, name)
        answer = {
            "basename": submission.basename,  # its folder, ramp-engine's name
            "state": submission.state,
            "error_msg": get_submission_error_msg(session, submission.id),
        }
        if submission.state == "scored":
            folds = get_scores(session, submission.id)
            answer["folds"] = {
                f"{fold}/{step}": row.to_dict()
                for (fold, step), row in folds.iterrows()
            }
            bagged = get_bagged_scores(session, submission.id)
            answer["bagged"] = {
                f"{step}/{n_bag}": row.to_dict()
                for (step, n_bag), row in bagged.iterrows()
            }
            times = get_time(session, submission.id)
            answer["train_time"] = float(times["train"].sum())
    return answer


def sign_up(config, event, login, password):
    """A student account, approved and signed up: ramp-board's CLI, one process."""
    from ramp_database.cli import main as ramp_database

    for command in (
        ["add-user", "--login", login, "--password", password, "--lastname",
         login.title(), "--firstname", "Student", "--email", f"{login}@localhost"],
        ["approve-user", "--login", login],
        ["sign-up-team", "--event", event, "--team", login],
    ):  # fmt: skip
        ramp_database([*command, "--config", config], standalone_mode=False)
    return {"signed_up": login}


def contributivity(config, event):
    """The event's combined scores and its scored submissions' contributivity."""
    from ramp_database.tools._query import select_submissions_by_state
    from ramp_database.tools.event import get_event

    with _session(config) as session:
        found = get_event(session, event)
        scored = select_submissions_by_state(session, event, "scored")
        return {
            "combined_valid": found.combined_combined_valid_score,
            "combined_test": found.combined_combined_test_score,
            "contributivity": {s.basename: s.contributivity for s in scored},
        }


def frontend(config, event, login, password):
    """What ramp-frontend serves: the kit anonymously, the leaderboard to a user."""
    from ramp_frontend import create_app
    from ramp_utils import generate_flask_config

    flask_config = generate_flask_config(config)
    flask_config["TESTING"] = True
    flask_config["WTF_CSRF_ENABLED"] = False
    client = create_app(flask_config).test_client()
    anonymous = client.get(f"/download_starting_kit/{event}")
    answer = {"download_status": anonymous.status_code, "kit_files": []}
    if anonymous.status_code == 200:
        with zipfile.ZipFile(io.BytesIO(anonymous.data)) as zipped:
            answer["kit_files"] = zipped.namelist()
    answer["anonymous_leaderboard_status"] = client.get(
        f"/events/{event}/leaderboard"
    ).status_code
    client.post("/login", data={"user_name": login, "password": password})
    page = client.get(f"/events/{event}/leaderboard")
    answer["leaderboard_status"] = page.status_code
    answer["leaderboard_html"] = page.get_data(as_text=True)
    client.get("/logout")
    return answer


def main(argv=None):
    parser = argparse.ArgumentParser(prog="ramp_board_client.py")
    parser.add_argument(
        "command",
        choices=("submit", "results", "frontend", "sign-up", "contributivity"),
    )
    parser.add_argument("--config", required=True)
    parser.add_argument("--event", required=True)
    parser.add_argument("--team", help="the team (a student's login)")
    parser.add_argument("--name", help="the submission's name")
    parser.add_argument("--path", help="the folder of the submission's files")
    parser.add_argument("--password", help="the student's password (frontend)")
    args = parser.parse_args(argv)
    if args.command == "submit":
        answer = submit(args.config, args.event, args.team, args.name, args.path)
    elif args.command == "results":
        answer = results(args.config, args.event, args.team, args.name)
    elif args.command == "sign-up":
        answer = sign_up(args.config, args.event, args.team, args.password)
    elif args.command == "contributivity":
        answer = contributivity(args.config, args.event)
    else:
        answer = frontend(args.config, args.event, args.team, args.password)
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
