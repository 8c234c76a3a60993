"""A course on a real RAMP server: ramp-board 0.10.1 and PostgreSQL, end to end.

The instructor deploys an event with ``atlas-ramp server deploy`` on a
small synthetic sample, signs two students up with ramp-board's own commands;
the students submit through ramp-board's database API; the conda-free dispatcher
(``atlas-ramp server dispatch``) trains the submissions with this
environment's ``ramp-test``. The database must then hold exactly the scores
``ramp-test`` gives on the same data, the leaderboard must show them, a broken
submission must be a ``training_error`` with its message, and the starting kit
served without login must hold no image (and hold the students' README).

Then the collaborative phase on a pool of two dask workers, each a simulated
machine that shares no file with the dispatcher (:mod:`tests.ramp_board_cluster`):
three more submissions, each trained on one worker, scored as ``ramp-test``
scores them; the contributivity and combined score the dispatcher computed are
ramp-board's ``compute-contributivity`` and a local ``ramp-blend``'s; losing a
worker while it trains fails that submission only.

ramp-board lives in its own environment (``requirements-server.txt``, built once
and cached, see :mod:`tests.ramp_board_setup`); PostgreSQL is a throwaway cluster
on 127.0.0.1. Without PostgreSQL the tests are skipped, except in CI
(``CI=true``), where they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from .cheats import FORGE, PEEK
from .helpers import REPO, make_kit, ramp_command, run
from .ramp_board_cluster import NamespacesUnavailable, SimulatedHosts
from .ramp_board_setup import (
    PostgresUnavailable,
    ThrowawayPostgres,
    build_server_venv,
    free_port,
    write_database_config,
)

pytestmark = pytest.mark.slow

EVENT = "atlas_stroke_test_course"
STUDENTS = {"alice": "alice-password", "bob": "bob-password"}
BROKEN_MESSAGE = "broken on purpose: this fit refuses to learn"
SCORES = ("dice", "lesion_f1", "volume_diff_ml", "lesion_count_diff")
CLIENT = Path(__file__).with_name("ramp_board_client.py")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def sandbox_or_skip() -> None:
    """The dispatcher trains in bubblewrap: skip without it, except in CI."""
    from atlas_ramp.course.sandbox import SandboxUnavailable, check_sandbox

    try:
        check_sandbox()
    except SandboxUnavailable as error:
        if in_ci():
            pytest.fail(f"CI must run the ramp-board tests: {error}")
        pytest.skip(f"No sandbox here: {error}")


def server_env() -> dict:
    """The environment of every server-side process: this repository's kit first."""
    env = dict(os.environ)
    env.pop("RAMP_TEST_MODE", None)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    return env


class Server:
    """The deployment: the server's Python, its folder, its configuration files."""

    def __init__(self, python: Path, deployment: Path, config: Path):
        self.python, self.deployment, self.config = python, deployment, config
        self.event_config = deployment / "events" / EVENT / "config.yml"

    def run(self, *args, check=True, timeout=600) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [str(self.python), *map(str, args)],
            cwd=self.deployment,
            env=server_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check:
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result

    def ramp(self, *args):
        """ramp-board's own command line (``ramp database ...``)."""
        return self.run(self.python.parent / "ramp", *args)

    def client(self, command, **options) -> dict:
        flags = [f"--{key}={value}" for key, value in options.items()]
        result = self.run(CLIENT, command, f"--config={self.config}", *flags)
        return json.loads(result.stdout.strip().splitlines()[-1])

    def deploy(self, *args, check=True):
        return self.run(
            "-m", "atlas_ramp", "server", "deploy", "--deployment-dir", self.deployment,
            *args, check=check,
        )  # fmt: skip

    def dispatch(self, *args):
        return self.run(
            "-m", "atlas_ramp", "server", "dispatch", "--config", self.config,
            "--event-config", self.event_config, "--exit-when-done", *args,
        )  # fmt: skip


@pytest.fixture(scope="module")
def postgres():
    try:
        with ThrowawayPostgres() as server:
            yield server
    except PostgresUnavailable as error:
        if in_ci():
            pytest.fail(f"CI must run the ramp-board tests: {error}")
        pytest.skip(f"PostgreSQL cannot be started here: {error}")


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory):
    python = build_server_venv()
    deployment = tmp_path_factory.mktemp("ramp_deployment")
    config = write_database_config(deployment, postgres.sqlalchemy)
    return Server(python, deployment, config)


def unlabelled_copy(data: Path, folder: Path) -> Path:
    """The sample without its masks: data a server cannot grade on."""
    shutil.copytree(data, folder, ignore=shutil.ignore_patterns("*_mask.nii.gz"))
    return folder


def deployed_files(deployment: Path) -> list[str]:
    return sorted(
        str(path.relative_to(deployment))
        for path in deployment.rglob("*")
        if path.name != "config.yml" or path.parent != deployment
    )


def test_bad_arguments_write_nothing(server, postgres, small_sample, tmp_path):
    before = deployed_files(server.deployment)
    worker_env = sys.prefix
    wrong_event = server.deploy(
        "--event", "stroke_course", "--title", "t", "--private-data", small_sample,
        "--worker-env", worker_env, check=False,
    )  # fmt: skip
    assert wrong_event.returncode == 1
    assert "--event 'stroke_course'" in wrong_event.stderr
    assert "atlas_stroke_" in wrong_event.stderr
    no_database = server.deploy(
        "--event", EVENT, "--title", "t", "--private-data", small_sample,
        "--config", tmp_path / "missing.yml", check=False,
    )  # fmt: skip
    assert no_database.returncode == 1
    assert "No database configuration" in no_database.stderr
    assert "ramp setup init" in no_database.stderr
    closed_port = dict(postgres.sqlalchemy, port=free_port())
    unreachable = write_database_config(tmp_path / "elsewhere", closed_port)
    no_answer = server.deploy(
        "--event", EVENT, "--title", "t", "--private-data", small_sample,
        "--config", unreachable, check=False,
    )  # fmt: skip
    assert no_answer.returncode == 1
    assert "does not answer" in no_answer.stderr
    unlabelled = unlabelled_copy(small_sample, tmp_path / "unlabelled")
    no_masks = server.deploy(
        "--event", EVENT, "--title", "t", "--private-data", unlabelled, check=False
    )
    assert no_masks.returncode == 1
    assert "has no lesion mask" in no_masks.stderr
    assert "atlas-ramp instructor --private" in no_masks.stderr
    assert deployed_files(server.deployment) == before


@pytest.fixture(scope="module")
def course(server, small_sample, tmp_path_factory):
    """The deployed event, two students, and what they submitted, trained."""
    sandbox_or_skip()
    server.deploy(
        "--event", EVENT, "--title", "ATLAS course (test)",
        "--private-data", small_sample, "--worker-env", sys.prefix,
    )  # fmt: skip
    for login, password in STUDENTS.items():
        sign_up(server, login, password)
    kit = REPO / "submissions" / "starting_kit"
    broken = tmp_path_factory.mktemp("broken_fit")
    (broken / "estimator.py").write_text(
        "class Broken:\n"
        "    def fit(self, X, y):\n"
        f"        raise RuntimeError({BROKEN_MESSAGE!r})\n\n\n"
        "def get_estimator():\n"
        "    return Broken()\n"
    )
    answers = {
        "first": server.client(
            "submit", event=EVENT, team="alice", name="threshold", path=kit
        ),
        "too_early": server.client(
            "submit", event=EVENT, team="alice", name="broken_fit", path=broken
        ),
        "broken": server.client(
            "submit", event=EVENT, team="bob", name="broken_fit", path=broken
        ),
    }
    server.dispatch("--n-workers", "2")
    return answers


@pytest.fixture(scope="module")
def reference(small_sample, tmp_path_factory):
    """``ramp-test --save-output`` on the same data and submission."""
    kit = make_kit(tmp_path_factory.mktemp("reference"), small_sample)
    run(kit, ramp_command("ramp-test"), "--submission", "starting_kit", "--save-output")
    return kit / "submissions" / "starting_kit" / "training_output"


def test_redeploying_changes_nothing(server, course):
    kit_zip = server.deployment / "ramp-kits" / "atlas_stroke" / "events_archived"
    zip_stat = (kit_zip / f"{EVENT}.zip").stat()
    config_text = server.event_config.read_text()
    again = server.deploy(
        "--event", EVENT, "--title", "another title", "--synthetic", "4", "2"
    )  # fmt: skip
    assert "Keeping the existing data" in again.stdout
    assert "in the database already" in again.stdout
    assert (kit_zip / f"{EVENT}.zip").stat().st_mtime_ns == zip_stat.st_mtime_ns
    assert server.event_config.read_text() == config_text
    assert (
        server.client("results", event=EVENT, team="alice", name="threshold")["state"]
        == "scored"
    )


def assert_scores_equal(answer: dict, training_output: Path) -> None:
    """The database's fold and bagged scores equal ramp-test's, to 1e-9."""
    folds = sorted(training_output.glob("fold_*"))
    assert len(folds) == 5
    for fold, folder in enumerate(folds):
        expected = pd.read_csv(folder / "scores.csv", index_col=0)
        for step in ("train", "valid", "test"):
            for score in SCORES:
                value = expected.loc[step, score]
                got = answer["folds"][f"{fold}/{step}"][score]
                assert got == pytest.approx(value, abs=1e-9), (fold, step, score)
    bagged = pd.read_csv(training_output / "bagged_scores.csv", index_col=[0, 1])
    for (step, n_bag), row in bagged.iterrows():
        for score in SCORES:
            value = row[score]
            got = answer["bagged"][f"{step}/{n_bag}"][score]
            assert got == pytest.approx(value, abs=1e-9), (step, n_bag, score)


def test_database_scores_equal_ramp_test(server, course, reference):
    assert course["first"] == {"submitted": "threshold"}
    answer = server.client("results", event=EVENT, team="alice", name="threshold")
    assert answer["state"] == "scored", answer["error_msg"]
    assert_scores_equal(answer, reference)
    folds = sorted(reference.glob("fold_*"))
    bagged = pd.read_csv(reference / "bagged_scores.csv", index_col=[0, 1])
    # Shown with `pytest -s`: the figures compared above.
    for fold, folder in enumerate(folds):
        expected = pd.read_csv(folder / "scores.csv", index_col=0)
        got = answer["folds"][f"{fold}/test"]["dice"]
        print(f"fold {fold} test Dice: database {got!r}, ramp-test", end=" ")
        print(repr(float(expected.loc["test", "dice"])))
    got = answer["bagged"]["test/4"]["dice"]
    print(f"bagged test Dice: database {got!r}, ramp-test", end=" ")
    print(repr(float(bagged.loc[("test", 4), "dice"])))


def test_broken_submission_is_a_training_error(server, course):
    assert "wait" in course["too_early"]["refused"]  # 900 s between submissions
    assert course["broken"] == {"submitted": "broken_fit"}
    answer = server.client("results", event=EVENT, team="bob", name="broken_fit")
    assert answer["state"] == "training_error"
    assert "Traceback" in answer["error_msg"]
    assert BROKEN_MESSAGE in answer["error_msg"]


def test_leaderboard_shows_the_score_and_the_kit_holds_no_data(server, course):
    scores = server.client("results", event=EVENT, team="alice", name="threshold")
    answer = server.client(
        "frontend", event=EVENT, team="alice", password=STUDENTS["alice"]
    )
    assert answer["download_status"] == 200  # served without login ...
    files = answer["kit_files"]
    assert "problem.py" in files and "atlas_stroke_starting_kit.ipynb" in files
    assert "submissions/starting_kit/estimator.py" in files
    assert "README.md" in files  # the students' instructions
    assert not [name for name in files if name.endswith((".nii", ".nii.gz"))]
    assert not [name for name in files if name.startswith("data/")]
    assert answer["anonymous_leaderboard_status"] == 302  # ... the leaderboard not
    assert answer["leaderboard_status"] == 200
    html = answer["leaderboard_html"]
    public_dice = round(scores["bagged"]["valid/4"]["dice"], 3)
    # The public leaderboard: team, submission, then the bagged validation Dice.
    cells = re.findall(r"<td>([^<]*)</td>", html)
    row = cells.index("threshold")
    assert cells[row - 1] == "alice"
    assert float(cells[row + 1]) == public_dice


def test_deploy_refuses_a_kit_with_images(server, course, small_sample):
    kit = server.deployment / "ramp-kits" / "atlas_stroke"
    image = next(small_sample.rglob("*_T1w.nii.gz"))
    (kit / "data").mkdir()
    shutil.copy(image, kit / "data" / image.name)
    try:
        refused = server.deploy(
            "--event", "atlas_stroke_second_course", "--title", "t", check=False
        )  # fmt: skip
    finally:
        shutil.rmtree(kit / "data")
    assert refused.returncode == 1
    assert image.name in refused.stderr and "data use agreement" in refused.stderr
    assert not (kit / "events_archived" / "atlas_stroke_second_course.zip").exists()


def sign_up(server, login, password):
    """A student account, approved and signed up to the event (ramp-board's CLI)."""
    answer = server.client("sign-up", event=EVENT, team=login, password=password)
    assert answer == {"signed_up": login}


def test_a_worker_without_ramp_test_is_a_checking_error(server, course, tmp_path):
    """ramp-engine's dispatcher survives a bad worker environment (no conda)."""
    sign_up(server, "dave", "dave-password")
    submitted = server.client(
        "submit", event=EVENT, team="dave", name="threshold_nowhere",
        path=REPO / "submissions" / "starting_kit",
    )  # fmt: skip
    assert submitted == {"submitted": "threshold_nowhere"}
    server.dispatch("--python-env", tmp_path / "no_such_env")
    answer = server.client(
        "results", event=EVENT, team="dave", name="threshold_nowhere"
    )
    assert answer["state"] == "checking_error"
    assert "problem with sending your submission" in answer["error_msg"]


# The collaborative phase on a pool of dask workers: three students' variants of
# the starting kit (a fixed threshold each, so that their predictions differ).
POOL = {"carol": -1.0, "erika": -2.0, "frank": -1.5}


def threshold_variant(folder: Path, threshold: float) -> Path:
    """The starting kit with one fixed threshold."""
    code = (REPO / "submissions" / "starting_kit" / "estimator.py").read_text()
    learned = "THRESHOLDS = np.linspace(-3.0, -0.5, 11)"
    assert learned in code
    folder.mkdir(parents=True, exist_ok=True)
    fixed = code.replace(learned, f"THRESHOLDS = np.array([{threshold}])")
    (folder / "estimator.py").write_text(fixed)
    return folder


@pytest.fixture(scope="module")
def hosts(server, course, tmp_path_factory):
    """Two dask workers on simulated machines of their own (no shared files)."""
    folder = tmp_path_factory.mktemp("hosts")
    try:
        with SimulatedHosts(
            server.python, server.deployment, folder, 2, server_env()
        ) as cluster:
            yield cluster
    except NamespacesUnavailable as error:
        if in_ci():
            pytest.fail(f"CI must run the dask pool tests: {error}")
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def pool(server, hosts, tmp_path_factory):
    """Three submissions trained by the dispatcher on the two dask workers."""
    folders = {}
    for login, threshold in POOL.items():
        sign_up(server, login, f"{login}-password")
        folder = threshold_variant(tmp_path_factory.mktemp(login), threshold)
        submitted = server.client(
            "submit", event=EVENT, team=login, name=f"fixed_{login}", path=folder
        )
        assert submitted == {"submitted": f"fixed_{login}"}
        folders[login] = folder
    start = time.perf_counter()
    server.dispatch("--dask-scheduler", hosts.address, "--n-workers", "3")
    print(f"two dask workers, three submissions: {time.perf_counter() - start:.1f} s")
    results = {
        login: server.client("results", event=EVENT, team=login, name=f"fixed_{login}")
        for login in POOL
    }
    return {"results": results, "folders": folders}


@pytest.fixture(scope="module")
def local_outputs(server, pool, reference, small_sample, tmp_path_factory):
    """Every scored submission's ``ramp-test --save-output`` and their ``ramp-blend``.

    In a local kit, under the names the server gives them, in the server's order.
    """
    kit = make_kit(tmp_path_factory.mktemp("blend"), small_sample, ())
    scored = list(server.client("contributivity", event=EVENT)["contributivity"])
    alice = server.client("results", event=EVENT, team="alice", name="threshold")
    for login, answer in [("alice", alice), *pool["results"].items()]:
        folder = kit / "submissions" / answer["basename"]
        if login == "alice":  # the starting kit, already run
            shutil.copytree(REPO / "submissions" / "starting_kit", folder)
            shutil.copytree(reference, folder / "training_output")
        else:
            shutil.copytree(pool["folders"][login], folder)
            run(kit, ramp_command("ramp-test"), "--submission", folder.name,
                "--save-output")  # fmt: skip
    assert sorted(scored) == sorted(
        a["basename"] for a in [alice, *pool["results"].values()]
    )
    run(kit, ramp_command("ramp-blend"), f"--submissions={scored!r}", "--save-output")
    return kit / "submissions"


def test_pool_trains_each_submission_on_one_worker(server, hosts, pool, local_outputs):
    used = []
    for answer in pool["results"].values():
        assert answer["state"] == "scored", answer["error_msg"]
        assert_scores_equal(
            answer, local_outputs / answer["basename"] / "training_output"
        )
        log = server.deployment / "events" / EVENT / "logs" / answer["basename"] / "log"
        workers = re.findall(r"^Trained on dask worker (\S+)", log.read_text(), re.M)
        assert len(workers) == 1, workers  # all of its steps: one task, one worker
        assert "[sandbox] training" in log.read_text()  # on the worker's host
        used.append(workers[0])
    assert sorted(set(used)) == ["host-a", "host-b"]
    for name in hosts.workers:  # the machines never saw the submissions
        assert not (hosts.folder / name / "deployment" / "events").exists()


def test_contributivity_is_ramp_boards(server, pool, local_outputs):
    automatic = server.client("contributivity", event=EVENT)
    shares = automatic["contributivity"]
    assert len(shares) == 4
    assert sum(shares.values()) == pytest.approx(1, abs=1e-9)
    print("contributivity:", shares, "combined valid/test:",
          automatic["combined_valid"], automatic["combined_test"])  # fmt: skip
    # The dispatcher ran what `ramp database compute-contributivity` runs.
    server.ramp(
        "database", "compute-contributivity", "--config", server.config,
        "--config-event", server.event_config,
    )  # fmt: skip
    assert server.client("contributivity", event=EVENT) == automatic
    # ... which is ramp-blend on ramp-test's own predictions.
    blended = local_outputs / "training_output"
    combined = pd.read_csv(blended / "bagged_scores_combined.csv")
    last = combined[(combined["step"] == "test") & (combined["n_bag"] == 4)]
    assert automatic["combined_test"] == pytest.approx(last["dice"].item(), abs=1e-9)
    folds = pd.read_csv(blended / "contributivities.csv", index_col="submission")
    for name, share in shares.items():
        local = folds.loc[name, [f"fold_{fold}" for fold in range(5)]].sum()
        assert share == pytest.approx(local, abs=1e-9), name
    dispatcher_log = (server.deployment / "dispatcher.log").read_text()
    assert "Contributivity updated" in dispatcher_log
    page = server.client(
        "frontend", event=EVENT, team="carol", password="carol-password"
    )["leaderboard_html"]
    assert re.search(r"<th[^>]*>\s*contributivity\s*</th>", page), page[:3000]


def test_losing_a_worker_fails_only_its_submission(server, hosts, pool, tmp_path):
    slow = tmp_path / "slow"
    slow.mkdir()
    (slow / "estimator.py").write_text(
        "import time\n\n\nclass Slow:\n    def fit(self, X, y):\n"
        "        time.sleep(600)\n\n\ndef get_estimator():\n    return Slow()\n"
    )
    runs = {
        "gwendolyn": ("slowpoke", slow),
        "henry": ("fixed_henry", pool["folders"]["carol"]),
    }
    for login, (name, folder) in runs.items():
        sign_up(server, login, f"{login}-password")
        submitted = server.client(
            "submit", event=EVENT, team=login, name=name, path=folder
        )
        assert submitted == {"submitted": name}
    slow_run = server.client("results", event=EVENT, team="gwendolyn", name="slowpoke")
    basename = slow_run["basename"]
    with open(tmp_path / "dispatcher.out", "wb") as output:
        dispatcher = subprocess.Popen(
            [str(server.python), "-m", "atlas_ramp", "server", "dispatch",
             "--config", str(server.config), "--event-config", str(server.event_config),
             "--dask-scheduler", hosts.address, "--n-workers", "2"],
            cwd=server.deployment, env=server_env(), stdout=output,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        lost = hosts.lose_machine_running(basename)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            answers = {
                login: server.client("results", event=EVENT, team=login, name=name)
                for login, (name, _) in runs.items()
            }
            states = [answer["state"] for answer in answers.values()]
            if all(state == "scored" or "error" in state for state in states):
                break
            time.sleep(2)
        output = (tmp_path / "dispatcher.out").read_text()
        assert dispatcher.poll() is None, output[-3000:]
    finally:
        dispatcher.send_signal(signal.SIGINT)
        dispatcher.wait(timeout=60)
    assert answers["gwendolyn"]["state"] == "checking_error", answers["gwendolyn"]
    assert "RAMP's side" in answers["gwendolyn"]["error_msg"]
    assert "KilledWorker" in answers["gwendolyn"]["error_msg"]
    assert answers["henry"]["state"] == "scored", answers["henry"]["error_msg"]
    print(f"lost {lost}; its submission: {answers['gwendolyn']['error_msg']}")


# Failures of one submission that used to stop ramp-engine's dispatcher.
GUARDED_WORKERS = """
import json, logging
from ramp_engine.base import BaseWorker
from atlas_ramp.course.dispatcher import GuardedWorker

class MissingLog(BaseWorker):
    def _is_submission_finished(self):
        return True
    def _is_submission_interrupted(self):
        return False
    def launch_submission(self):
        super().launch_submission()
    def collect_results(self):
        super().collect_results()
        raise FileNotFoundError("No such file or directory: 'logs/submission_9/log'")
    def teardown(self):
        raise OSError("the copy of the predictions failed")

class LostHost(MissingLog):
    def _is_submission_finished(self):
        raise ConnectionError("the worker's host does not answer")

answers = []
for kind in (MissingLog, LostHost):
    worker = GuardedWorker(kind({}, "submission_9"), logging.getLogger("test"))
    worker.setup()
    worker.launch_submission()
    status = worker.status
    answers.append([status, *worker.collect_results()])
    worker.teardown()
print(json.dumps(answers))
"""


def test_a_failing_worker_ends_its_submission_in_an_error(server):
    """What the dispatcher calls on a worker never raises: (2, message) instead."""
    result = server.run("-c", GUARDED_WORKERS)
    missing_log, lost_host = json.loads(result.stdout.strip().splitlines()[-1])
    for (status, code, message), cause in [
        (missing_log, "logs/submission_9/log"),
        (lost_host, "the worker's host does not answer"),
    ]:
        assert (status, code) == ("finished", 2)  # 2: ramp-engine's checking_error
        assert "RAMP's side" in message and cause in message


def nothing_scores(server) -> dict:
    """What predicting no lesion scores on the deployment's private test set."""
    from atlas_ramp.masks import SparseProba
    from atlas_ramp.scores import atlas_score_types
    from atlas_ramp.volumes import load_split

    data = server.deployment / "ramp-data" / "atlas_stroke" / "data"
    X, y = load_split(data, "test")
    empty = [SparseProba([], [], X.volume_shape, X.voxel_volume_ml)] * len(X)
    return {score.name: score(y, empty) for score in atlas_score_types()}


def submission_log(server, answer) -> str:
    log = server.deployment / "events" / EVENT / "logs" / answer["basename"] / "log"
    return log.read_text(errors="replace")


@pytest.fixture(scope="module")
def cheats(server, course, postgres, tmp_path_factory):
    """The peek and the forged scores, submitted by two students, trained."""
    peek = tmp_path_factory.mktemp("peek")
    source = PEEK.format(deployment=str(server.deployment), port=postgres.port)
    (peek / "estimator.py").write_text(source)
    forge = tmp_path_factory.mktemp("forged_scores")
    shutil.copytree(REPO / "submissions" / "starting_kit", forge, dirs_exist_ok=True)
    with open(forge / "estimator.py", "a") as estimator:
        estimator.write(FORGE)
    for team, name, path in [("eve", "peek", peek), ("mallory", "forged", forge)]:
        sign_up(server, team, f"{team}-password")
        answer = server.client("submit", event=EVENT, team=team, name=name, path=path)
        assert answer == {"submitted": name}
    server.dispatch("--n-workers", "2")
    return peek


def test_peek_scores_what_predicting_nothing_scores(server, cheats):
    answer = server.client("results", event=EVENT, team="eve", name="peek")
    assert answer["state"] == "scored", answer["error_msg"]
    expected = nothing_scores(server)
    assert expected["dice"] < 0.5  # the sample's test subjects have lesions
    for score, value in expected.items():
        for fold in range(5):
            got = answer["folds"][f"{fold}/test"][score]
            assert got == pytest.approx(value, abs=1e-9), (fold, score)
        assert answer["bagged"]["test/4"][score] == pytest.approx(value, abs=1e-9)
    log = submission_log(server, answer)
    assert "PEEK tcp: refused" in log
    test_reads = re.findall(r"PEEK (\w+): (read|refused) \S*/data/test/", log)
    assert test_reads and all(result == "refused" for _, result in test_reads)
    assert {route for route, _ in test_reads} == {"t1w_path"}  # no mask_path
    assert re.search(r"PEEK glob: 0 found", log)
    assert re.search(r"PEEK proc_cwd: 0 found", log)
    dice = answer["bagged"]["test/4"]["dice"]
    print(f"peek in the sandbox: bagged test Dice {dice}")


def test_forged_score_files_change_nothing(server, cheats, reference):
    answer = server.client("results", event=EVENT, team="mallory", name="forged")
    assert answer["state"] == "scored", answer["error_msg"]
    log = submission_log(server, answer)
    assert "FORGED" in log and "removed fold_0/stolen" in log
    for fold, folder in enumerate(sorted(reference.glob("fold_*"))):
        expected = pd.read_csv(folder / "scores.csv", index_col=0)
        for step in ("train", "valid", "test"):
            for score in SCORES:
                got = answer["folds"][f"{fold}/{step}"][score]
                assert got == pytest.approx(expected.loc[step, score], abs=1e-9)
    bagged = pd.read_csv(reference / "bagged_scores.csv", index_col=[0, 1])
    for (step, n_bag), row in bagged.iterrows():
        for score in SCORES:
            got = answer["bagged"][f"{step}/{n_bag}"][score]
            assert got == pytest.approx(row[score], abs=1e-9), (step, n_bag, score)
    predictions = server.deployment / "events" / EVENT / "predictions"
    assert not list(predictions.rglob("stolen"))
