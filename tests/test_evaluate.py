"""``atlas-ramp evaluate``: any submission on any labelled folder.

The fast tests use tiny volumes and a submission written here, whose answer is
known (it predicts the cube that tests/helpers.py puts in every mask). The slow
test checks that evaluate gives ramp-test's "Retrain scores" on the same data.
"""

import os
import sys
import textwrap
from pathlib import Path

import cloudpickle
import numpy as np
import pandas as pd
import pytest

from atlas_ramp.bids import DataError, anat_dir
from atlas_ramp.results.evaluate import evaluate, main
from atlas_ramp.workflow import SubmissionError, TrainedSubmission

from .helpers import SHAPE, make_kit, make_split, ramp_command, run, write_subject

# Predicts the cube that helpers.write_subject puts in every mask (Dice 1), and
# checks that it is called on small batches.
CUBE_SUBMISSION = textwrap.dedent(
    """
    import numpy as np

    MAX_BATCH = 4

    class Cube:
        def fit(self, X, y):
            self.n_fitted_ = len(X)
            return self

        def predict(self, X):
            assert len(X) <= MAX_BATCH, f"predict called on {len(X)} subjects"
            masks = np.zeros((len(X), *X[0].shape), dtype=bool)
            masks[:, 2:4, 2:4, 2:4] = True
            return masks

    def get_estimator():
        return Cube()
    """
)


class EmptyPredictor:
    """A trained model that finds nothing (Dice 0 on the cube masks)."""

    def predict(self, X):
        return np.zeros((len(X), *X[0].shape), dtype=bool)


@pytest.fixture
def tiny_kit(tmp_path):
    kit = tmp_path / "kit"
    (kit / "submissions" / "cube").mkdir(parents=True)
    (kit / "submissions" / "cube" / "estimator.py").write_text(CUBE_SUBMISSION)
    make_split(kit / "data" / "train")
    ids = (
        "sub-r003s001",
        "sub-r003s002",
        "sub-r004s001",
        "sub-r004s002",
        "sub-r005s001",
    )
    make_split(kit / "data" / "other", ids)
    return kit


def test_evaluate_scores_every_subject_in_small_batches(tiny_kit, tmp_path):
    pairs = tiny_kit / "submissions" / "pairs"
    pairs.mkdir()
    (pairs / "estimator.py").write_text(
        CUBE_SUBMISSION.replace("MAX_BATCH = 4", "MAX_BATCH = 2")
    )
    folder = tiny_kit / "data" / "other"
    with pytest.raises(SubmissionError, match="predict called on 4 subjects"):
        evaluate("pairs", folder, kit=tiny_kit, progress=False)
    result = evaluate(
        "pairs", folder, kit=tiny_kit, batch_size=2,
        per_subject_csv=tmp_path / "scores.csv", progress=False,
    )  # fmt: skip
    assert result.scores["dice"] == 1.0 and result.scores["lesion_f1"] == 1.0
    assert result.scores["volume_diff_ml"] == 0.0
    table = pd.read_csv(tmp_path / "scores.csv")
    assert list(table["subject"]) == [
        "sub-r003s001", "sub-r003s002", "sub-r004s001", "sub-r004s002",
        "sub-r005s001",
    ]  # fmt: skip
    assert set(table["submission"]) == {"pairs"}
    assert (table["true_lesions_small"] == 1).all()  # 8 voxels of 4 mm: 0.51 mL
    assert "trained on all 3 subjects" in result.model
    assert result.report is None


def test_runs_without_output_keep_their_own_csv(tiny_kit, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for folder in ("other", "train"):
        result = evaluate("cube", tiny_kit / "data" / folder, kit=tiny_kit,
                          progress=False)  # fmt: skip
        assert result.per_subject_csv == Path(f"per_subject_cube_{folder}.csv")
    other = pd.read_csv(tmp_path / "per_subject_cube_other.csv")
    train = pd.read_csv(tmp_path / "per_subject_cube_train.csv")
    assert len(other) == 5 and len(train) == 3


def test_evaluate_writes_the_report(tiny_kit, tmp_path):
    result = evaluate(
        "cube", tiny_kit / "data" / "other", kit=tiny_kit,
        output=tmp_path / "report", progress=False, n_worst=2,
    )  # fmt: skip
    assert result.report == tmp_path / "report" / "report.html"
    for name in ("per_subject.csv", "scores.csv", "worst_subjects.png"):
        assert (tmp_path / "report" / name).is_file(), name
    scores = pd.read_csv(tmp_path / "report" / "scores.csv", index_col=0)
    assert scores.loc["cube", "dice_mean"] == 1.0


def test_evaluate_reuses_the_model_ramp_test_saved_unless_stale(tiny_kit, tmp_path):
    submission = tiny_kit / "submissions" / "cube"
    saved = submission / "training_output" / "retrained_model.pkl"
    saved.parent.mkdir()
    with open(saved, "wb") as stream:
        cloudpickle.dump(TrainedSubmission("cube", EmptyPredictor()), stream)
    folder = tiny_kit / "data" / "other"
    options = {"kit": tiny_kit, "progress": False, "per_subject_csv": tmp_path / "s"}
    reused = evaluate("cube", folder, **options)
    assert reused.scores["dice"] == 0.0 and "reused" in reused.model
    assert evaluate("cube", folder, retrain=True, **options).scores["dice"] == 1.0
    # estimator.py edited after the model was saved: the model is stale.
    later = saved.stat().st_mtime + 10
    os.utime(submission / "estimator.py", (later, later))
    fresh = evaluate("cube", folder, **options)
    assert fresh.scores["dice"] == 1.0 and "trained" in fresh.model


def test_unlabelled_folder_is_a_data_error(tiny_kit):
    folder = tiny_kit / "data" / "unlabelled"
    write_subject(anat_dir(folder, "sub-r009s001"), "sub-r009s001", mask=False)
    with pytest.raises(DataError, match="no lesion masks") as error:
        evaluate("cube", folder, kit=tiny_kit, progress=False)
    assert "atlas-ramp export" in str(error.value)
    assert "_label-L_desc-T1lesion_mask.nii.gz" in str(error.value)
    with pytest.raises(DataError, match=str(folder)):
        evaluate("cube", folder, kit=tiny_kit, progress=False)


def test_another_grid_than_training_is_a_data_error(tiny_kit):
    folder = tiny_kit / "data" / "coarse"
    shape = tuple(s + 1 for s in SHAPE)
    write_subject(anat_dir(folder, "sub-r009s001"), "sub-r009s001", shape=shape)
    with pytest.raises(DataError, match="grid") as error:
        evaluate("cube", folder, kit=tiny_kit, progress=False)
    assert str(folder) in str(error.value) and "train" in str(error.value)
    assert "resample" in str(error.value).lower()


def test_missing_submission_and_folder_exit_with_clear_messages(tiny_kit, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--submission", "nope", "--data", str(tiny_kit / "data" / "other"),
              "--kit", str(tiny_kit)])  # fmt: skip
    message = str(exit_info.value)
    assert "'nope'" in message and "cube" in message  # names it and what exists
    with pytest.raises(SystemExit) as exit_info:
        main(["--submission", "cube", "--data", str(tiny_kit / "data" / "missing"),
              "--kit", str(tiny_kit)])  # fmt: skip
    assert "missing does not exist" in str(exit_info.value)


def test_a_failing_submission_is_blamed(tiny_kit):
    broken = tiny_kit / "submissions" / "broken"
    broken.mkdir()
    (broken / "estimator.py").write_text(
        CUBE_SUBMISSION.replace("return masks", "return masks[:, :2]")
    )
    with pytest.raises(SubmissionError, match="broken"):
        evaluate("broken", tiny_kit / "data" / "other", kit=tiny_kit, progress=False)


def _retrain_test_row(output: str) -> pd.Series:
    """The test row of ramp-test's "Retrain scores" table."""
    section = output.split("Retrain scores")[1].split("Bagged scores")[0]
    lines = [line.split() for line in section.splitlines() if line.strip()]
    header = next(line for line in lines if line[0] == "score")
    values = next(line for line in lines if line[0] == "test")
    return pd.Series([float(v) for v in values[1:]], index=header[1:])


def _printed_scores(output: str) -> dict:
    scores = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in (
            "dice", "lesion_f1", "volume_diff_ml", "lesion_count_diff"
        ):  # fmt: skip
            scores[parts[0]] = float(parts[1])
    return scores


@pytest.mark.slow
def test_evaluate_on_test_gives_ramp_test_retrain_scores(small_sample, tmp_path):
    kit = make_kit(tmp_path / "kit", small_sample, ["starting_kit"])
    ramp = run(
        kit, ramp_command("ramp-test"), "--submission", "starting_kit",
        "--retrain", "--pickle",
    )  # fmt: skip
    expected = _retrain_test_row(ramp)
    precision = {"dice": 3, "lesion_f1": 3, "volume_diff_ml": 2, "lesion_count_diff": 2}
    command = [
        sys.executable, "-m", "atlas_ramp", "evaluate", "--submission", "starting_kit",
        "--data", "data/test", "--no-progress",
    ]  # fmt: skip
    trained = run(kit, *command, "--retrain", "--output", "report")
    reused = run(kit, *command, "--csv", "reused.csv")
    assert "trained on all 12 subjects" in trained
    assert "reused" in reused and "retrained_model.pkl" in reused
    for output, csv in ((trained, "report/per_subject.csv"), (reused, "reused.csv")):
        table = pd.read_csv(kit / csv)
        assert len(table) == 6
        printed = _printed_scores(output)
        for name, digits in precision.items():
            assert round(table[name].mean(), digits) == pytest.approx(
                expected[name], abs=10**-digits / 2
            ), name
            assert printed[name] == pytest.approx(table[name].mean(), abs=1e-3)
    assert (kit / "report" / "report.html").is_file()
