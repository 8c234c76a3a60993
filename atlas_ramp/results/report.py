"""Where a submission fails: an HTML report people look at.

From per-subject tables (:mod:`atlas_ramp.results.breakdown`, one per submission) this
module writes ``report.html``, with its PNG figures and CSV tables beside it:

* the scores (mean ± standard deviation over subjects, and median);
* detection by lesion size: recall and precision per size bin (tiny < 0.1 mL,
  small 0.1–1 mL, medium 1–10 mL, large ≥ 10 mL; see
  :mod:`atlas_ramp.results.breakdown`);
* Dice against true lesion volume, one point per subject;
* the scores per cohort;
* the worst subjects, drawn with the errors in colour
  (:mod:`atlas_ramp.results.figures`).

Several submissions (and their blend) appear side by side in every table and
figure. The HTML references only the files written beside it, so the folder can
be zipped, copied or served as it is.

Command line
------------
From the predictions that ``ramp-test --save-output`` saved, without retraining:
the fold models' test probabilities, averaged voxel by voxel as ramp-workflow
bags them, scored against the kit's ``data/test``::

    atlas-ramp report submissions/starting_kit
    atlas-ramp report submissions/A submissions/B --blend

The blend is ramp-blend's combined prediction when ramp-blend saved one for
exactly these submissions (``submissions/training_output/
y_pred_combined_bagged_test.npz``, which needs a ``save_submission`` in
``problem.py``); otherwise, and so with today's ``problem.py``, it is the
voxel-wise mean of the submissions' bagged probabilities, with equal weights.
The report says which.

To score a submission on another labelled folder (``data/generalizability``, an
instructor's private set), use :mod:`atlas_ramp.results.evaluate`: it writes the same
report.
"""

from __future__ import annotations

import argparse
import html
from pathlib import Path

import numpy as np
import pandas as pd
from rampwf.utils.importing import import_module_from_source

from .._io import atomic_path, atomic_write_text
from ..bids import DataError
from ..masks import mean_probabilities
from ..predictions import Predictions, load_sparse_probas
from ..scores import atlas_score_types
from ..testmode import quick_test_mode
from .breakdown import (
    SCORE_NAMES,
    SIZE_BINS,
    WorstCase,
    cohort_table,
    detection_table,
    score_subjects,
    score_summary,
    select_worst,
)

_LOWER_IS_BETTER = {s.name: s.is_lower_the_better for s in atlas_score_types()}

# ------------------------------------------------------------------ the report


def _formatted(table: pd.DataFrame) -> pd.DataFrame:
    """Scores as text: mean ± sd (just the mean for one subject), and the median
    where the table has one (the score table does, the cohort table does not)."""
    shown = pd.DataFrame(index=table.index)
    shown["subjects"] = table["subjects"]
    for score in SCORE_NAMES:
        arrow = "↓" if _LOWER_IS_BETTER[score] else "↑"
        mean, sd = table[f"{score}_mean"], table[f"{score}_sd"]
        shown[f"{score} {arrow} mean ± sd"] = [
            f"{m:.3f}" if np.isnan(s) else f"{m:.3f} ± {s:.3f}"
            for m, s in zip(mean, sd, strict=True)
        ]
        if f"{score}_median" in table:
            shown[f"{score} median"] = table[f"{score}_median"].map("{:.3f}".format)
    return shown


def _save_figure(figure, path: Path) -> str:
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=100, format="png")  # layout: constrained
    return path.name


def _figures(output: Path, tables: dict, detection, cohorts, cases, affine) -> dict:
    from matplotlib.figure import Figure  # no pyplot: no GUI backend needed

    from . import figures

    names = list(tables)
    made = {}
    width = max(9.0, 3.0 + 1.6 * len(names) * len(SIZE_BINS) / 2)
    figure = Figure(figsize=(width, 4.2), layout="constrained")
    figures.plot_detection_by_size(figure.subplots(1, 2), detection, names)
    figure.suptitle("Detection by lesion size (3D components, face connectivity)")
    made["detection"] = _save_figure(figure, output / "detection_by_size.png")

    figure = Figure(figsize=(7.5, 4.5), layout="constrained")
    figures.plot_dice_vs_volume(figure.subplots(), tables)
    made["dice_volume"] = _save_figure(figure, output / "dice_vs_volume.png")

    n_cohorts = len(set(cohorts.index.get_level_values("cohort")))
    figure = Figure(
        figsize=(max(7.0, 1.0 + 0.9 * n_cohorts), 4.2), layout="constrained"
    )
    figures.plot_cohorts(figure.subplots(), cohorts, names)
    made["cohorts"] = _save_figure(figure, output / "cohorts.png")

    if cases:
        rows, columns = (1, len(cases)) if len(names) == 1 else (len(cases), len(names))
        figure = Figure(
            figsize=(max(3.6 * columns, 7.0), 3.9 * rows + 1.2), layout="constrained"
        )
        figures.plot_worst_subjects(figure, cases, names, affine)
        made["worst"] = _save_figure(figure, output / "worst_subjects.png")
    return made


_STYLE = """
body { font-family: sans-serif; max-width: 75em; margin: 1em auto; padding: 0 1em;
       color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 0.2em 0.6em; text-align: right; }
th { background: #eee; }
img { max-width: 100%; border: 1px solid #ddd; }
p.note { font-size: 0.9em; color: #555; }
"""


def _table_html(frame: pd.DataFrame, float_format="{:.3f}".format) -> str:
    return frame.to_html(float_format=float_format, na_rep="n/a", border=0)


def write_per_subject_csv(path: Path | str, tables: dict) -> Path:
    """Write the per-subject tables as one CSV (a ``submission`` column first)."""
    frame = pd.concat(
        [t.assign(submission=name) for name, t in tables.items()], ignore_index=True
    )
    frame = frame.set_index(["submission", "subject"])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, frame.to_csv())


def write_report(
    output_dir: Path | str,
    tables: dict,
    cases: list,
    affine,
    title: str,
    notes=(),
) -> Path:
    """Write ``report.html``, its PNG figures and CSV tables into ``output_dir``.

    Each file is written under a temporary name and renamed, so a crash never
    leaves a half-written file; other files in ``output_dir`` are left alone.

    Parameters
    ----------
    output_dir : path
        Created if needed.
    tables : dict of str -> pandas DataFrame
        Per-subject tables (:func:`score_subjects`), one per submission, all
        with the same subjects in the same order.
    cases : list of WorstCase
        The subjects to draw, with their image and every submission's mask.
    affine : ndarray of shape (4, 4)
        The voxel-to-world affine of the subjects (for orientation).
    title : str
    notes : sequence of str
        Lines said under the title (what was scored, on what data).

    Returns
    -------
    Path
        ``output_dir / "report.html"``.
    """
    from .figures import convention_note

    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    summary, detection = score_summary(tables), detection_table(tables)
    cohorts = cohort_table(tables)
    write_per_subject_csv(output / "per_subject.csv", tables)
    csv_files = {
        "per_subject.csv": None,
        "scores.csv": summary,
        "detection_by_size.csv": detection,
        "cohorts.csv": cohorts,
    }
    for name, frame in csv_files.items():
        if frame is not None:
            atomic_write_text(output / name, frame.to_csv())
    made = _figures(output, tables, detection, cohorts, cases, affine)

    def image(key, alt):
        return f'<p><img src="{made[key]}" alt="{html.escape(alt)}"></p>'

    first = next(iter(tables.values()))
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        *(f"<p>{html.escape(line)}</p>" for line in notes),
        "<h2>Scores</h2>",
        _table_html(_formatted(summary)),
        f'<p class="note">Per subject, then mean ± standard deviation (ddof = 1) '
        f"and median over the {len(first)} subjects; the means are the challenge "
        "scores. ↑ higher is better, ↓ lower is better. Predictions are "
        "thresholded at probability 0.5.</p>",
        "<h2>Detection by lesion size</h2>",
        image("detection", "Recall and precision per lesion-size bin"),
        _table_html(detection),
        '<p class="note">Lesions are 3D connected components (face '
        "connectivity). Recall: true lesions sharing at least one voxel with the "
        "prediction, over all true lesions of the bin. Precision: predicted "
        "lesions sharing at least one voxel with the truth, over all predicted "
        "lesions of the bin (binned by their own volume). Bins: tiny < 0.1 mL, "
        "small 0.1–1 mL, medium 1–10 mL, large ≥ 10 mL; a lesion exactly on an "
        "edge goes to the upper bin.</p>",
        "<h2>Dice against lesion volume</h2>",
        image("dice_volume", "Dice of each subject against its lesion volume"),
        '<p class="note">Dotted lines: the size-bin edges. Small total lesion '
        "volumes are where Dice is least forgiving.</p>",
        "<h2>Scores per cohort</h2>",
        image("cohorts", "Mean Dice per cohort"),
        _table_html(_formatted(cohorts)),
    ]
    if "worst" in made:
        parts += [
            "<h2>Worst subjects</h2>",
            image("worst", "Worst subjects with their errors in colour"),
            f'<p class="note">Yellow: true positives; red-orange: false positives; '
            f"blue: false negatives. Slices in the "
            f"{html.escape(convention_note(affine))}.</p>",
        ]
    links = " · ".join(f'<a href="{name}">{name}</a>' for name in csv_files)
    parts += ["<h2>Tables</h2>", f"<p>{links}</p>"]
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        "<body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )
    return atomic_write_text(output / "report.html", page)


# ------------------------------------------- from ramp-test's saved predictions


def _kit_of(submission_dir: Path) -> Path:
    kit = submission_dir.resolve().parent.parent
    if not (kit / "problem.py").is_file():
        raise DataError(
            f"{submission_dir} is not inside a kit's submissions/ folder (no "
            f"problem.py in {kit}). Pass submissions/<name> from the kit."
        )
    return kit


def load_bagged_test(submission_dir: Path | str) -> np.ndarray:
    """The bagged test probabilities that ``ramp-test --save-output`` saved.

    Reads every ``training_output/fold_<i>/y_pred_test.npz`` and averages the
    folds' probabilities voxel by voxel, as ramp-workflow bags them
    (:meth:`atlas_ramp.predictions.Predictions.combine`).

    Returns
    -------
    ndarray of SparseProba, one per test subject
    """
    submission_dir = Path(submission_dir)
    folds = sorted(
        (submission_dir / "training_output").glob("fold_*/y_pred_test.npz"),
        key=lambda path: int(path.parent.name.removeprefix("fold_")),
    )
    if not folds:
        raise DataError(
            f"No saved predictions in {submission_dir / 'training_output'} "
            "(fold_*/y_pred_test.npz). Run `ramp-test --submission "
            f"{submission_dir.name} --save-output` first."
        )
    fold_predictions = [Predictions(y_pred=load_sparse_probas(f)) for f in folds]
    sizes = {len(p.y_pred) for p in fold_predictions}
    if len(sizes) != 1:
        raise DataError(
            f"The folds in {submission_dir / 'training_output'} predicted different "
            f"numbers of test subjects ({sorted(sizes)}): they come from different "
            "runs. Run `ramp-test --save-output` again."
        )
    return Predictions.combine(fold_predictions).y_pred


def _ramp_blend_predictions(kit: Path, names: list[str]):
    """ramp-blend's combined test predictions, if it saved them for ``names``."""
    output = kit / "submissions" / "training_output"
    combined = output / "y_pred_combined_bagged_test.npz"
    contributivities = output / "contributivities.csv"
    if not (combined.is_file() and contributivities.is_file()):
        return None
    blended = pd.read_csv(contributivities)["submission"]
    if sorted(blended) != sorted(names):
        return None
    return load_sparse_probas(combined)


def report_from_saved(
    submission_dirs, output_dir=None, blend=False, n_worst=4, quick_test=False
) -> Path:
    """Report on the test predictions that ``ramp-test --save-output`` saved.

    Parameters
    ----------
    submission_dirs : list of path
        ``submissions/<name>`` folders of one kit.
    output_dir : path, optional
        Default ``<kit>/reports/<name>[+<name>...]``.
    blend : bool
        Add a blend column: ramp-blend's combined predictions when it saved
        them for exactly these submissions, else the voxel-wise mean of the
        submissions' bagged probabilities (equal weights).
    n_worst : int
        Subjects in the worst-subjects figure.
    quick_test : bool
        The predictions come from ``ramp-test --quick-test`` (its test subset).

    Returns
    -------
    Path
        The written ``report.html``.
    """
    submission_dirs = [Path(d) for d in submission_dirs]
    kits = {_kit_of(d) for d in submission_dirs}
    if len(kits) != 1:
        raise DataError("All submissions must belong to the same kit.")
    kit = kits.pop()
    names = [d.resolve().name for d in submission_dirs]
    predictions = {
        name: load_bagged_test(d)
        for name, d in zip(names, submission_dirs, strict=True)
    }
    # The test subjects exactly as ramp-test loaded them.
    with quick_test_mode(quick_test):
        problem = import_module_from_source(str(kit / "problem.py"), "problem")
        X, y = problem.get_test_data(str(kit))
    for name, y_pred in predictions.items():
        if len(y_pred) != len(X):
            hint = "" if quick_test else " If they come from --quick-test, pass it."
            raise DataError(
                f"submissions/{name} saved predictions for {len(y_pred)} test "
                f"subjects but {kit / 'data' / 'test'} has {len(X)}.{hint} Else "
                f"run `ramp-test --submission {name} --save-output` again."
            )
    notes = [f"Test subjects: {len(X)} from {kit / 'data' / 'test'}."]
    notes += [
        f"{name}: bagged test predictions of ramp-test's CV folds." for name in names
    ]
    if blend and len(names) > 1:
        combined = _ramp_blend_predictions(kit, names)
        if combined is not None:
            predictions["blend"] = combined
            notes.append("blend: ramp-blend's combined (greedy, weighted) predictions.")
        else:
            predictions["blend"] = [
                mean_probabilities([p[i] for p in predictions.values()])
                for i in range(len(X))
            ]
            notes.append(
                "blend: the voxel-wise mean of the submissions' bagged probabilities "
                "(equal weights; ramp-blend saved no combined predictions)."
            )
    tables = {
        name: score_subjects(zip(X.subject_ids, X.cohorts, y, y_pred, strict=True))[0]
        for name, y_pred in predictions.items()
    }
    cases = []
    for position in select_worst(tables, n_worst):
        case = WorstCase(
            int(position), X.subject_ids[position], X.cohorts[position], y[position]
        )
        for name, y_pred in predictions.items():
            case.predictions[name] = y_pred[position].binarize()
            case.dice[name] = float(tables[name]["dice"].iloc[position])
        case.image = X[int(position)]
        cases.append(case)
    output_dir = Path(output_dir or kit / "reports" / "+".join(names))
    return write_report(
        output_dir,
        tables,
        cases,
        X.affine,
        f"Test scores of {', '.join(predictions)}",
        notes,
    )


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``atlas-ramp report``."""
    parser = argparse.ArgumentParser(
        prog="atlas-ramp report",
        description="Report on the test predictions saved by ramp-test --save-output.",
    )
    parser.add_argument("submissions", nargs="+", type=Path, help="submissions/<name>")
    parser.add_argument(
        "--output", type=Path, help="folder to write (default <kit>/reports/<names>)"
    )
    parser.add_argument(
        "--blend", action="store_true", help="add the blend of the submissions"
    )
    parser.add_argument(
        "--worst", type=int, default=4, help="subjects drawn (default 4)"
    )
    parser.add_argument(
        "--quick-test",
        action="store_true",
        help="the predictions were saved by ramp-test --quick-test",
    )
    return parser


def main(argv=None) -> int:
    """``atlas-ramp report submissions/NAME [submissions/OTHER ...]``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        path = report_from_saved(
            args.submissions, args.output, args.blend, args.worst, args.quick_test
        )
    except DataError as error:
        raise SystemExit(f"report: error: {error}") from None
    print(f"Report written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
