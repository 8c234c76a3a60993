"""The workflow: how ramp-workflow trains and runs a lesion-segmentation submission.

A submission is a folder ``submissions/<name>/`` with an ``estimator.py`` that
defines ``get_estimator()``. The object it returns must have

* ``fit(X, y)``: ``X`` is a lazy sequence of float32 3D T1w volumes
  (:class:`~atlas_ramp.volumes.ImageSequence`: ``len(X)``, ``X[i]``,
  ``X.subject_ids``, ``X.cohorts``, ``X.affine``, ``X.volume_shape``, and
  ``X.shape == (len(X), *X.volume_shape)``); ``y`` a lazy sequence of the
  matching boolean 3D lesion masks (:class:`~atlas_ramp.volumes.MaskSequence`);
* ``predict(X)``: boolean masks of shape ``X.shape``;
* optionally ``predict_proba(X)``: lesion probabilities in [0, 1], same shape.
  When present it is used (so that blending can average probabilities).

The workflow calls ``predict_proba``/``predict`` on small batches and turns each
result into sparse probabilities at once, so neither the submission nor the
workflow ever holds dense predictions for the whole set.

Who is to blame: anything the submission raises or returns wrong is a
:class:`SubmissionError` naming the submission. A bad input file found while the
submission reads ``X[i]`` (truncated, NaN...) is a
:class:`~atlas_ramp.bids.DataError` naming the file, even when the submission's
own code wrapped it in another exception.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
from rampwf.utils.importing import import_module_from_source

from ._io import object_array
from .bids import DataError
from .grids import check_same_grid
from .masks import SparseProba
from .volumes import ImageSequence, MaskSequence

#: Subjects per predict call: small, so that memory stays bounded.
PREDICT_BATCH_SIZE = 4
#: At most this many training subjects are predicted for the "train" score of a
#: CV fold (predicting all of them would double the cost of every fold).
MAX_TRAIN_SUBJECTS_SCORED = 8
#: Probabilities this far outside [0, 1] are rounding errors, clipped silently.
PROBABILITY_TOLERANCE = 1e-4


class SubmissionError(RuntimeError):
    """Something a submission did or returned breaks the estimator contract."""


def _data_error_in(error: BaseException) -> DataError | None:
    """The DataError behind ``error`` (itself, or its cause or context), if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, DataError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


@contextlib.contextmanager
def blame(where: str):
    """Turn what a submission's code raises into the right kind of error.

    A :class:`~atlas_ramp.bids.DataError` (a bad input file), raised directly or
    wrapped by the submission in an exception of its own, is the data's fault and
    passes through as it is; anything else becomes a :class:`SubmissionError`
    that starts with ``where`` (the submission, the method, the subjects).
    """
    try:
        yield
    except (SubmissionError, DataError):
        raise
    except Exception as error:
        data_error = _data_error_in(error)
        if data_error is not None:
            raise data_error from error
        raise SubmissionError(f"{where}: {type(error).__name__}: {error}") from error


class TrainedSubmission:
    """A fitted estimator, the submission it comes from, and its training grid.

    Parameters
    ----------
    name : str
        The submission's name.
    estimator : object
        The fitted estimator.
    volume_shape, affine : optional
        The grid it was trained on; predicting on another grid is refused.
    """

    def __init__(self, name: str, estimator, volume_shape=None, affine=None):
        self.name = name
        self.estimator = estimator
        self.volume_shape = volume_shape
        self.affine = affine

    def check_grid(self, X: ImageSequence) -> None:
        """Refuse data on another grid than the training data (a DataError)."""
        if getattr(self, "volume_shape", None) is None:
            return  # pickled by an older kit: grid unknown
        check_same_grid(
            (f"the training data of '{self.name}'", self.volume_shape, self.affine),
            (f"the data to predict ({X.subject_ids[0]} ...)", X.volume_shape, X.affine),
        )

    def __repr__(self) -> str:
        return f"TrainedSubmission({self.name!r}, {self.estimator!r})"


def _predict_function(submission: TrainedSubmission):
    estimator = submission.estimator
    if hasattr(estimator, "predict_proba"):
        return estimator.predict_proba, "predict_proba"
    if hasattr(estimator, "predict"):
        return estimator.predict, "predict"
    raise SubmissionError(
        f"Submission '{submission.name}': the estimator has neither predict_proba "
        "nor predict."
    )


def check_batch_output(output, X_batch: ImageSequence, submission_name: str, method):
    """Validate what a submission returned for a batch; return it as an array.

    Raises
    ------
    SubmissionError
        Naming the submission and the subject: wrong count or shape, wrong
        dtype, NaN, values outside [0, 1] by more than
        :data:`PROBABILITY_TOLERANCE` (closer ones are clipped).
    """
    ids = X_batch.subject_ids
    where = f"Submission '{submission_name}': {method}"
    try:
        output = np.asarray(output)
    except Exception as error:
        raise SubmissionError(
            f"{where} returned something that is not an array ({error})."
        ) from error
    expected = X_batch.shape
    if output.ndim != 4 or output.shape[0] != len(X_batch):
        raise SubmissionError(
            f"{where} returned shape {output.shape} for {len(X_batch)} subjects "
            f"({', '.join(ids)}); expected {expected}: one 3D volume per subject."
        )
    if output.shape != expected:
        raise SubmissionError(
            f"{where} returned volumes of shape {output.shape[1:]} for subject "
            f"{ids[0]}; expected {X_batch.volume_shape}, the input's volume shape."
        )
    if output.dtype != bool and not np.issubdtype(output.dtype, np.number):
        raise SubmissionError(
            f"{where} returned dtype {output.dtype} for subject {ids[0]}; expected "
            "bool or numbers in [0, 1]."
        )
    if output.dtype == bool:
        return output
    if np.issubdtype(output.dtype, np.complexfloating):
        raise SubmissionError(f"{where} returned complex values for subject {ids[0]}.")
    rounded_outside = False
    for position, volume in enumerate(output):
        if np.issubdtype(volume.dtype, np.floating) and np.isnan(volume).any():
            raise SubmissionError(
                f"{where} returned NaN for subject {ids[position]}; probabilities "
                "must be numbers in [0, 1]."
            )
        # In float64: float32 would round the tolerance itself.
        low, high = float(volume.min()), float(volume.max())
        if low < -PROBABILITY_TOLERANCE or high > 1 + PROBABILITY_TOLERANCE:
            # Ten significant digits: 1.0001 must not print as "1".
            raise SubmissionError(
                f"{where} returned values in [{low:.10g}, {high:.10g}] "
                f"for subject {ids[position]}; probabilities must lie in [0, 1] "
                f"(a rounding error of up to {PROBABILITY_TOLERANCE:g} is accepted)."
            )
        rounded_outside = rounded_outside or low < 0 or high > 1
    # A sigmoid then a trilinear upsampling can give 1.0000001: ordinary floating
    # point, not a broken submission. Clipped in a copy: the submission's array
    # stays as it is.
    return np.clip(output, 0, 1) if rounded_outside else output


def predict_sparse(
    submission: TrainedSubmission,
    X: ImageSequence,
    batch_size: int = PREDICT_BATCH_SIZE,
) -> list[SparseProba]:
    """Predict subjects in small batches, sparsifying each batch at once."""
    submission.check_grid(X)
    X = X.without_masks()  # the answers' paths stay with the workflow
    predict, method = _predict_function(submission)
    voxel_ml = X.voxel_volume_ml
    results = []
    for start in range(0, len(X), batch_size):
        X_batch = X[start : start + batch_size]
        with blame(
            f"Submission '{submission.name}': {method} failed on subjects "
            f"{', '.join(X_batch.subject_ids)}"
        ):
            output = predict(X_batch)
        output = check_batch_output(output, X_batch, submission.name, method)
        results.extend(SparseProba.from_dense(volume, voxel_ml) for volume in output)
        del output
    return results


def _subset_for_train_score(train_is, limit: int | None = None):
    limit = MAX_TRAIN_SUBJECTS_SCORED if limit is None else limit
    train_is = np.asarray(train_is)
    if train_is.size <= limit:
        return train_is
    # Evenly spaced, so the subset is deterministic and spans the cohorts.
    return train_is[np.linspace(0, train_is.size - 1, limit).round().astype(int)]


class LesionSegmentation:
    """ramp-workflow workflow for ``submissions/<name>/estimator.py``.

    Parameters
    ----------
    workflow_element_names : list of str
        The files a submission provides; ``["estimator"]``.
    """

    def __init__(self, workflow_element_names=("estimator",)):
        self.element_names = list(workflow_element_names)

    def train_submission(
        self, module_path, X, y, train_is=None, prev_trained_model=None
    ):
        """Import ``estimator.py``, build the estimator and fit it.

        Parameters
        ----------
        module_path : str
            ``submissions/<name>``.
        X : ImageSequence
        y : ndarray of SparseMask
        train_is : array of int, optional
            Training subjects of the fold; all when None.
        """
        name = os.path.basename(os.path.normpath(module_path))
        if train_is is None:
            train_is = np.arange(len(X))
        source = os.path.join(module_path, f"{self.element_names[0]}.py")
        if not os.path.exists(source):
            raise SubmissionError(
                f"Submission '{name}' has no {self.element_names[0]}.py in "
                f"{module_path}."
            )
        module = import_module_from_source(source, self.element_names[0])
        if not hasattr(module, "get_estimator"):
            raise SubmissionError(
                f"Submission '{name}': {source} defines no get_estimator() function."
            )
        estimator = module.get_estimator()
        X_train = X[train_is].without_masks()  # masks come as y only
        y_train = MaskSequence(y)[train_is]  # lazy: masks stay sparse
        with blame(
            f"Submission '{name}': fit failed on {len(X_train)} subjects "
            f"({''.join(X_train.subject_ids[:1])} ...)"
        ):
            estimator.fit(X_train, y_train)
        return TrainedSubmission(name, estimator, X.volume_shape, X.affine)

    def test_submission(self, trained_model, X, fold=None):
        """Predict what scoring needs, as an object array aligned with ``X``.

        Parameters
        ----------
        trained_model : TrainedSubmission
        X : ImageSequence
        fold : (train_is, valid_is) or None
            None: predict every subject. A CV fold: predict the validation
            subjects and a small, fixed subset of the training subjects; the
            others stay None and are not scored.
        """
        if fold is None:
            wanted = np.arange(len(X))
        else:
            train_is, valid_is = fold
            wanted = np.union1d(np.asarray(valid_is), _subset_for_train_score(train_is))
        y_pred = object_array([None] * len(X))
        predictions = predict_sparse(trained_model, X[wanted])
        for position, prediction in zip(wanted, predictions, strict=True):
            y_pred[position] = prediction
        return y_pred
