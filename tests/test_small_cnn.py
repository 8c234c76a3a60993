"""The small 3D U-Net submission (``submissions/small_cnn``).

Two kinds of checks, both on the small 4 mm synthetic sample:

* the real ``ramp-test --submission small_cnn --quick-test`` command, run as a
  separate process in a temporary kit folder, as a student would run it;
* in process, with a tiny training budget: probabilities of the right shape and
  range, a repeatable CPU run, and a fitted model that survives pickling.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cloudpickle
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rampwf.utils.importing import import_module_from_source  # noqa: E402

from atlas_ramp.volumes import MaskSequence, load_split  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SUBMISSION = REPO / "submissions" / "small_cnn"


def ramp_command(name):
    beside_python = Path(sys.executable).parent / name
    found = beside_python if beside_python.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed")
    return str(found)


@pytest.mark.slow
def test_ramp_test_quick_test_runs(small_sample, tmp_path):
    kit = tmp_path / "kit"
    kit.mkdir()
    shutil.copy(REPO / "problem.py", kit / "problem.py")
    shutil.copytree(SUBMISSION, kit / "submissions" / "small_cnn")
    (kit / "data").symlink_to(small_sample, target_is_directory=True)
    env = dict(os.environ, RAMP_TEST_MODE="1")

    result = subprocess.run(
        [ramp_command("ramp-test"), "--submission", "small_cnn", "--quick-test"],
        cwd=kit,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    output = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)  # drop the colours
    assert "small_cnn: epoch  1/" in output  # the per-epoch progress line
    assert "Bagged scores" in output
    bagged = output.split("Bagged scores")[1]
    header = next(line for line in bagged.splitlines() if "dice" in line)
    assert header.split()[:2] == ["score", "dice"]
    test_row = next(
        line for line in bagged.splitlines() if line.strip().startswith("test")
    )
    assert 0.0 <= float(test_row.split()[1]) <= 1.0


# --- In process, tiny budget ----------------------------------------------------
def tiny_estimator_module():
    """A fresh copy of the submission's module, with a tiny training budget."""
    module = import_module_from_source(str(SUBMISSION / "estimator.py"), "estimator")
    module.EPOCHS = 1
    module.PATCHES_PER_EPOCH = 4
    module.BATCH_SIZE = 2
    module.PATCH_SIZE = 32
    return module


@pytest.fixture(scope="module")
def small_split(small_sample):
    X, y = load_split(small_sample, "train")
    return X[:6], MaskSequence(y[:6]), X[6:8]


@pytest.fixture(scope="module")
def fitted(small_split):
    X_train, y_train, X_new = small_split
    estimator = tiny_estimator_module().get_estimator().fit(X_train, y_train)
    return estimator, estimator.predict_proba(X_new)


@pytest.mark.slow
def test_predict_proba_shape_range_and_mask(fitted, small_split):
    estimator, probabilities = fitted
    X_new = small_split[2]
    assert probabilities.shape == (len(X_new), *X_new.shape)
    assert np.issubdtype(probabilities.dtype, np.floating)
    assert np.isfinite(probabilities).all()
    assert probabilities.min() >= 0.0 and probabilities.max() <= 1.0
    masks = estimator.predict(X_new)
    assert masks.dtype == bool
    np.testing.assert_array_equal(masks, probabilities >= 0.5)


@pytest.mark.slow
def test_cpu_run_is_repeatable(fitted, small_split):
    X_train, y_train, X_new = small_split
    _, probabilities = fitted
    again = tiny_estimator_module().get_estimator().fit(X_train, y_train)
    np.testing.assert_allclose(again.predict_proba(X_new), probabilities, atol=1e-6)


@pytest.mark.slow
def test_fitted_model_survives_cloudpickle(fitted, small_split):
    estimator, probabilities = fitted
    restored = cloudpickle.loads(cloudpickle.dumps(estimator))
    assert "_network" not in restored.__dict__  # weights travel as a state dict
    assert all(tensor.device.type == "cpu" for tensor in restored.state_dict_.values())
    np.testing.assert_allclose(
        restored.predict_proba(small_split[2]), probabilities, atol=1e-6
    )
