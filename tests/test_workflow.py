"""The workflow trains submissions and rejects bad predictions with clear errors."""

import textwrap

import numpy as np
import pytest

from atlas_ramp.bids import anat_dir
from atlas_ramp.volumes import load_split
from atlas_ramp.workflow import LesionSegmentation, SubmissionError

from .helpers import SHAPE, write_subject

IDS = [f"sub-r00{c}s00{i}" for c in (1, 2) for i in (1, 2, 3)]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    for seed, subject_id in enumerate(IDS):
        write_subject(anat_dir(root / "train", subject_id), subject_id, seed=seed)
    return load_split(root, "train")


def make_submission(tmp_path, body, name="my_submission"):
    folder = tmp_path / name
    folder.mkdir()
    source = textwrap.dedent(
        """
        import numpy as np

        class Estimator:
            def fit(self, X, y):
                self.n_ = len(X)
                self.first_mask_ = y[0]
                return self
        {body}

        def get_estimator():
            return Estimator()
        """
    ).format(body=textwrap.indent(textwrap.dedent(body), "    "))
    (folder / "estimator.py").write_text(source)
    return str(folder)


GOOD_PREDICT = """
def predict_proba(self, X):
    return np.full(X.shape, 0.75, dtype=np.float32)
"""


def test_fit_receives_lazy_images_and_boolean_masks(tmp_path, tiny_data):
    X, y = tiny_data
    workflow = LesionSegmentation()
    trained = workflow.train_submission(
        make_submission(tmp_path, GOOD_PREDICT), X, y, train_is=np.array([0, 2, 4])
    )
    assert trained.name == "my_submission"
    assert trained.estimator.n_ == 3
    assert trained.estimator.first_mask_.dtype == bool
    assert trained.estimator.first_mask_.shape == SHAPE


def test_cv_fold_predicts_validation_and_a_bounded_training_subset(
    tmp_path, tiny_data, monkeypatch
):
    import atlas_ramp.workflow as workflow_module

    monkeypatch.setattr(workflow_module, "MAX_TRAIN_SUBJECTS_SCORED", 2)
    X, y = tiny_data
    workflow = LesionSegmentation()
    train_is, valid_is = np.array([0, 1, 2, 3]), np.array([4, 5])
    trained = workflow.train_submission(
        make_submission(tmp_path, GOOD_PREDICT), X, y, train_is
    )
    y_pred = workflow.test_submission(trained, X, (train_is, valid_is))
    predicted = [i for i, p in enumerate(y_pred) if p is not None]
    assert len(y_pred) == len(X)
    assert set(valid_is) <= set(predicted) and len(predicted) == 4
    everything = workflow.test_submission(trained, X, None)
    assert all(p is not None for p in everything)
    assert everything[0].binarize().n_voxels == np.prod(SHAPE)


@pytest.mark.parametrize(
    ("predict", "message"),
    [
        (
            "def predict(self, X):\n"
            "    return np.zeros((len(X) + 1, *X.volume_shape), bool)",
            r"returned shape .* for \d subjects \(sub-r001s001",
        ),
        (
            "def predict(self, X):\n    return np.zeros((len(X), 3, 3, 3), bool)",
            r"volumes of shape \(3, 3, 3\) for subject sub-r001s001",
        ),
        (
            "def predict_proba(self, X):\n"
            "    out = np.zeros(X.shape)\n"
            "    out[-1, 0, 0, 0] = np.nan\n"
            "    return out",
            r"NaN for subject sub-r002s001",
        ),
        (
            "def predict_proba(self, X):\n    return np.full(X.shape, 2.0)",
            r"values in \[2, 2\] for subject sub-r001s001",
        ),
        (
            "def predict(self, X):\n    return np.full(X.shape, 'a')",
            r"dtype <U1",
        ),
        (
            "def predict(self, X):\n    raise KeyError('boom')",
            r"predict failed on subjects sub-r001s001.*KeyError",
        ),
    ],
    ids=["count", "shape", "nan", "range", "dtype", "exception"],
)
def test_bad_predictions_name_submission_and_subject(
    tmp_path, tiny_data, predict, message
):
    X, y = tiny_data
    workflow = LesionSegmentation()
    trained = workflow.train_submission(make_submission(tmp_path, predict), X, y)
    with pytest.raises(SubmissionError, match="Submission 'my_submission'") as error:
        workflow.test_submission(trained, X, None)
    assert error.match(message)


def test_exception_in_fit_names_the_submission(tmp_path, tiny_data):
    X, y = tiny_data
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "estimator.py").write_text(
        "class E:\n"
        "    def fit(self, X, y):\n"
        "        raise ValueError('bad idea')\n"
        "def get_estimator():\n"
        "    return E()\n"
    )
    with pytest.raises(SubmissionError, match="'broken': fit failed.*bad idea"):
        LesionSegmentation().train_submission(str(folder), X, y)


def test_missing_get_estimator(tmp_path, tiny_data):
    X, y = tiny_data
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "estimator.py").write_text("x = 1\n")
    with pytest.raises(SubmissionError, match="no get_estimator"):
        LesionSegmentation().train_submission(str(folder), X, y)
