"""The real ramp-workflow commands run on a small synthetic sample.

These are the commands students, instructors and Brainhack teams type, run as
separate processes exactly as they would run them.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


def ramp_command(name):
    beside_python = Path(sys.executable).parent / name
    found = beside_python if beside_python.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed")
    return str(found)


def make_kit(folder: Path, data: Path, submissions=("starting_kit",)) -> Path:
    """A kit folder: problem.py, chosen submissions, and a link to the data."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "problem.py", folder / "problem.py")
    for name in submissions:
        shutil.copytree(
            REPO / "submissions" / name,
            folder / "submissions" / name,
            # Left over from a local run, not part of the submission.
            ignore=shutil.ignore_patterns("training_output", "__pycache__"),
        )
    (folder / "data").symlink_to(data, target_is_directory=True)
    return folder


def run(kit: Path, *args, quick=False) -> str:
    """Run a command in the kit (quick mode or not); its output, without colours."""
    env = dict(os.environ)
    env.pop("RAMP_TEST_MODE", None)
    if quick:
        env["RAMP_TEST_MODE"] = "1"
    result = subprocess.run(
        list(args), cwd=kit, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)


def quick_test(folder: Path, data: Path, submission: str) -> str:
    """``ramp-test --submission <submission> --quick-test`` in a new kit; its output."""
    kit = make_kit(folder, data, [submission])
    return run(
        kit,
        ramp_command("ramp-test"),
        "--submission",
        submission,
        "--quick-test",
        quick=True,
    )


def bagged_test_dice(output: str) -> float:
    """The bagged test Dice printed by ``ramp-test`` (first score column)."""
    bagged = output.split("Bagged scores")[1]
    header = next(line for line in bagged.splitlines() if "dice" in line)
    assert header.split()[:2] == ["score", "dice"]
    test_row = next(
        line for line in bagged.splitlines() if line.strip().startswith("test")
    )
    return float(test_row.split()[1])


def bagged_scores(kit: Path, submission: str) -> pd.DataFrame:
    path = kit / "submissions" / submission / "training_output" / "bagged_scores.csv"
    scores = pd.read_csv(path, index_col=[0, 1])
    last_bag = scores.index.get_level_values("n_bag").max()
    return scores.xs(last_bag, level="n_bag")


def test_quick_test_runs_two_folds(small_sample, tmp_path):
    kit = make_kit(tmp_path / "kit", small_sample)
    output = run(kit, ramp_command("ramp-test"), "--quick-test")
    assert "CV fold 1" in output and "CV fold 2" not in output
    assert "Bagged scores" in output
    for score in ("dice", "lesion_f1", "volume_diff_ml", "lesion_count_diff"):
        assert score in output


def test_full_run_saves_outputs_and_retrains(small_sample, tmp_path):
    kit = make_kit(tmp_path / "kit", small_sample)
    output = run(
        kit,
        ramp_command("ramp-test"),
        "--submission",
        "starting_kit",
        "--save-output",
        "--retrain",
    )
    assert "CV fold 4" in output and "Retrain scores" in output
    folds = kit / "submissions" / "starting_kit" / "training_output"
    for fold in range(5):
        assert (folds / f"fold_{fold}" / "y_pred_train.npz").exists()
        assert (folds / f"fold_{fold}" / "y_pred_test.npz").exists()
    scores = bagged_scores(kit, "starting_kit")
    assert 0.0 <= scores.loc["test", "dice"] <= 1.0


def test_all_submissions_and_blending(small_sample, tmp_path):
    kit = make_kit(tmp_path / "kit", small_sample)
    # A second submission: the starting kit with another threshold grid.
    variant = kit / "submissions" / "darker_threshold"
    shutil.copytree(kit / "submissions" / "starting_kit", variant)
    source = (variant / "estimator.py").read_text()
    (variant / "estimator.py").write_text(
        source.replace("np.linspace(-3.0, -0.5, 11)", "np.linspace(-4.0, -2.0, 5)")
    )
    ramp_test = ramp_command("ramp-test")
    output = run(kit, ramp_test, "--submission", "ALL", "--quick-test")
    assert output.count("Bagged scores") == 2
    for name in ("starting_kit", "darker_threshold"):
        run(kit, ramp_test, "--submission", name, "--save-output", quick=True)
    output = run(
        kit,
        ramp_command("ramp-blend"),
        "--submissions",
        "['starting_kit', 'darker_threshold']",
        "--save-output",
        quick=True,
    )
    assert "Combined bagged scores" in output
    contributivities = pd.read_csv(
        kit / "submissions" / "training_output" / "contributivities.csv"
    )
    assert set(contributivities["submission"]) == {"starting_kit", "darker_threshold"}
    combined = pd.read_csv(
        kit / "submissions" / "training_output" / "bagged_scores_combined.csv",
        index_col=[0, 1],
    )
    last_bag = combined.index.get_level_values("n_bag").max()
    assert 0.0 <= combined.xs(last_bag, level="n_bag").loc["test", "dice"] <= 1.0
