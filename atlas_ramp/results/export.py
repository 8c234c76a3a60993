"""Write a submission's predictions as BIDS lesion masks, and score such masks.

The ATLAS Grand Challenge evaluator reads one NIfTI mask per subject, on the
subject's T1w grid, named like the training masks::

    <output>/sub-r001s002/ses-1/anat/
        sub-r001s002_ses-1_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask.nii.gz

in a BIDS derivatives folder with its ``dataset_description.json``. This module
trains a submission (or loads one pickled by ``ramp-test --pickle``), predicts every
subject of a folder (for example ``data/unlabelled``, the ATLAS Testing subjects),
and writes that tree. Masks are thresholded at 0.5 exactly as the kit's scores do,
so scoring the written files gives the same numbers as ``ramp-test``.

Command line::

    atlas-ramp export --submission submissions/starting_kit \\
        --input data/unlabelled --output predictions/starting_kit
    atlas-ramp export \\
        --model submissions/x/training_output/retrained_model.pkl \\
        --input data/test --output predictions/x --score-against data/test
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import cloudpickle
import nibabel as nib
import numpy as np

from .._io import atomic_path, object_array, staging_folder, write_dataset_description
from ..bids import DataError, mask_name, parse_entities, read_header
from ..masks import SparseMask
from ..scores import atlas_score_types
from ..volumes import ImageSequence, load_masks, load_split
from ..workflow import LesionSegmentation, TrainedSubmission, predict_sparse


def load_trained_model(path: Path | str) -> TrainedSubmission:
    """Unpickle a model saved by ``ramp-test --pickle`` (or a bare estimator)."""
    path = Path(path)
    try:
        with open(path, "rb") as stream:
            model = cloudpickle.load(stream)
    except Exception as error:
        raise DataError(
            f"Cannot load the trained model {path}: {error}. Re-create it with "
            "`ramp-test --submission <name> --pickle --retrain`."
        ) from error
    if not isinstance(model, TrainedSubmission):
        model = TrainedSubmission(path.stem, model)
    return model


def train_submission(submission_dir: Path | str, data_dir: Path | str):
    """Train a submission on the whole ``<data_dir>/train`` split."""
    X, y = load_split(data_dir, "train")
    return LesionSegmentation().train_submission(str(submission_dir), X, y)


def _write_nifti(array: np.ndarray, reference: nib.Nifti1Image, target: Path) -> None:
    header = reference.header.copy()
    header.set_data_dtype(np.uint8)
    image = nib.Nifti1Image(array.astype(np.uint8), reference.affine, header)
    image.header.set_slope_inter(1, 0)
    with atomic_path(target) as temporary:
        nib.save(image, temporary)


def export_predictions(
    model: TrainedSubmission,
    X: ImageSequence,
    output_dir: Path | str,
    force: bool = False,
) -> list[Path]:
    """Predict every subject of ``X`` and write BIDS lesion masks.

    The tree is built in a temporary folder beside ``output_dir`` and renamed at
    the end: an interrupted export leaves no partial tree under the final name.

    Parameters
    ----------
    model : TrainedSubmission
    X : ImageSequence
        The subjects to predict (labelled or not).
    output_dir : path
        The BIDS derivatives folder to create.
    force : bool
        Replace an existing ``output_dir``.

    Returns
    -------
    list of Path
        The written mask files, in subject order.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not force:
        raise DataError(
            f"{output_dir} already exists; choose another --output or pass --force."
        )
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_folder(output_dir.parent, f".{output_dir.name}.partial-")
    try:
        write_dataset_description(
            staging,
            f"Lesion masks predicted by the '{model.name}' submission",
            GeneratedBy=[
                {
                    "Name": "atlas_ramp.results.export",
                    "Description": f"RAMP submission '{model.name}', threshold 0.5",
                }
            ],
        )
        written = []
        batch = 4
        for start in range(0, len(X), batch):
            X_batch = X[start : start + batch]
            for subject, proba in zip(
                X_batch.subjects, predict_sparse(model, X_batch), strict=True
            ):
                folder = (
                    staging / subject.subject_id / f"ses-{subject.session}" / "anat"
                )
                folder.mkdir(parents=True, exist_ok=True)
                name = mask_name(subject.subject_id, subject.session)
                _write_nifti(
                    proba.binarize().to_dense(),
                    read_header(subject.t1w_path),
                    folder / name,
                )
                written.append(output_dir.joinpath(folder.relative_to(staging), name))
        if output_dir.exists():
            shutil.rmtree(output_dir)
        os.replace(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return written


def read_predicted_masks(prediction_dir: Path | str, X: ImageSequence) -> np.ndarray:
    """Read one predicted mask per subject of ``X`` (object array of SparseMask)."""
    found = {}
    for path in Path(prediction_dir).rglob("sub-*_mask.nii.gz"):
        found[f"sub-{parse_entities(path)['sub']}"] = path
    masks = []
    for subject in X.subjects:
        if subject.subject_id not in found:
            raise DataError(
                f"No predicted mask for {subject.subject_id} in {prediction_dir}."
            )
        data = np.asarray(nib.load(str(found[subject.subject_id])).dataobj)
        masks.append(SparseMask.from_dense(data > 0, X.voxel_volume_ml))
    return object_array(masks)


def score_predicted_masks(prediction_dir: Path | str, truth_dir: Path | str) -> dict:
    """Score a folder of predicted masks against a labelled split folder."""
    X = ImageSequence.from_folder(truth_dir)
    truths = load_masks(X)
    predictions = read_predicted_masks(prediction_dir, X)
    return {score.name: score(truths, predictions) for score in atlas_score_types()}


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``atlas-ramp export``."""
    parser = argparse.ArgumentParser(
        prog="atlas-ramp export",
        description="Write a submission's predictions as BIDS lesion masks.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--submission", type=Path, help="submissions/<name>: train it")
    source.add_argument(
        "--model", type=Path, help="a model pickled by ramp-test --pickle"
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=Path("data"),
        help="data folder whose train/ split trains --submission",
    )
    parser.add_argument(
        "--input",
        type=Path,
        default=Path("data/unlabelled"),
        help="folder of subjects to predict (default: data/unlabelled)",
    )
    parser.add_argument(
        "--output", type=Path, required=True, help="BIDS derivatives folder to write"
    )
    parser.add_argument("--force", action="store_true", help="replace --output")
    parser.add_argument(
        "--score-against",
        type=Path,
        default=None,
        help="a labelled split folder: print the scores of the masks",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.model is not None:
            model = load_trained_model(args.model)
        else:
            print(f"training {args.submission} on {args.data / 'train'} ...")
            model = train_submission(args.submission, args.data)
        X = ImageSequence.from_folder(args.input)
        written = export_predictions(model, X, args.output, force=args.force)
        print(f"wrote {len(written)} masks under {args.output}")
        if args.score_against is not None:
            scores = score_predicted_masks(args.output, args.score_against)
            for name, value in scores.items():
                print(f"{name}: {value:.4f}")
    except DataError as error:
        print(f"export: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
