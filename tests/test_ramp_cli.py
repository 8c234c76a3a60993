"""The real ramp-workflow commands run on a small synthetic sample.

These are the commands students, instructors and Brainhack teams type, run as
separate processes exactly as they would run them.
"""

import shutil

import pandas as pd

from .helpers import bagged_scores, make_kit, ramp_command, run


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
