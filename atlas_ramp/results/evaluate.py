"""Score any submission on any labelled folder.

``ramp-test`` scores what ``problem.py`` names: cross-validation on
``data/train``, then ``data/test``. This command scores a submission on any other
labelled folder: the synthetic sample's ``data/generalizability`` (cohorts never
seen in training, as ATLAS's generalizability set), an instructor's private set,
or ``data/test`` again. It

1. trains the submission on the whole training folder, exactly as
   ``ramp-test --retrain`` does, or reuses the model that
   ``ramp-test --retrain --pickle`` saved
   (``submissions/<name>/training_output/retrained_model.pkl``) when it is
   newer than ``estimator.py``;
2. predicts every subject of the folder, a few at a time
   (:func:`atlas_ramp.workflow.predict_sparse`), and scores each subject as soon
   as it is predicted, so that memory does not grow with the number of subjects;
3. prints the four challenge scores and writes the per-subject scores
   (``per_subject_<submission>_<folder>.csv``, so that two runs do not
   overwrite each other's); with ``--output DIR`` also the report of
   :mod:`atlas_ramp.results.report`, ``DIR/per_subject.csv`` among its tables.

Command line, from the kit's folder::

    atlas-ramp evaluate --submission starting_kit \\
        --data data/generalizability --output reports/generalizability

On ``data/test`` it gives the test row of ``ramp-test --retrain``'s "Retrain
scores" (same training, same data).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from ..bids import DataError, no_masks_error
from ..grids import check_same_grid
from ..volumes import ImageSequence, load_mask, load_masks
from ..workflow import (
    PREDICT_BATCH_SIZE,
    LesionSegmentation,
    SubmissionError,
    TrainedSubmission,
    predict_sparse,
)
from .breakdown import SCORE_NAMES, WorstCase, score_subjects
from .export import load_trained_model
from .report import write_per_subject_csv, write_report

#: What ``ramp-test --retrain --pickle`` saves: the model trained on all of train.
RETRAINED_MODEL = Path("training_output") / "retrained_model.pkl"


@dataclass
class Evaluation:
    """What :func:`evaluate` found.

    Attributes
    ----------
    submission : str
    folder : Path
        The scored folder.
    scores : dict of str -> float
        The four challenge scores (means over subjects).
    table : pandas DataFrame
        One row per subject (:func:`atlas_ramp.results.breakdown.subject_row`).
    model : str
        Where the model came from (trained, or which saved file).
    per_subject_csv : Path
    report : Path or None
        ``report.html``, when an output folder was given.
    """

    submission: str
    folder: Path
    scores: dict
    table: pd.DataFrame
    model: str
    per_subject_csv: Path
    report: Path | None = None


def find_submission(kit: Path, submission: str) -> Path:
    """``<kit>/submissions/<name>`` (or a submission folder given as a path)."""
    candidate = Path(submission)
    folder = (
        candidate if candidate.parent != Path(".") else kit / "submissions" / submission
    )
    if not (folder / "estimator.py").is_file():
        available = sorted(
            p.parent.name for p in (kit / "submissions").glob("*/estimator.py")
        )
        raise FileNotFoundError(
            f"No submission {submission!r}: {folder / 'estimator.py'} does not "
            f"exist. Submissions in {kit / 'submissions'}: "
            f"{', '.join(available) or 'none'}. Pass the name of a folder "
            "submissions/<name>, or --kit to point to another kit."
        )
    return folder


def trained_model(
    submission_dir: Path, X_train: ImageSequence, retrain: bool = False
) -> tuple[TrainedSubmission, str]:
    """Reuse the model ``ramp-test --retrain --pickle`` saved, or train one.

    The saved model is reused only if it is newer than ``estimator.py``.

    Returns
    -------
    model : TrainedSubmission
    source : str
        A sentence saying which, for the output and the report.
    """
    saved = submission_dir / RETRAINED_MODEL
    source = submission_dir / "estimator.py"
    if not retrain and saved.is_file():
        if saved.stat().st_mtime >= source.stat().st_mtime:
            return load_trained_model(saved), (
                f"reused {saved} (saved by ramp-test --retrain --pickle; pass "
                "--retrain to train afresh)"
            )
        print(f"{saved} is older than {source}: training afresh.")
    print(f"Training {submission_dir.name} on {len(X_train)} subjects ...")
    model = LesionSegmentation().train_submission(
        str(submission_dir), X_train, load_masks(X_train)
    )
    return model, f"trained on all {len(X_train)} subjects of the training data"


def _predicted_subjects(model, X: ImageSequence, batch_size: int, progress: bool):
    """Yield (subject_id, cohort, truth, prediction), a batch predicted at a time."""
    with tqdm(
        total=len(X), unit="subject", desc=f"{model.name}", disable=not progress
    ) as bar:
        for start in range(0, len(X), batch_size):
            batch = X[start : start + batch_size]
            predictions = predict_sparse(model, batch, batch_size)
            for subject, prediction in zip(batch.subjects, predictions, strict=True):
                truth = load_mask(
                    subject, X.volume_shape, X.voxel_volume_ml, X.cache_dir
                )
                yield subject.subject_id, subject.cohort, truth, prediction
                bar.update(1)


def default_csv_name(submission: str, folder: Path | str) -> str:
    """Per-subject CSV name for a run without ``--output``.

    Named after the submission and the scored folder
    (``per_subject_small_cnn_generalizability.csv``), so that runs on other
    submissions or folders, in the same working folder, keep their own file.
    """
    return f"per_subject_{submission}_{Path(folder).resolve().name}.csv"


def evaluate(
    submission: str,
    data: Path | str,
    kit: Path | str = ".",
    train_data: Path | str | None = None,
    output: Path | str | None = None,
    per_subject_csv: Path | str | None = None,
    retrain: bool = False,
    n_worst: int = 4,
    batch_size: int = PREDICT_BATCH_SIZE,
    progress: bool = True,
) -> Evaluation:
    """Train (or reuse) a submission and score it on a labelled folder.

    Parameters
    ----------
    submission : str
        Name of ``<kit>/submissions/<name>``, or the path of a submission folder.
    data : path
        A labelled folder of subjects (ATLAS names), e.g. ``data/test``.
    kit : path
        The kit's folder (holding ``submissions/``).
    train_data : path, optional
        Default ``<kit>/data/train``.
    output : path, optional
        Write the report (and the CSV tables) into this folder.
    per_subject_csv : path, optional
        Default ``<output>/per_subject.csv``, or without ``output``
        :func:`default_csv_name` in the current folder.
    retrain : bool
        Train even if ``ramp-test`` saved a model.
    n_worst : int
        Subjects drawn in the report's worst-subjects figure.
    batch_size : int
        Subjects per ``predict`` call.
    progress : bool
        Show a progress bar over subjects.

    Raises
    ------
    DataError
        An unlabelled or missing folder, or one on another grid than training.
    SubmissionError
        The submission fails or returns something wrong.
    FileNotFoundError
        No such submission.
    """
    kit, folder = Path(kit), Path(data)
    submission_dir = find_submission(kit, submission)
    train_dir = Path(train_data) if train_data is not None else kit / "data" / "train"
    X = ImageSequence.from_folder(folder)
    if not X.is_labelled:
        error = no_masks_error(folder, X.subjects[0])
        raise DataError(f"{error} To predict without scoring: `atlas-ramp export`.")
    X_train = ImageSequence.from_folder(train_dir)
    check_same_grid(
        (str(train_dir), X_train.volume_shape, X_train.affine),
        (str(folder), X.volume_shape, X.affine),
    )
    model, model_source = trained_model(submission_dir, X_train, retrain)
    table, worst = score_subjects(
        _predicted_subjects(model, X, batch_size, progress), n_worst if output else 0
    )
    name = submission_dir.name
    scores = {score: float(table[score].mean()) for score in SCORE_NAMES}
    # The report writes its own per_subject.csv: written here only elsewhere.
    in_report = Path(output) / "per_subject.csv" if output is not None else None
    per_subject_csv = Path(
        per_subject_csv or in_report or default_csv_name(name, folder)
    )
    if per_subject_csv != in_report:
        write_per_subject_csv(per_subject_csv, {name: table})
    report = None
    if output is not None:
        cases = []
        for position, subject_id, cohort, truth, predicted, value in worst:
            case = WorstCase(position, subject_id, cohort, truth, image=X[position])
            case.predictions[name], case.dice[name] = predicted, value
            cases.append(case)
        notes = [
            f"Submission {name}: {model_source} ({train_dir}).",
            f"Scored on {len(X)} subjects of {folder} ({len(set(X.cohorts))} cohorts).",
        ]
        report = write_report(
            output, {name: table}, cases, X.affine, f"{name} on {folder}", notes
        )
    return Evaluation(
        name, folder, scores, table, model_source, per_subject_csv, report
    )


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``atlas-ramp evaluate``."""
    parser = argparse.ArgumentParser(
        prog="atlas-ramp evaluate",
        description="Train a submission on the training data and score it on any "
        "labelled folder.",
    )
    parser.add_argument("--submission", required=True, help="submissions/<name>")
    parser.add_argument(
        "--data", required=True, type=Path, help="labelled folder to score"
    )
    parser.add_argument("--kit", type=Path, default=Path("."), help="kit folder")
    parser.add_argument(
        "--train-data", type=Path, help="training folder (default <kit>/data/train)"
    )
    parser.add_argument("--output", type=Path, help="also write the report here")
    parser.add_argument(
        "--csv",
        type=Path,
        help="per-subject table (default <output>/per_subject.csv, or "
        "per_subject_<submission>_<folder>.csv without --output)",
    )
    parser.add_argument(
        "--retrain", action="store_true", help="train even if ramp-test saved a model"
    )
    parser.add_argument("--worst", type=int, default=4, help="subjects drawn")
    parser.add_argument(
        "--batch-size", type=int, default=PREDICT_BATCH_SIZE, help="subjects a call"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command line: ``atlas-ramp evaluate --submission NAME --data DIR``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = evaluate(
            args.submission,
            args.data,
            kit=args.kit,
            train_data=args.train_data,
            output=args.output,
            per_subject_csv=args.csv,
            retrain=args.retrain,
            n_worst=args.worst,
            batch_size=args.batch_size,
            progress=not args.no_progress,
        )
    except (DataError, SubmissionError, FileNotFoundError) as error:
        raise SystemExit(f"atlas-ramp evaluate: error: {error}") from None
    print(
        f"{result.submission} on {result.folder} ({len(result.table)} subjects), "
        f"model {result.model}:"
    )
    for score, value in result.scores.items():
        print(f"    {score:<18} {value:.3f}")
    print(f"Per-subject scores: {result.per_subject_csv}")
    if result.report is not None:
        print(f"Report: {result.report}")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
