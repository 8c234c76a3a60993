"""One submission on a dask worker's host, without dask (no ramp-board needed).

:func:`atlas_ramp.course.worker_host.run_submission_here` runs here with a stand-in
``ramp-test`` (a shell script) in a stand-in worker environment; the real one,
on dask workers, is checked in ``test_ramp_board.py``.
"""

import io
import socket
import tarfile

import pytest

from atlas_ramp.course.worker_host import (
    TIMEOUT_EXIT_CODE,
    read_submission_files,
    run_submission_here,
    write_submission_files,
)

# Writes what the real one writes: training_output in the submission's folder.
FAKE_RAMP_TEST = """#!/bin/sh
echo "ramp-test $*"
sleep "${FAKE_RAMP_TEST_SECONDS:-0}"
out="$8/$2/training_output/fold_0"
mkdir -p "$out" && cp "$8/$2/estimator.py" "$out/estimator_copy.py"
"""


@pytest.fixture
def host(tmp_path):
    """A kit, a data folder and an environment with ``bin/ramp-test``: settings."""
    (tmp_path / "kit").mkdir()
    (tmp_path / "kit" / "problem.py").write_text("")
    (tmp_path / "ramp-data" / "data").mkdir(parents=True)
    ramp_test = tmp_path / "env" / "bin" / "ramp-test"
    ramp_test.parent.mkdir(parents=True)
    ramp_test.write_text(FAKE_RAMP_TEST)
    ramp_test.chmod(0o755)
    return {
        "python_env": str(tmp_path / "env"),
        "kit_dir": str(tmp_path / "kit"),
        "data_dir": str(tmp_path / "ramp-data"),
        "timeout": 60,
        "n_threads": 1,
        "sandbox": False,  # the stand-in ramp-test runs plainly
    }


def test_files_in_outputs_out(host, tmp_path):
    submission = tmp_path / "submission_000000001"
    (submission / "training_output").mkdir(parents=True)
    (submission / "training_output" / "old.csv").write_text("not shipped")
    (submission / "estimator.py").write_text("def get_estimator(): ...\n")
    files = read_submission_files(submission)
    assert files == {"estimator.py": b"def get_estimator(): ...\n"}
    result = run_submission_here(files, "submission_000000001", host)
    assert result["returncode"] == 0
    assert result["worker"] == socket.gethostname()
    assert b"ramp-test --submission submission_000000001" in result["log"]
    with tarfile.open(fileobj=io.BytesIO(result["outputs"]), mode="r:gz") as packed:
        copy = packed.extractfile("./fold_0/estimator_copy.py").read()
    assert copy == files["estimator.py"]


def test_a_missing_kit_names_the_path_and_the_worker(host, tmp_path):
    (tmp_path / "kit" / "problem.py").unlink()
    with pytest.raises(FileNotFoundError, match="problem.py.*does not exist on dask"):
        run_submission_here({"estimator.py": b""}, "submission_000000002", host)


def test_the_timeout_stops_ramp_test(host, monkeypatch):
    monkeypatch.setenv("FAKE_RAMP_TEST_SECONDS", "60")
    host["timeout"] = 1
    result = run_submission_here({"estimator.py": b""}, "submission_000000003", host)
    assert result["returncode"] == TIMEOUT_EXIT_CODE
    assert result["outputs"] is None
    assert b"Killed after the event's timeout of 1 s" in result["log"]


# Stands in for `python -m atlas_ramp.course.sandbox ...`: writes the scored output
# where --output-dir says, and appends to --log, as the real runner does.
FAKE_SANDBOX_PYTHON = """#!/bin/sh
echo "python $*"
while [ $# -gt 0 ]; do
    case "$1" in
        --output-dir) out="$2" ;;
        --log) log="$2" ;;
    esac
    shift
done
mkdir -p "$out/fold_0" && echo "scored outside" > "$out/fold_0/scores.csv"
echo "[sandbox] scored" >> "$log"
"""


def test_the_sandbox_runs_the_submission_unless_the_event_turns_it_off(host, tmp_path):
    python = tmp_path / "env" / "bin" / "python"
    python.write_text(FAKE_SANDBOX_PYTHON)
    python.chmod(0o755)
    host["sandbox"] = True
    result = run_submission_here({"estimator.py": b""}, "submission_000000004", host)
    assert result["returncode"] == 0, result["log"]
    log = result["log"].decode()
    assert "-m atlas_ramp.course.sandbox" in log and "[sandbox] scored" in log
    assert f"--kit-dir {host['kit_dir']}" in log
    assert "/submissions/submission_000000004 " in log
    assert "--timeout 54.4" in log  # before the host's own kill at 60 s
    with tarfile.open(fileobj=io.BytesIO(result["outputs"]), mode="r:gz") as packed:
        assert packed.extractfile("./fold_0/scores.csv").read() == b"scored outside\n"


def test_submission_files_stay_in_their_folder(tmp_path):
    with pytest.raises(ValueError, match="outside its folder"):
        write_submission_files({"../escaped.py": b""}, tmp_path / "submission")
