"""Predictions written as BIDS masks score exactly as ramp-test scores them."""

import json

import nibabel as nib
import numpy as np
import pytest

from atlas_ramp.bids import DataError, find_subjects, mask_name
from atlas_ramp.results.export import export_predictions, main, score_predicted_masks

from .helpers import make_kit, ramp_command, run


def retrain_test_scores(output: str) -> dict:
    """The 'test' row of ramp-test's 'Retrain scores' table."""
    lines = output.split("Retrain scores")[1].splitlines()
    header = next(line for line in lines if line.strip().startswith("score"))
    test_row = next(line for line in lines if line.strip().startswith("test"))
    names, values = header.split()[1:], test_row.split()[1:]
    return {name: float(value) for name, value in zip(names, values, strict=True)}


def test_exported_masks_score_like_ramp_test(small_sample, tmp_path):
    kit = make_kit(tmp_path / "kit", small_sample)
    output = run(kit, ramp_command("ramp-test"), "--pickle", "--retrain", quick=True)
    expected = retrain_test_scores(output)
    model = (
        kit / "submissions" / "starting_kit" / "training_output" / "retrained_model.pkl"
    )
    predictions = tmp_path / "predictions"
    assert (
        main(
            [
                "--model",
                str(model),
                "--input",
                str(small_sample / "test"),
                "--output",
                str(predictions),
            ]
        )
        == 0
    )
    # The BIDS derivatives tree the ATLAS evaluator reads.
    description = json.loads((predictions / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    for subject in find_subjects(small_sample / "test"):
        written = predictions / subject.subject_id / "ses-1" / "anat"
        mask_file = written / mask_name(subject.subject_id)
        image = nib.load(mask_file)
        reference = nib.load(subject.t1w_path)
        assert image.shape == reference.shape
        assert np.allclose(image.affine, reference.affine)
        assert set(np.unique(np.asarray(image.dataobj))) <= {0, 1}
    scores = score_predicted_masks(predictions, small_sample / "test")
    # Quick mode keeps at most 6 test subjects: the small sample has exactly 6,
    # so ramp-test scored the same subjects.
    assert len(find_subjects(small_sample / "test")) == 6
    assert set(expected) == set(scores)
    for name, value in expected.items():
        assert scores[name] == pytest.approx(value, abs=0.006), name


def test_export_refuses_to_overwrite(small_sample, tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(DataError, match="already exists"):
        export_predictions(None, None, tmp_path / "out")
