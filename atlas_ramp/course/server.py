"""Deploy the kit as a course competition on a RAMP server (ramp-board 0.10.1).

ramp-board knows an event by folders beside its database configuration
(``config.yml``, made by ``ramp setup init``)::

    <deployment>/config.yml                    the database (sqlalchemy section)
    <deployment>/ramp-kits/atlas_stroke/       what ramp-frontend serves to ANYONE
    <deployment>/ramp-data/atlas_stroke/data/  {train,test}: private, server only
    <deployment>/events/<event>/config.yml     the event, its worker, its dispatcher

One command writes all of them and then runs ramp-board's own deployment
(``ramp setup deploy-event --no-cloning``)::

    atlas-ramp server deploy --deployment-dir /srv/ramp \\
        --event atlas_stroke_course --title "Stroke lesions, course 2026" \\
        --private-data /srv/course/private --worker-env /srv/atlas-worker

``--private-data`` is the private side of ``atlas-ramp instructor``
(its ``train`` trains the submissions, its ``test`` ranks them); ``--synthetic
N_TRAIN N_TEST`` builds a synthetic sample instead, for a demo course.

The kit folder holds the kit's code, the baselines and the starting-kit notebook,
and **no data**: ``deploy-event`` zips that folder and ramp-frontend serves the
zip without login, so any NIfTI file in it would give ATLAS data to people who
never signed the data use agreement. The command refuses to deploy a kit folder
holding one, and checks the zip after deployment. What the kit folder and the
data folder hold, and these checks, are in :mod:`atlas_ramp.course.event_kit`; this
module deploys them on ramp-board.

Every check (event name, database, data) runs before anything is written; new
folders are built under temporary names and renamed into place; existing kit,
data and event folders are kept as they are, and an event already in the
database is left alone, so running the command again never damages a
deployment.

Submissions are trained by ``atlas-ramp server dispatch`` (see
:mod:`atlas_ramp.course.ramp_worker`), or by ramp-engine's own ``ramp launch
dispatcher`` with its ``conda`` worker where conda is installed.

This module imports ramp-board only inside the functions that need it: it runs
in the server's environment (``requirements-server.txt``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..bids import DataError
from .event_kit import (
    PROBLEM_NAME,
    DeployError,
    build_data,
    build_kit,
    check_course_data,
    check_kit_has_no_data,
    check_zip_has_no_data,
)

MIN_SECONDS_BETWEEN_SUBMISSIONS = 900


def check_event_name(event: str) -> None:
    """ramp-board's rule: the event name starts with ``atlas_stroke_``."""
    if not event.startswith(PROBLEM_NAME + "_") or len(event) == len(PROBLEM_NAME) + 1:
        raise DeployError(
            f"--event {event!r}: ramp-board needs event names that start with the "
            f"problem name, e.g. '{PROBLEM_NAME}_course2026'."
        )


def read_database_config(config: Path | str) -> dict:
    """The ``sqlalchemy`` section of ramp-board's ``config.yml``, checked live.

    Raises
    ------
    DeployError
        No such file, no ``sqlalchemy`` section, or a database that does not
        answer.
    """
    import sqlalchemy
    from ramp_utils import read_config

    config = Path(config)
    if not config.is_file():
        raise DeployError(
            f"No database configuration {config}: run `ramp setup init "
            f"--deployment-dir {config.parent}` and fill in its sqlalchemy section "
            "(PostgreSQL user, password, host, port, database)."
        )
    database = read_config(str(config)).get("sqlalchemy")
    if not database:
        raise DeployError(f"{config} has no sqlalchemy section: see `ramp setup init`.")
    try:
        engine = sqlalchemy.create_engine(sqlalchemy.engine.URL.create(**database))
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT 1"))
        engine.dispose()
    except sqlalchemy.exc.SQLAlchemyError as error:
        first_line = str(error).strip().splitlines()[0]
        raise DeployError(
            f"The database of {config} does not answer ({first_line}). Start "
            "PostgreSQL, create the user and the database it names (`createuser`, "
            "`createdb`), or correct the file."
        ) from error
    return database


def event_config_text(
    deployment: Path,
    event: str,
    title: str,
    worker_env: Path | None,
    n_workers: int,
    public: bool,
) -> str:
    """The event's ``config.yml`` (ramp-board's format, all paths absolute)."""
    import yaml

    events = deployment / "events" / event
    config = {
        "ramp": {
            "problem_name": PROBLEM_NAME,
            "event_name": event,
            "event_title": title,
            "event_is_public": public,
            "kit_dir": str(deployment / "ramp-kits" / PROBLEM_NAME),
            "data_dir": str(deployment / "ramp-data" / PROBLEM_NAME),
            "submissions_dir": str(events / "submissions"),
            "predictions_dir": str(events / "predictions"),
            "logs_dir": str(events / "logs"),
            "sandbox_dir": "starting_kit",
        },
        "worker": {
            # ramp-engine's own worker (`ramp launch dispatcher`) uses conda_env;
            # `atlas-ramp server dispatch` uses python_env, no conda.
            "worker_type": "conda",
            "conda_env": "atlas-stroke",
            "timeout": 7200,
        },
        "dispatcher": {"n_workers": n_workers, "hunger_policy": "sleep"},
    }
    if worker_env is not None:
        config["worker"]["python_env"] = str(worker_env)
    return yaml.safe_dump(config, sort_keys=False)


def _write_new(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.new")
    temporary.write_text(text, encoding="utf-8")
    os.rename(temporary, path)


def deploy(
    deployment_dir: Path | str,
    event: str,
    title: str,
    *,
    private_data: Path | str | None = None,
    synthetic: tuple[int, int] | None = None,
    seed: int = 0,
    downsample: int = 1,
    n_cohorts: int = 3,
    worker_env: Path | str | None = None,
    n_workers: int = 1,
    min_seconds_between_submissions: int = MIN_SECONDS_BETWEEN_SUBMISSIONS,
    public: bool = True,
    database_config: Path | str | None = None,
    log=print,
) -> Path:
    """Deploy (or check) a course event; see the module's notes.

    Parameters
    ----------
    deployment_dir : path
        The folder of ramp-board's ``config.yml``.
    event, title : str
        The event name (``atlas_stroke_...``) and its title on the website.
    private_data : path, optional
        A folder with labelled ``train/`` and ``test/`` (the instructor's private
        data). Exactly one of ``private_data`` and ``synthetic`` is needed when
        ``ramp-data/atlas_stroke/data`` does not exist yet.
    synthetic : (int, int), optional
        Numbers of train and test subjects of a synthetic sample (demo course).
    seed, downsample, n_cohorts : int
        Of the synthetic sample.
    worker_env : path, optional
        The Python environment the conda-free worker runs ``ramp-test`` from.
    n_workers : int
        Submissions trained at the same time by the dispatcher.
    min_seconds_between_submissions : int
        How long a student waits between two submissions.
    public : bool
        Whether the event is listed on the website.
    database_config : path, optional
        Default: ``<deployment_dir>/config.yml``.
    log : callable
        Receives one line per step.

    Returns
    -------
    Path
        The event's ``config.yml``.

    Raises
    ------
    DeployError, DataError
        Before anything is written, for bad arguments.
    """
    deployment = Path(deployment_dir).resolve()
    config = Path(database_config or deployment / "config.yml").resolve()
    kit_dir = deployment / "ramp-kits" / PROBLEM_NAME
    data_dir = deployment / "ramp-data" / PROBLEM_NAME / "data"
    event_config = deployment / "events" / event / "config.yml"

    # 1. Every check, before anything is written.
    check_event_name(event)
    if private_data is not None and synthetic is not None:
        raise DeployError("Pass --private-data or --synthetic, not both.")
    if n_workers < 1:
        raise DeployError(f"--n-workers must be at least 1, got {n_workers}.")
    if min_seconds_between_submissions < 0:
        raise DeployError(
            "--min-seconds-between-submissions must be 0 or more, got "
            f"{min_seconds_between_submissions}."
        )
    if worker_env is not None:
        worker_env = Path(worker_env).resolve()
        if not (worker_env / "bin" / "ramp-test").is_file():
            raise DeployError(
                f"--worker-env {worker_env} has no bin/ramp-test: give the prefix of "
                "the workers' Python environment (where the kit is installed)."
            )
    database = read_database_config(config)
    if data_dir.exists():
        counts = check_course_data(data_dir)
        if private_data is not None or synthetic is not None:
            log(f"Keeping the existing data {data_dir} (remove it to replace it).")
    elif private_data is None and synthetic is None:
        raise DeployError(
            f"{data_dir} does not exist: pass --private-data (the private folder of "
            "`atlas-ramp instructor`) or --synthetic N_TRAIN N_TEST."
        )
    elif private_data is not None:
        private_data = Path(private_data).resolve()
        counts = check_course_data(private_data)
    if kit_dir.exists():
        check_kit_has_no_data(kit_dir)

    # 2. The folders, each built aside and renamed into place.
    if not kit_dir.exists():
        kit_dir.parent.mkdir(parents=True, exist_ok=True)
        build_kit(kit_dir)
        log(f"Kit (no data) in {kit_dir}")
    if not data_dir.exists():
        counts = build_data(
            data_dir, private_data, synthetic, seed, downsample, n_cohorts
        )
        log(f"Data in {data_dir}: {counts['train']} train, {counts['test']} test")
    if event_config.exists():
        log(f"Keeping the existing event configuration {event_config}")
    else:
        text = event_config_text(
            deployment, event, title, worker_env, n_workers, public
        )
        _write_new(event_config, text)
        log(f"Event configuration in {event_config}")

    # 3. ramp-board's own deployment, then the course's rules.
    if not _deploy_event(config, database, event_config, event, kit_dir):
        log(f"Event {event} is in the database already: left as it is.")
        return event_config
    _set_min_duration(database, event, min_seconds_between_submissions)
    log(
        f"Event {event} deployed: {counts['train']} train / {counts['test']} test "
        f"subjects, {min_seconds_between_submissions} s between submissions."
    )
    return event_config


def _deploy_event(
    config: Path, database: dict, event_config: Path, event: str, kit_dir: Path
) -> bool:
    """ramp-board's ``deploy-event --no-cloning``; False if the event exists."""
    from ramp_database.tools.event import get_event
    from ramp_database.utils import session_scope
    from ramp_utils.deploy import deploy_ramp_event

    with session_scope(database) as session:
        if get_event(session, event) is not None:
            return False
    # deploy-event runs `jupyter nbconvert`: find it beside this Python.
    bin_dir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    check_kit_has_no_data(kit_dir)
    try:
        deploy_ramp_event(str(config), str(event_config), setup_ramp_repo=False)
    except ValueError as error:
        raise DeployError(f"ramp-board refused the event {event}: {error}") from error
    check_zip_has_no_data(kit_dir / "events_archived" / f"{event}.zip")
    return True


def _set_min_duration(database: dict, event: str, seconds: int) -> None:
    from ramp_database.tools.event import get_event
    from ramp_database.utils import session_scope

    with session_scope(database) as session:
        get_event(session, event).min_duration_between_submissions = seconds
        session.commit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atlas-ramp server",
        description="Run the ATLAS kit as a course on a RAMP server (ramp-board).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    dep = commands.add_parser(
        "deploy",
        help="kit folder (no data), data folder, event config, ramp-board deployment",
    )
    dep.add_argument(
        "--deployment-dir", type=Path, required=True, help="folder of config.yml"
    )
    dep.add_argument(
        "--event", required=True, help=f"event name, starting with {PROBLEM_NAME}_"
    )
    dep.add_argument("--title", required=True, help="the event's title on the website")
    source = dep.add_mutually_exclusive_group()
    source.add_argument(
        "--private-data",
        type=Path,
        help="labelled train/ and test/: the private folder of atlas-ramp instructor",
    )
    source.add_argument(
        "--synthetic",
        type=int,
        nargs=2,
        metavar=("N_TRAIN", "N_TEST"),
        help="a synthetic sample instead (demo course)",
    )
    dep.add_argument("--seed", type=int, default=0, help="of --synthetic")
    dep.add_argument(
        "--downsample", type=int, default=1, help="of --synthetic (4: 4 mm voxels)"
    )
    dep.add_argument("--n-cohorts", type=int, default=3, help="of --synthetic")
    dep.add_argument(
        "--worker-env",
        type=Path,
        help="prefix of the workers' Python environment (has bin/ramp-test)",
    )
    dep.add_argument("--n-workers", type=int, default=1, help="default: 1")
    dep.add_argument(
        "--min-seconds-between-submissions",
        type=int,
        default=MIN_SECONDS_BETWEEN_SUBMISSIONS,
        help="default: %(default)s",
    )
    dep.add_argument(
        "--private-event", action="store_true", help="do not list the event"
    )
    dep.add_argument(
        "--config",
        type=Path,
        help="database config (default: <deployment-dir>/config.yml)",
    )

    dis = commands.add_parser(
        "dispatch", help="train submissions with ramp-engine's dispatcher, no conda"
    )
    dis.add_argument("--config", type=Path, required=True, help="database config.yml")
    dis.add_argument(
        "--event-config", type=Path, required=True, help="events/<event>/config.yml"
    )
    dis.add_argument(
        "--python-env",
        type=Path,
        help="prefix of the workers' environment (default: the event's python_env)",
    )
    dis.add_argument(
        "--dask-scheduler",
        help="train on the dask workers of this scheduler (any number of hosts), "
        "e.g. tcp://10.0.0.5:8786",
    )
    dis.add_argument("--n-workers", type=int, help="default: the event's dispatcher")
    dis.add_argument(
        "--n-threads", type=int, help="threads per submission (OMP, MKL, OpenBLAS)"
    )
    dis.add_argument(
        "--no-sandbox",
        dest="sandbox",
        action="store_false",
        default=None,
        help="train with plain ramp-test, NOT in the bubblewrap sandbox: students' "
        "code can then read the private test masks (default: the event's "
        "worker: sandbox, else sandboxed)",
    )
    dis.add_argument(
        "--exit-when-done",
        action="store_true",
        help="stop once no submission is left (else wait for new ones)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "deploy":
            deploy(
                args.deployment_dir,
                args.event,
                args.title,
                private_data=args.private_data,
                synthetic=tuple(args.synthetic) if args.synthetic else None,
                seed=args.seed,
                downsample=args.downsample,
                n_cohorts=args.n_cohorts,
                worker_env=args.worker_env,
                n_workers=args.n_workers,
                min_seconds_between_submissions=args.min_seconds_between_submissions,
                public=not args.private_event,
                database_config=args.config,
            )
        else:
            from .ramp_worker import dispatch

            dispatch(
                args.config,
                args.event_config,
                python_env=args.python_env,
                dask_scheduler=args.dask_scheduler,
                n_workers=args.n_workers,
                n_threads=args.n_threads,
                exit_when_done=args.exit_when_done,
                sandbox=args.sandbox,
            )
    except (DeployError, DataError, OSError) as error:
        print(f"atlas-ramp server: error: {error}", file=sys.stderr)
        return 1
    except ImportError as error:
        print(
            f"atlas-ramp server: error: {error}. Run this command in the server's "
            "environment: python -m pip install -r requirements-server.txt .",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    # Run the importable module's main, not this file's second copy of it
    # (`python -m` runs the file as __main__), so that one copy of its names is used.
    from atlas_ramp.course.server import main as _main

    raise SystemExit(_main())
