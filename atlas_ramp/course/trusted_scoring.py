"""Score what a sandboxed ``ramp-test`` saved, outside the sandbox, with the masks.

In the course server's sandbox (:mod:`atlas_ramp.course.sandbox`), ``ramp-test
--save-output`` sees no test mask: it saves every fold's predictions
(``fold_<i>/y_pred_train.npz``, ``y_pred_test.npz``) and times, and prints NaN
test scores. This module, run by the server with the kit's own code, reads
those predictions, checks them, and writes every score file ramp-board reads,
replacing what the submission's process wrote there:

* ``fold_<i>/scores.csv``: train, valid and test scores of the fold, as
  ``ramp-test`` computes them (the same ramp-workflow functions, on the same
  predictions: equal to the last bit for an honest submission);
* ``bagged_scores.csv``: the CV-bagged valid and test scores;
* ``fold_<i>/{train,valid,test}_time``: rewritten as plain numbers.

Run ``python -m atlas_ramp.course.trusted_scoring --kit-dir K --data-dir D
--training-output T`` in the quick mode ``ramp-test`` ran in (the same
variables), without ``ATLAS_RAMP_UNLABELLED_TEST``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import traceback
from collections import OrderedDict
from pathlib import Path

import numpy as np
from rampwf.utils.importing import import_module_from_source
from rampwf.utils.pretty_print import print_df_scores, print_title
from rampwf.utils.scoring import round_df_scores, score_matrix
from rampwf.utils.submission import bag_submissions

from .._io import atomic_path, atomic_write_text
from ..testmode import UNLABELLED_TEST_VARIABLE, is_unlabelled_test
from .worker_host import RAMP_SIDE_EXIT_CODE, ramp_side_message

STEPS = ("train", "valid", "test")


class ForgedOutput(ValueError):
    """What the sandbox saved is not what the kit's workflow writes."""


def _check_archive(path: Path, n_subjects: int) -> None:
    """Refuse an ``.npz`` whose per-subject counts do not fit its arrays."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            counts, indices = archive["counts"], archive["indices"]
            levels = archive["levels"]
    except Exception as error:  # numpy raises many types for a bad archive
        raise ForgedOutput(f"{path} is not a prediction file: {error}") from error
    if counts.ndim != 1 or counts.size != n_subjects:
        raise ForgedOutput(f"{path} holds {counts.size} subjects; {n_subjects} exist.")
    stored = int(counts[counts >= 0].sum())
    if indices.shape != (stored,) or levels.shape != (stored,):
        raise ForgedOutput(f"{path}: counts and voxel arrays disagree.")
    if (
        not np.issubdtype(levels.dtype, np.integer)
        or levels.size
        and (levels.min() < 0 or levels.max() > 255)
    ):
        raise ForgedOutput(f"{path}: probability levels outside 0..255.")


def check_predictions(y_pred, X, path: Path, every_subject: bool) -> None:
    """Refuse predictions not on ``X``'s grid, or not as the workflow makes them.

    Raises
    ------
    ForgedOutput
        Naming the file and the subject.
    """
    size = int(np.prod(X.volume_shape))
    for position, item in enumerate(y_pred):
        where = f"{path}, subject {X.subject_ids[position]}"
        if item is None:
            if every_subject:
                raise ForgedOutput(f"{where}: no prediction.")
            continue
        if item.shape != X.volume_shape or item.voxel_volume_ml != X.voxel_volume_ml:
            raise ForgedOutput(f"{where}: not on the grid of the data.")
        indices = item.indices
        if indices.size and (
            indices[0] < 0 or indices[-1] >= size or np.any(np.diff(indices) <= 0)
        ):
            raise ForgedOutput(f"{where}: voxel indices not sorted, unique, in range.")


def _load_fold_predictions(problem, data_dir, fold_dir: Path, suffix, X, every):
    path = fold_dir / f"y_pred_{suffix}.npz"
    if path.is_symlink() or not path.is_file():
        raise ForgedOutput(f"{path} is missing: ramp-test saved no predictions.")
    _check_archive(path, len(X))
    y_pred = problem.load_y_pred(
        data_path=str(data_dir), input_path=str(fold_dir), suffix=suffix
    )
    check_predictions(y_pred, X, path, every)
    return y_pred


def _read_time(path: Path) -> float:
    try:
        value = float(path.read_text(encoding="utf-8").strip())
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise ForgedOutput(f"{path} holds no time in seconds: {error}") from error
    if not math.isfinite(value) or value < 0:
        raise ForgedOutput(f"{path} holds {value!r}, not a time in seconds.")
    return value


def score_training_output(
    kit_dir: Path | str, data_dir: Path | str, training_output: Path | str
) -> None:
    """Write the score files of a sandboxed run, from its saved predictions.

    Parameters
    ----------
    kit_dir : path
        The kit folder holding ``problem.py`` (trusted: the instructor's).
    data_dir : path
        Holds ``data/train`` and ``data/test`` with their masks.
    training_output : path
        ``ramp-test --save-output``'s folder: ``fold_<i>/`` with the
        predictions and times.

    Raises
    ------
    ForgedOutput
        A missing fold or prediction file, or one the workflow cannot have
        written (wrong grid, counts, indices).
    """
    if is_unlabelled_test():
        raise RuntimeError(
            f"{UNLABELLED_TEST_VARIABLE} is set: trusted scoring reads the test "
            "masks, run it outside the sandbox without that variable."
        )
    data_dir, output = str(data_dir), Path(training_output)
    problem = import_module_from_source(os.path.join(kit_dir, "problem.py"), "problem")
    X_train, y_train = problem.get_train_data(path=data_dir)
    X_test, y_test = problem.get_test_data(path=data_dir)
    cv = list(problem.get_cv(X_train, y_train))
    print_title("Trusted scoring (outside the sandbox, private test masks)")
    valid_list, test_list = [], []
    for fold_i, (train_is, valid_is) in enumerate(cv):
        fold_dir = output / f"fold_{fold_i}"
        y_pred_train = _load_fold_predictions(
            problem, data_dir, fold_dir, "train", X_train, every=False
        )
        y_pred_test = _load_fold_predictions(
            problem, data_dir, fold_dir, "test", X_test, every=True
        )
        times = [_read_time(fold_dir / f"{step}_time") for step in STEPS]
        for step, seconds in zip(STEPS, times, strict=True):
            atomic_write_text(fold_dir / f"{step}_time", repr(seconds))
        # As rampwf.utils.submission.run_submission_on_cv_fold does.
        predictions = OrderedDict(
            train=problem.Predictions(y_pred=y_pred_train, fold_is=train_is),
            valid=problem.Predictions(y_pred=y_pred_train, fold_is=valid_is),
            test=problem.Predictions(y_pred=y_pred_test),
        )
        truths = OrderedDict(
            train=problem.Predictions(y_true=y_train, fold_is=train_is),
            valid=problem.Predictions(y_true=y_train, fold_is=valid_is),
            test=problem.Predictions(y_true=y_test),
        )
        df_scores = score_matrix(problem.score_types, truths, predictions)
        df_scores["time"] = times
        with atomic_path(fold_dir / "scores.csv") as temporary:
            df_scores.to_csv(temporary)
        print_title(f"CV fold {fold_i}")
        print_df_scores(round_df_scores(df_scores, problem.score_types), indent="\t")
        valid_list.append(predictions["valid"])
        test_list.append(predictions["test"])
    bagged = output / "bagged_scores.csv"
    if bagged.exists() or bagged.is_symlink():
        bagged.unlink()  # bag_submissions writes in place: never through a link
    bag_submissions(
        problem, cv, y_train, y_test, valid_list, test_list, str(output),
        ramp_data_dir=data_dir, score_type_index=None, save_output=True,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """``python -m atlas_ramp.course.trusted_scoring``."""
    parser = argparse.ArgumentParser(
        prog="python -m atlas_ramp.course.trusted_scoring",
        description="Score a sandboxed ramp-test's saved predictions.",
    )
    parser.add_argument("--kit-dir", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--training-output", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        score_training_output(args.kit_dir, args.data_dir, args.training_output)
    except ForgedOutput as error:  # the submission's fault: "training_error"
        print(
            "atlas_ramp.course.trusted_scoring: the submission's output is refused: "
            f"{error}",
            file=sys.stderr,
        )
        return 1
    except Exception as error:
        # Predictions that passed the checks are scored by the kit's own code:
        # what fails now is the data (the private masks), the kit or the host.
        traceback.print_exc()
        message = ramp_side_message("scoring the test predictions failed", error)
        print(f"atlas_ramp.course.trusted_scoring: error: {message}", file=sys.stderr)
        return RAMP_SIDE_EXIT_CODE
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
