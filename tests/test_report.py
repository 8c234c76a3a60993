"""The report: lesion-size breakdowns against a dense reference, and the HTML.

The size-bin counts are checked against scipy.ndimage.label (default structure:
face connectivity) on random masks, with exact rational voxel volumes so that the
reference bins lesions without floating-point error. The report is rendered by
headless Chromium when it is installed (and must be, in CI).
"""

import html
import os
import shutil
import subprocess
import sys
from fractions import Fraction
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from atlas_ramp.masks import SparseMask, SparseProba
from atlas_ramp.results.breakdown import (
    SIZE_BINS,
    WorstCase,
    detection_by_size,
    detection_table,
    score_subjects,
    size_bin,
)
from atlas_ramp.results.report import write_report
from atlas_ramp.scores import lesion_detection_counts

from .helpers import make_kit, ramp_command, run

EDGES_ML = (Fraction(1, 10), Fraction(1), Fraction(10))
# Exact voxel volumes (mL): 1 mm, 4 mm, and some that put lesions on the edges
# (3 voxels of 1/30 mL make 0.1 mL; 8 voxels of 1/8 mL make 1 mL).
VOXELS_ML = [
    Fraction(1, 1000),
    Fraction(64, 1000),
    Fraction(1, 100),
    Fraction(1, 40),
    Fraction(1, 30),
    Fraction(1, 8),
    Fraction(1, 70),  # 7 voxels: 0.1 mL, 0.09999999999999999 in floating point
    Fraction(1, 49),  # 49 voxels: 1 mL, 0.9999999999999999 in floating point
]


def dense_reference(truth, predicted, voxel_ml: Fraction) -> dict:
    """The size-bin counts, the obvious way: label densely, test every lesion."""

    def bin_of(n_voxels):
        return sum(n_voxels * voxel_ml >= edge for edge in EDGES_ML)

    counts = {
        key: np.zeros(len(SIZE_BINS), int)
        for key in ("true_lesions", "found", "predicted_lesions", "false_lesions")
    }
    true_labels, n_true = ndimage.label(truth)
    for label in range(1, n_true + 1):
        lesion = true_labels == label
        counts["true_lesions"][bin_of(lesion.sum())] += 1
        counts["found"][bin_of(lesion.sum())] += bool((lesion & predicted).any())
    predicted_labels, n_predicted = ndimage.label(predicted)
    for label in range(1, n_predicted + 1):
        lesion = predicted_labels == label
        counts["predicted_lesions"][bin_of(lesion.sum())] += 1
        counts["false_lesions"][bin_of(lesion.sum())] += not (lesion & truth).any()
    return counts


def assert_counts_match(truth, predicted, voxel_ml):
    true_mask = SparseMask.from_dense(truth, float(voxel_ml))
    predicted_mask = SparseMask.from_dense(predicted, float(voxel_ml))
    counts = detection_by_size(true_mask, predicted_mask)
    expected = dense_reference(truth, predicted, voxel_ml)
    for key in expected:
        np.testing.assert_array_equal(counts[key], expected[key], err_msg=key)
    # The totals are the lesion-wise F1's true positives and false positives.
    tp, fp, fn = lesion_detection_counts(true_mask, predicted_mask)
    assert counts["found"].sum() == tp
    assert counts["false_lesions"].sum() == fp
    assert counts["true_lesions"].sum() - counts["found"].sum() == fn


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    shape=st.tuples(st.integers(1, 12), st.integers(1, 12), st.integers(1, 12)),
    true_density=st.sampled_from([0.0, 0.05, 0.2, 0.35, 0.6]),
    predicted_density=st.sampled_from([0.0, 0.05, 0.2, 0.35, 0.6]),
    voxel_ml=st.sampled_from(VOXELS_ML),
)
def test_size_bins_match_dense_labelling(
    seed, shape, true_density, predicted_density, voxel_ml
):
    rng = np.random.default_rng(seed)
    truth = rng.random(shape) < true_density
    predicted = rng.random(shape) < predicted_density
    assert_counts_match(truth, predicted, voxel_ml)


def test_size_bins_empty_truth_and_empty_prediction():
    shape = (10, 10, 10)
    lesions = np.zeros(shape, bool)
    lesions[1:3, 1:3, 1:3] = True  # 8 voxels
    lesions[6:9, 6:9, 6:9] = True  # 27 voxels
    empty = np.zeros(shape, bool)
    voxel_ml = Fraction(1, 100)  # 0.08 mL (tiny) and 0.27 mL (small)
    for truth, predicted in ((empty, lesions), (lesions, empty), (empty, empty)):
        assert_counts_match(truth, predicted, voxel_ml)
    counts = detection_by_size(
        SparseMask.from_dense(empty, 0.01), SparseMask.from_dense(lesions, 0.01)
    )
    assert counts["false_lesions"].tolist() == [1, 1, 0, 0]
    assert counts["true_lesions"].sum() == 0
    counts = detection_by_size(
        SparseMask.from_dense(lesions, 0.01), SparseMask.from_dense(empty, 0.01)
    )
    assert counts["true_lesions"].tolist() == [1, 1, 0, 0]
    assert counts["found"].sum() == 0


@pytest.mark.parametrize(
    ("n_voxels", "expected"),
    [(99, "tiny"), (100, "small"), (999, "small"), (1000, "medium"),
     (9999, "medium"), (10000, "large")],
)  # fmt: skip
def test_lesion_exactly_on_an_edge_goes_to_the_upper_bin(n_voxels, expected):
    # One lesion of n_voxels 1 mm voxels (0.001 mL each): the first n voxels, in
    # C order, of a 10 x 10 x 100 box (rows along the last axis, so connected).
    box = np.zeros((10, 10, 100), bool)
    box.reshape(-1)[:n_voxels] = True
    bar = np.zeros((10, 10, 102), bool)
    bar[:, :, 1:101] = box
    assert bar.sum() == n_voxels and ndimage.label(bar)[1] == 1
    counts = detection_by_size(
        SparseMask.from_dense(bar, 0.001), SparseMask.from_dense(bar, 0.001)
    )
    assert counts["true_lesions"].tolist() == [int(b == expected) for b in SIZE_BINS]
    assert counts["found"].tolist() == counts["true_lesions"].tolist()


def test_size_bin_resists_floating_point_error():
    # 7 voxels of 1/70 mL are 0.1 mL, but 7 * (1 / 70) is 0.09999999999999999.
    assert 7 * (1 / 70) < 0.1 and 49 * (1 / 49) < 1.0
    assert size_bin([7 * (1 / 70), 49 * (1 / 49), 10 * (1 / 1)]).tolist() == [1, 2, 3]


def test_score_subjects_keeps_the_worst_predictions_only():
    shape = (6, 6, 6)
    truth = np.zeros(shape, bool)
    truth[1:4, 1:4, 1:4] = True
    subjects, expected_dice = [], []
    for k in range(6):
        predicted = np.zeros(shape, bool)
        predicted[1:4, 1:4, 1 : 1 + k // 2] = True  # more of the lesion each time
        subjects.append(
            (f"sub-r001s{k:03d}", "R001", SparseMask.from_dense(truth),
             SparseProba.from_dense(predicted))
        )  # fmt: skip
        overlap = predicted.sum()
        expected_dice.append(2 * overlap / (truth.sum() + predicted.sum()))
    table, worst = score_subjects(iter(subjects), n_worst=3)
    np.testing.assert_allclose(table["dice"], expected_dice)
    assert [w[1] for w in worst] == ["sub-r001s000", "sub-r001s001", "sub-r001s002"]
    assert [w[0] for w in worst] == [0, 1, 2]
    assert worst[0][-1] == pytest.approx(0.0)
    assert all(isinstance(w[4], SparseMask) for w in worst)
    detection = detection_table({"x": table})
    assert detection.loc[("x", "tiny < 0.1 mL"), "true_lesions"] == 6


# ------------------------------------------------------------- the HTML report


class _References(HTMLParser):
    def __init__(self):
        super().__init__()
        self.targets = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href"):
                self.targets.append(value)


def _synthetic_report(folder: Path, names=("model_a", "model_b")) -> Path:
    rng = np.random.default_rng(0)
    shape, affine = (20, 24, 18), np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = (-40, -48, -36)
    grid = np.indices(shape)
    head = ((grid - np.array(shape)[:, None, None, None] / 2) ** 2 / 60).sum(0) < 1
    tables, truths = {}, []
    for k in range(8):
        truth = np.zeros(shape, bool)
        x, y, z = rng.integers(5, 13, 3)
        truth[x : x + 1 + k % 4, y : y + 3, z : z + 2] = True
        truths.append(SparseMask.from_dense(truth, 0.064))
    predictions = {}
    for offset, name in enumerate(names):
        predictions[name] = []
        for truth in truths:
            dense = np.roll(truth.to_dense(), offset + 1, axis=0)
            dense[rng.integers(0, 20), rng.integers(0, 24), rng.integers(0, 18)] = True
            predictions[name].append(SparseMask.from_dense(dense, 0.064))
        subjects = [
            (f"sub-r00{1 + k % 2}s00{k}", f"R00{1 + k % 2}", t, p)
            for k, (t, p) in enumerate(zip(truths, predictions[name], strict=True))
        ]
        tables[name] = score_subjects(subjects)[0]
    cases = []
    for position in (0, 3):
        case = WorstCase(position, f"sub-r001s00{position}", "R001", truths[position])
        case.image = head * (1 + 0.2 * rng.random(shape))
        for name in names:
            case.predictions[name] = predictions[name][position]
            case.dice[name] = float(tables[name]["dice"].iloc[position])
        cases.append(case)
    return write_report(folder, tables, cases, affine, "Synthetic report", ["a note"])


def test_report_references_only_files_that_exist(tmp_path):
    report = _synthetic_report(tmp_path / "report")
    parser = _References()
    parser.feed(report.read_text())
    assert parser.targets, "the report references no figure or table"
    for target in parser.targets:
        assert "://" not in target, f"{target}: the report must be self-contained"
        assert (report.parent / target).is_file(), f"{target} is missing"
    assert {t for t in parser.targets if t.endswith(".png")} >= {
        "detection_by_size.png", "dice_vs_volume.png", "cohorts.png",
        "worst_subjects.png",
    }  # fmt: skip
    scores = pd.read_csv(report.parent / "scores.csv", index_col=0)
    assert list(scores.index) == ["model_a", "model_b"]
    per_subject = pd.read_csv(report.parent / "per_subject.csv")
    assert len(per_subject) == 16 and set(per_subject["submission"]) == set(
        scores.index
    )
    assert not list(report.parent.glob(".*partial*")), "temporary files left behind"


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    message = "headless Chromium is not installed (Debian: apt-get install chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(message + "; CI must have it to check that the report renders.")
    pytest.skip(message)


def test_report_renders_in_headless_chromium(tmp_path):
    chromium = _chromium()
    report = _synthetic_report(tmp_path / "report")
    screenshot = tmp_path / "report.png"
    result = subprocess.run(
        [
            chromium, "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2400",
            f"--screenshot={screenshot}", report.resolve().as_uri(),
        ],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert screenshot.is_file(), result.stderr[-2000:]
    from matplotlib.image import imread

    pixels = imread(screenshot)[..., :3].mean(axis=-1)
    # A blank page is one colour; the report has text, tables and figures.
    assert pixels.std() > 0.05, f"the screenshot looks blank (std {pixels.std():.3f})"
    assert (pixels < 0.5).mean() > 0.01, "almost no dark pixels: nothing rendered"


# ------------------------------------------- from ramp-test's saved predictions


@pytest.mark.slow
def test_report_from_saved_predictions_matches_ramp_test(small_sample, tmp_path):
    kit = make_kit(tmp_path / "kit", small_sample, ["starting_kit"])
    shutil.copytree(
        kit / "submissions" / "starting_kit", kit / "submissions" / "starting_copy"
    )
    for name in ("starting_kit", "starting_copy"):
        run(kit, ramp_command("ramp-test"), "--submission", name, "--save-output")
    bagged = pd.read_csv(
        kit / "submissions/starting_kit/training_output/bagged_scores.csv",
        index_col=[0, 1],
    )
    test_row = bagged.xs("test", level="step").iloc[-1]  # all folds bagged

    run(
        kit,
        sys.executable,
        "-m",
        "atlas_ramp",
        "report",
        "submissions/starting_kit",
    )
    scores = pd.read_csv(kit / "reports/starting_kit/scores.csv", index_col=0)
    for name in ("dice", "lesion_f1", "volume_diff_ml", "lesion_count_diff"):
        assert scores.loc["starting_kit", f"{name}_mean"] == pytest.approx(
            test_row[name], abs=1e-9
        ), name

    output = run(
        kit, sys.executable, "-m", "atlas_ramp", "report", "submissions/starting_kit",
        "submissions/starting_copy", "--blend", "--output", "side_by_side",
    )  # fmt: skip
    assert "side_by_side" in output
    scores = pd.read_csv(kit / "side_by_side/scores.csv", index_col=0)
    assert list(scores.index) == ["starting_kit", "starting_copy", "blend"]
    # Two identical submissions: their mean is each of them.
    assert scores.loc["blend", "dice_mean"] == pytest.approx(test_row["dice"])
    page = html.unescape((kit / "side_by_side/report.html").read_text())
    assert "voxel-wise mean of the submissions' bagged probabilities" in page


# ------------------------------------------------------------------ orientation


@pytest.mark.parametrize("x_step", [4.0, -4.0])  # RAS and LAS storage
def test_axial_slices_put_the_subjects_left_on_the_left(x_step):
    from atlas_ramp.results.figures import axial_slices, convention_note

    shape = (10, 8, 6)
    affine = np.diag([x_step, 4.0, 4.0, 1.0])
    affine[:3, 3] = (-18 * np.sign(x_step), -14, -10)
    volume = np.zeros(shape)
    # Mark the voxels whose world x is negative (the subject's left).
    world_x = affine[0, 0] * np.arange(shape[0]) + affine[0, 3]
    volume[world_x < 0] = 1.0
    (section,) = axial_slices([volume], z_mm=0.0, affine=affine)
    # First axis of the slice runs from the subject's left to right.
    assert section[: shape[0] // 2].min() == 1.0 and section[shape[0] // 2 :].max() == 0
    codes = "RAS" if x_step > 0 else "LAS"
    assert "neurological" in convention_note(affine) and codes in convention_note(
        affine
    )


@pytest.mark.slow
def test_blend_uses_ramp_blends_predictions_when_it_saved_them(small_sample, tmp_path):
    kit = make_kit(tmp_path / "kit", small_sample, ["starting_kit"])
    shutil.copytree(
        kit / "submissions" / "starting_kit", kit / "submissions" / "starting_copy"
    )
    # ramp-workflow saves bagged and blended predictions through save_submission,
    # which the kit's problem.py does not define; this kit's copy does.
    with open(kit / "problem.py", "a") as problem:
        problem.write(
            "\n\ndef save_submission(y_pred, data_path='.', output_path='.', "
            "suffix='test'):\n    save_y_pred(y_pred, data_path, output_path, suffix)\n"
        )
    for name in ("starting_kit", "starting_copy"):
        run(kit, ramp_command("ramp-test"), "--submission", name, "--save-output")
    run(
        kit, ramp_command("ramp-blend"), "--submissions",
        "['starting_kit', 'starting_copy']", "--save-output",
    )  # fmt: skip
    combined = kit / "submissions/training_output/y_pred_combined_bagged_test.npz"
    assert combined.is_file()
    run(
        kit, sys.executable, "-m", "atlas_ramp", "report", "submissions/starting_kit",
        "submissions/starting_copy", "--blend", "--output", "blended",
    )  # fmt: skip
    page = html.unescape((kit / "blended/report.html").read_text())
    assert "ramp-blend's combined" in page
    blended = pd.read_csv(
        kit / "submissions/training_output/bagged_scores_combined.csv",
        index_col=[0, 1],
    )
    scores = pd.read_csv(kit / "blended/scores.csv", index_col=0)
    expected = blended.xs("test", level="step").iloc[-1]["dice"]
    assert scores.loc["blend", "dice_mean"] == pytest.approx(expected, abs=1e-9)
