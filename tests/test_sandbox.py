"""The course server's sandbox and trusted scoring, without a server.

* the sandbox's view (bubblewrap): a process inside sees the test images, the
  training data and its own output folder, and cannot open a test mask (by its
  name, by a glob, through ``/proc``), nor any other file of the deployment,
  nor reach 127.0.0.1;
* trusted scoring: the score files it writes from a ``ramp-test
  --save-output``'s saved predictions equal ramp-test's own (1e-9), and what
  the workflow cannot have written is refused;
* defence in depth: what ``predict`` receives carries no mask paths;
* the peek submission (``tests/cheats.py``) reads the test masks with plain
  ``ramp-test``, and scores what predicting nothing scores in the sandbox.

The end-to-end runs (the peek submissions through ramp-board's dispatcher) are
in ``test_ramp_board.py``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from atlas_ramp.course import sandbox, staging, trusted_scoring
from atlas_ramp.course.trusted_scoring import (
    ForgedOutput,
    _read_time,
    check_predictions,
    score_training_output,
)
from atlas_ramp.masks import SparseProba
from atlas_ramp.volumes import load_split
from atlas_ramp.workflow import TrainedSubmission, predict_sparse

from .cheats import PEEK
from .helpers import REPO, make_kit, ramp_command, run

# What a process inside the sandbox tries; it prints one JSON line.
PROBE = r"""
import glob, json, os, socket, sys
data, deployment, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
seen = {}
seen["test_images"] = sorted(glob.glob(f"{data}/test/**/*_T1w.nii.gz", recursive=True))
seen["test_masks"] = sorted(
    glob.glob(f"{deployment}/**/test/**/*_mask.nii.gz", recursive=True)
    + glob.glob("/proc/self/cwd/**/*_mask.nii.gz", recursive=True)
    + glob.glob(f"/proc/1/root{deployment}/**/*_mask.nii.gz", recursive=True)
)
seen["test_masks"] = [path for path in seen["test_masks"] if "/train/" not in path]
seen["train_masks"] = glob.glob(f"{data}/train/**/*_mask.nii.gz", recursive=True)
seen["test_cache"] = sorted(os.listdir(f"{data}/.cache/test"))
derived, opened = [], []
for image in seen["test_images"]:
    mask = image.replace("_T1w.nii.gz", "_label-L_desc-T1lesion_mask.nii.gz")
    try:
        open(mask, "rb").close()
        opened.append(mask)
    except OSError as error:
        derived.append(type(error).__name__)
seen["derived"], seen["opened"] = derived, opened
try:
    open(f"{deployment}/config.yml").close()
    seen["config"] = "read"
except OSError as error:
    seen["config"] = type(error).__name__
try:
    socket.create_connection(("127.0.0.1", port), timeout=5).close()
    seen["tcp"] = "connected"
except OSError as error:
    seen["tcp"] = type(error).__name__
own = "/ramp/submissions/probe"
open(f"{own}/training_output/y_pred_test.npz", "wb").close()
for name, attempt in [
    ("write_submission", lambda: open(f"{own}/estimator.py", "w").close()),
    ("swap_output", lambda: os.rename(f"{own}/training_output", f"{own}/elsewhere")),
]:
    try:
        attempt()
        seen[name] = "done"
    except OSError as error:
        seen[name] = type(error).__name__
print(json.dumps(seen))
"""


def bwrap_or_skip():
    try:
        return sandbox.check_sandbox()
    except sandbox.SandboxUnavailable as error:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI must run the sandbox tests: {error}")
        pytest.skip(str(error))


@pytest.fixture
def deployment(small_sample, tmp_path):
    """A deployment-like folder: a kit, private data, a secret beside them."""
    root = tmp_path / "deployment"
    data = root / "ramp-data" / "atlas_stroke" / "data"
    shutil.copytree(small_sample, data, ignore=shutil.ignore_patterns(".cache"))
    (root / "ramp-kits" / "atlas_stroke").mkdir(parents=True)
    shutil.copy(REPO / "problem.py", root / "ramp-kits" / "atlas_stroke")
    (root / "config.yml").write_text("password: the database's\n")
    return root


def test_a_process_in_the_sandbox_cannot_open_a_test_mask(deployment, tmp_path):
    bwrap = bwrap_or_skip()
    data_dir = deployment / "ramp-data" / "atlas_stroke"
    # A cohort of the training data linked from a shared drive, as courses do.
    cohort = sorted((data_dir / "data" / "train").glob("R*"))[0]
    shared = tmp_path / "shared-drive" / "train" / cohort.name
    shared.parent.mkdir(parents=True)
    shutil.move(cohort, shared)
    cohort.symlink_to(shared, target_is_directory=True)
    staging.warm_volume_cache(data_dir)
    staged = staging.stage_test_images(data_dir, tmp_path / "stage")
    submissions = tmp_path / "submissions"
    (submissions / "probe" / "training_output").mkdir(parents=True)
    (tmp_path / "output").mkdir()
    with socket.socket() as listening:  # a server on the host's loopback
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        data = str(data_dir.resolve() / "data")
        probe = [sys.executable, "-c", PROBE, data, str(deployment), str(port)]
        command = sandbox.sandbox_command(
            deployment / "ramp-kits" / "atlas_stroke", data_dir, submissions,
            "probe", tmp_path / "output", sys.prefix, staged,
            sandbox.probe_environment(sys.prefix), bwrap, command=probe,
        )  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(seen["test_images"]) == 6  # the images are there ...
    assert seen["test_masks"] == [] and seen["opened"] == []  # ... not the masks
    assert seen["derived"] == ["FileNotFoundError"] * 6
    assert len(seen["train_masks"]) == 12  # by design: students have them
    assert seen["test_cache"] and not [n for n in seen["test_cache"] if ".idx" in n]
    assert seen["config"] == "FileNotFoundError"
    assert seen["tcp"] in ("ConnectionRefusedError", "OSError")
    assert seen["write_submission"] == seen["swap_output"] == "OSError"
    assert (tmp_path / "output" / "y_pred_test.npz").exists()  # all that comes out


def test_no_bubblewrap_fails_loudly(monkeypatch):
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    with pytest.raises(sandbox.SandboxUnavailable) as error:
        sandbox.check_sandbox()
    assert "apt-get install bubblewrap" in str(error.value)
    assert "--no-sandbox" in str(error.value) and "read them" in str(error.value)


def test_server_failures_are_not_blamed_on_the_submission(
    small_sample, tmp_path, monkeypatch, capsys
):
    """Exit 2 (ramp-board's checking_error) for the server's own failures;
    1 (training_error) for what the submission wrote."""
    output = tmp_path / "training_output"
    (output / "fold_0").mkdir(parents=True)
    scoring = ["--kit-dir", str(REPO), "--training-output", str(output)]
    # No data where the scorer looks: the server's failure.
    assert trusted_scoring.main([*scoring, "--data-dir", str(tmp_path)]) == 2
    assert "problem on RAMP's side" in capsys.readouterr().err
    # The data are there; the submission saved no predictions: its failure.
    (tmp_path / "deployment").mkdir()
    (tmp_path / "deployment" / "data").symlink_to(small_sample)
    data_dir = str(tmp_path / "deployment")
    assert trusted_scoring.main([*scoring, "--data-dir", data_dir]) == 1
    assert "output is refused" in capsys.readouterr().err
    # No bubblewrap on the worker: the server's failure.
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    paths = ("kit-dir", "data-dir", "submission-dir", "python-env", "output-dir", "log")
    arguments = [part for name in paths for part in (f"--{name}", str(tmp_path))]
    assert sandbox.main(arguments) == 2
    error = capsys.readouterr().err
    assert "problem on RAMP's side" in error and "apt-get install bubblewrap" in error


def test_one_unreadable_volume_leaves_the_others_cached(small_sample, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(small_sample, data, ignore=shutil.ignore_patterns(".cache"))
    images = sorted((data / "train").rglob("*_T1w.nii.gz"))
    # Cut in half: the header reads, the voxels do not (ramp-test reports it).
    images[0].write_bytes(images[0].read_bytes()[: images[0].stat().st_size // 2])
    staging.warm_volume_cache(tmp_path)
    cached = [p.name for p in (data / ".cache" / "train").glob("*_T1w-*.npy")]
    assert len(cached) == len(images) - 1


def test_stale_staging_folders_are_swept(tmp_path):
    """A killed runner's staging folder goes; a running one's stays."""
    old, running = tmp_path / ".sandbox-old", tmp_path / ".sandbox-running"
    for stage in (old, running):
        (stage / "test").mkdir(parents=True)
    three_days_ago = time.time() - 3 * 24 * 3600
    os.utime(old, (three_days_ago, three_days_ago))
    (tmp_path / "data").mkdir()
    os.utime(tmp_path / "data", (three_days_ago, three_days_ago))  # not a stage
    staging.sweep_stale_stages(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".sandbox-running", "data"]


def test_links_left_by_a_submission_are_removed(tmp_path):
    output = tmp_path / "training_output"
    (output / "fold_0").mkdir(parents=True)
    (output / "fold_0" / "y_pred_test.npz").write_bytes(b"kept")
    (output / "fold_0" / "scores.csv").symlink_to("/etc/passwd")
    removed = []
    sandbox.remove_links(output, removed.append)
    assert [p.name for p in (output / "fold_0").iterdir()] == ["y_pred_test.npz"]
    assert "scores.csv" in removed[0]


@pytest.mark.slow
def test_trusted_scoring_equals_ramp_test(small_sample, tmp_path):
    """From the saved predictions alone, the score files ramp-test writes."""
    kit = make_kit(tmp_path / "kit", small_sample, ["voxel_classifier"])
    run(
        kit, ramp_command("ramp-test"), "--submission", "voxel_classifier",
        "--quick-test", "--save-output", quick=True,
    )  # fmt: skip
    reference = kit / "submissions" / "voxel_classifier" / "training_output"
    rescored = shutil.copytree(reference, tmp_path / "rescored")
    for path in rescored.rglob("*scores.csv"):
        path.write_text("forged,1\n")  # replaced, never read
    os.environ["RAMP_TEST_MODE"] = "1"
    try:
        score_training_output(kit, kit, rescored)
    finally:
        os.environ.pop("RAMP_TEST_MODE")
    for fold in sorted(reference.glob("fold_*")):
        expected = pd.read_csv(fold / "scores.csv", index_col=0)
        got = pd.read_csv(rescored / fold.name / "scores.csv", index_col=0)
        assert got.index.equals(expected.index)
        assert np.allclose(got.values, expected.values, rtol=0, atol=1e-9)
    expected = pd.read_csv(reference / "bagged_scores.csv", index_col=[0, 1])
    got = pd.read_csv(rescored / "bagged_scores.csv", index_col=[0, 1])
    assert got.index.equals(expected.index) and list(got) == list(expected)
    assert np.allclose(got.values, expected.values, rtol=0, atol=1e-9)
    assert expected.loc[("test", 1), "dice"] > 0.2  # learnt something, not NaN


def test_forged_predictions_are_refused(small_sample, tmp_path):
    X, _ = load_split(small_sample, "test")
    ml, shape = X.voxel_volume_ml, X.volume_shape
    honest = [SparseProba([3, 7], [255, 200], shape, ml) for _ in range(len(X))]
    check_predictions(honest, X, tmp_path / "y_pred_test.npz", every_subject=True)
    forged = {
        "not sorted": SparseProba([7, 3], [255, 255], shape, ml),
        "repeated": SparseProba([3, 3], [255, 255], shape, ml),
        "out of range": SparseProba([int(np.prod(shape))], [255], shape, ml),
        "other grid": SparseProba([3], [255], (4, 4, 4), ml),
    }
    for what, item in forged.items():
        with pytest.raises(ForgedOutput, match=X.subject_ids[0]):
            check_predictions([item, *honest[1:]], X, tmp_path / what, True)
    with pytest.raises(ForgedOutput, match="no prediction"):
        check_predictions([None, *honest[1:]], X, tmp_path / "y", every_subject=True)
    for text in ("nan", "-1", "abc"):
        (tmp_path / "train_time").write_text(text)
        with pytest.raises(ForgedOutput, match="train_time"):
            _read_time(tmp_path / "train_time")


def test_predict_gets_no_mask_paths(small_sample):
    X, _ = load_split(small_sample, "train")
    assert all(s.mask_path is not None for s in X.subjects)

    class Spy:
        seen = []

        def predict(self, X_batch):
            self.seen += [s.mask_path for s in X_batch.subjects]
            return np.zeros(X_batch.shape, bool)

    spy = Spy()
    predict_sparse(TrainedSubmission("spy", spy, X.volume_shape, X.affine), X)
    assert len(spy.seen) == len(X) and set(spy.seen) == {None}


def test_unlabelled_test_split(small_sample, monkeypatch):
    from atlas_ramp.testmode import is_unlabelled_test

    X, y = load_split(small_sample, "test", labelled=False)
    assert len(X) == 6 and list(y) == [None] * 6
    assert all(s.mask_path is None for s in X.subjects)
    monkeypatch.setenv("ATLAS_RAMP_UNLABELLED_TEST", "1")
    assert is_unlabelled_test()
    monkeypatch.setenv("ATLAS_RAMP_UNLABELLED_TEST", "0")
    assert not is_unlabelled_test()


@pytest.mark.slow
def test_the_peek_reads_the_test_masks_without_the_sandbox_only(
    deployment, tmp_path, monkeypatch
):
    bwrap_or_skip()
    kit = deployment / "ramp-kits" / "atlas_stroke"
    data_dir = deployment / "ramp-data" / "atlas_stroke"
    peek = kit / "submissions" / "peek"
    peek.mkdir(parents=True)
    (peek / "estimator.py").write_text(PEEK.format(deployment=str(deployment), port=1))
    run(
        kit, ramp_command("ramp-test"), "--submission", "peek", "--ramp-data-dir",
        data_dir, "--quick-test", "--save-output", quick=True,
    )  # fmt: skip
    bagged = peek / "training_output" / "bagged_scores.csv"
    plain = pd.read_csv(bagged, index_col=[0, 1])
    assert plain.loc[("test", 1), "dice"] == 1.0  # what the sandbox is for
    shutil.rmtree(peek / "training_output")
    monkeypatch.setenv("RAMP_TEST_MODE", "1")
    log = tmp_path / "log"
    output = tmp_path / "output"
    assert (
        sandbox.run_sandboxed_submission(kit, data_dir, peek, sys.prefix, output, log)
        == 0
    ), log.read_text()
    boxed = pd.read_csv(output / "bagged_scores.csv", index_col=[0, 1])
    X, y = load_split(data_dir / "data", "test")
    nothing = np.mean([mask.n_voxels == 0 for mask in y])  # Dice of no lesion
    assert boxed.loc[("test", 1), "dice"] == nothing < 0.5
    text = log.read_text()
    assert "PEEK t1w_path: refused" in text and "/data/test/" in text
    assert not re.search(r"PEEK \w+: read \S*/data/test/", text)
