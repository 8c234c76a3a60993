"""Benchmark a course on a local RAMP server: the dispatcher against ``ramp-test``.

Deploys two events of a local ramp-board deployment (a throwaway PostgreSQL on
127.0.0.1, the server's environment of ``requirements-server.txt``, both as in
``tests/test_ramp_board.py``), one trained by the dispatcher with 1 worker, the
other with 2. Each event receives the three baselines (``starting_kit``,
``voxel_classifier``, ``small_cnn``), submitted as ``<name>_s`` by one student
with no wait between submissions; the conda-free dispatcher
(``atlas-ramp server dispatch``) trains them all and exits. The
baselines also run through this environment's ``ramp-test --save-output``, one
at a time, on the same data, for comparison.

Per submission: ``ramp-test``'s wall time, and the dispatcher's, from the moment
ramp-engine starts the worker to the moment it collects its results (the
dispatcher's own log, ``dispatcher.log``); then the dispatcher's total (command
start to exit: loading the event, training, scoring, leaderboards) and, last,
whether the database's bagged test Dice equals ramp-test's.

With ``--dask`` the events are trained on a pool of 1, then 2 dask workers
(``--dask-scheduler``), each worker a simulated machine of its own
(``tests/ramp_board_cluster.py``: a mount namespace per worker, so root is
needed), the dispatcher sending every submission at once.

Usage::

    python bench/bench_ramp_board.py               # 4 mm sample, 12 + 6, full
    python bench/bench_ramp_board.py --quick       # RAMP_TEST_MODE=1 everywhere
    python bench/bench_ramp_board.py --data data   # another data folder
    python bench/bench_ramp_board.py --dask --submissions starting_kit voxel_classifier

Wall times on a shared machine depend on the others; compare the columns of one
run with each other.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.ramp_board_cluster import SimulatedHosts  # noqa: E402
from tests.ramp_board_setup import (  # noqa: E402
    ThrowawayPostgres,
    build_server_venv,
    write_database_config,
)

BASELINES = ("starting_kit", "voxel_classifier", "small_cnn")
FOLDERS = {}  # submissions given as folders (--submissions PATH), by name
CLIENT = REPO / "tests" / "ramp_board_client.py"
STUDENT, PASSWORD = "student", "student-password"
_LOG_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*?"
    r"(Starting worker: |Collecting results from worker )\w+\((\w+)\)"
)


def environment(quick: bool) -> dict:
    env = dict(os.environ)
    env.pop("RAMP_TEST_MODE", None)
    if quick:
        env["RAMP_TEST_MODE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    return env


def call(command: list, env: dict, cwd: Path) -> str:
    result = subprocess.run(
        [str(part) for part in command],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    if result.returncode:
        sys.exit(
            f"bench_ramp_board.py: {' '.join(map(str, command[:4]))} failed:\n"
            + result.stdout[-2000:]
            + result.stderr[-2000:]
        )
    return result.stdout


def ramp_test_times(submissions, data: Path, env: dict, work: Path) -> dict:
    """Wall time and bagged test Dice of ``ramp-test`` for each submission."""
    ramp_test = Path(sys.executable).parent / "ramp-test"
    answer = {}
    for name in submissions:
        kit = work / f"ramp-test-{name}"
        (kit / "submissions").mkdir(parents=True)
        shutil.copy(REPO / "problem.py", kit)
        shutil.copytree(
            FOLDERS.get(name, REPO / "submissions" / name),
            kit / "submissions" / name,
            ignore=shutil.ignore_patterns("training_output", "__pycache__"),
        )
        (kit / "data").symlink_to(data, target_is_directory=True)
        start = time.perf_counter()
        call([ramp_test, "--submission", name, "--save-output"], env, kit)
        seconds = time.perf_counter() - start
        bagged = kit / "submissions" / name / "training_output" / "bagged_scores.csv"
        rows = [line.split(",") for line in bagged.read_text().splitlines()[1:]]
        header = bagged.read_text().splitlines()[0].split(",")
        last_test = [row for row in rows if row[0] == "test"][-1]
        answer[name] = (seconds, float(last_test[header.index("dice")]))
    return answer


def worker_times(log: Path, event_start: datetime) -> dict:
    """Seconds from worker start to result collection, per submission."""
    starts, ends = {}, {}
    for line in log.read_text().splitlines():
        match = _LOG_LINE.match(line)
        if not match:
            continue
        when = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
        if when < event_start:
            continue
        (starts if match.group(2).startswith("Starting") else ends)[match.group(3)] = (
            when
        )
    return {name: (ends[name] - starts[name]).total_seconds() for name in ends}


def deploy(server, deployment, event, data, env) -> None:
    call(
        [
            server, "-m", "atlas_ramp", "server", "deploy", "--deployment-dir",
            deployment, "--event", event, "--title", event, "--private-data", data,
            "--worker-env", sys.prefix, "--min-seconds-between-submissions", "0",
        ],
        env, deployment,
    )  # fmt: skip


def run_event(
    server, deployment, config, event, n_workers, data, env, scheduler=None
) -> dict:
    """Deploy one event, submit the baselines, dispatch; times and Dice.

    With a dask ``scheduler``, the dispatcher sends every submission at once.
    """
    deploy(server, deployment, event, data, env)
    ramp = server.parent / "ramp"
    call(
        [ramp, "database", "sign-up-team", "--config", config, "--event", event,
         "--team", STUDENT],
        env, deployment,
    )  # fmt: skip
    for name in BASELINES:
        call(
            [server, CLIENT, "submit", f"--config={config}", f"--event={event}",
             f"--team={STUDENT}", f"--name={name}_s",
             f"--path={FOLDERS.get(name, REPO / 'submissions' / name)}"],
            env, deployment,
        )  # fmt: skip
    started = datetime.now().replace(microsecond=0)
    start = time.perf_counter()
    call(
        [server, "-m", "atlas_ramp", "server", "dispatch", "--config", config,
         "--event-config", deployment / "events" / event / "config.yml",
         "--exit-when-done",
         *(["--dask-scheduler", scheduler, "--n-workers", len(BASELINES)]
           if scheduler else ["--n-workers", n_workers])],
        env, deployment,
    )  # fmt: skip
    total = time.perf_counter() - start
    by_folder = worker_times(deployment / "dispatcher.log", started)
    dice, per_submission = {}, {}
    for name in BASELINES:
        answer = json.loads(
            call(
                [
                    server,
                    CLIENT,
                    "results",
                    f"--config={config}",
                    f"--event={event}",
                    f"--team={STUDENT}",
                    f"--name={name}_s",
                ],
                env,
                deployment,
            )  # fmt: skip
        )
        if answer["state"] != "scored":
            sys.exit(f"{name}_s ended {answer['state']}: {answer['error_msg']}")
        bags = [int(key[5:]) for key in answer["bagged"] if key.startswith("test/")]
        dice[name] = answer["bagged"][f"test/{max(bags)}"]["dice"]
        per_submission[name] = by_folder[answer["basename"]]
    return {"total": total, "per_submission": per_submission, "dice": dice}


def main(argv=None) -> int:
    global BASELINES, FOLDERS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="data folder (train/, test/)")
    parser.add_argument("--quick", action="store_true", help="RAMP_TEST_MODE=1")
    parser.add_argument(
        "--dask", action="store_true", help="a pool of 1, then 2 dask workers"
    )
    parser.add_argument(
        "--submissions",
        nargs="+",
        default=BASELINES,
        help="baselines' names or submission folders (default: all baselines)",
    )
    args = parser.parse_args(argv)
    FOLDERS = {Path(n).name: Path(n).resolve() for n in args.submissions if "/" in n}
    BASELINES = tuple(Path(name).name for name in args.submissions)
    env = environment(args.quick)
    server = build_server_venv()
    with tempfile.TemporaryDirectory(prefix="bench-ramp-board-") as work:
        work = Path(work)
        data = args.data.resolve() if args.data else None
        if data is None:
            from atlas_ramp.synthetic import build_sample

            data = work / "sample"
            build_sample(
                data, n_train=12, n_test=6, n_cohorts=3, seed=0, downsample=4,
                progress=False,
            )  # fmt: skip
            described = "4 mm synthetic sample, 12 train + 6 test"
        else:
            described = f"{data}"
        mode = "quick (RAMP_TEST_MODE=1)" if args.quick else "full (5 folds)"
        reference = ramp_test_times(BASELINES, data, env, work)
        with ThrowawayPostgres() as postgres:
            deployment = work / "deployment"
            config = write_database_config(deployment, postgres.sqlalchemy)
            call(
                [server.parent / "ramp", "database", "add-user", "--config", config,
                 "--login", STUDENT, "--password", PASSWORD, "--lastname", "Bench",
                 "--firstname", "Student", "--email", "student@localhost"],
                env, deployment,
            )  # fmt: skip
            call(
                [server.parent / "ramp", "database", "approve-user", "--config",
                 config, "--login", STUDENT],
                env, deployment,
            )  # fmt: skip
            events = {}
            for n in (1, 2):
                event = f"atlas_stroke_bench_{n}w"
                if not args.dask:
                    events[n] = run_event(
                        server, deployment, config, event, n, data, env
                    )
                    continue
                deploy(server, deployment, event, data, env)  # before the copies
                with SimulatedHosts(
                    server, deployment, work / f"hosts{n}", n, env
                ) as hosts:
                    events[n] = run_event(
                        server, deployment, config, event, n, data, env, hosts.address
                    )
    workers = "dask workers" if args.dask else "workers"
    print(f"Data: {described}; mode: {mode}; {os.cpu_count()} CPUs; {workers}.\n")
    print(
        "| submission | ramp-test wall (s) | dispatcher, 1 worker (s) "
        "| dispatcher, 2 workers (s) | bagged test Dice: ramp-test / database |"
    )
    print("|---|---|---|---|---|")
    for name in BASELINES:
        seconds, dice = reference[name]
        one, two = (events[n]["per_submission"][name] for n in (1, 2))
        stored = events[1]["dice"][name], events[2]["dice"][name]
        same = all(abs(value - dice) <= 1e-9 for value in stored)
        print(
            f"| {name} | {seconds:.1f} | {one:.1f} | {two:.1f} | {dice:.6f} / "
            f"{stored[0]:.6f}, {stored[1]:.6f} ({'equal' if same else 'DIFFERENT'}) |"
        )
    total = sum(seconds for seconds, _ in reference.values())
    print(
        f"| **total** | {total:.1f} (one after another) | {events[1]['total']:.1f} "
        f"| {events[2]['total']:.1f} | |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
