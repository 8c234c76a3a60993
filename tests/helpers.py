"""Helpers that several test modules share: tiny volumes and the real RAMP CLIs.

Test modules import these from here, never from each other.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from atlas_ramp.bids import anat_dir, mask_name, t1w_name

# ---------------------------------------------------------------- tiny volumes

SHAPE = (9, 10, 8)
AFFINE = np.diag([4.0, 4.0, 4.0, 1.0])


def write_subject(folder, subject_id, shape=SHAPE, affine=AFFINE, mask=True, seed=0):
    """Write a tiny T1w (and mask) into ``folder``; returns (t1w, mask) paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    image = rng.random(shape).astype(np.float32)
    t1w = folder / t1w_name(subject_id)
    nib.save(nib.Nifti1Image(image, affine), t1w)
    mask_path = None
    if mask is not False:
        values = np.zeros(shape, np.uint8) if mask is True else mask
        if mask is True:
            values[2:4, 2:4, 2:4] = 1
        mask_path = folder / mask_name(subject_id)
        nib.save(nib.Nifti1Image(values, affine), mask_path)
    return t1w, mask_path


def make_split(root, ids=("sub-r001s001", "sub-r001s002", "sub-r002s001")):
    for seed, subject_id in enumerate(ids):
        write_subject(anat_dir(root, subject_id), subject_id, seed=seed)
    return root


# ------------------------------------------------- the real ramp-workflow CLIs

REPO = Path(__file__).resolve().parents[1]


def ramp_command(name):
    beside_python = Path(sys.executable).parent / name
    found = beside_python if beside_python.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed")
    return str(found)


def make_kit(folder: Path, data: Path, submissions=("starting_kit",)) -> Path:
    """A kit folder: problem.py, chosen submissions, and a link to the data."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "problem.py", folder / "problem.py")
    for name in submissions:
        shutil.copytree(
            REPO / "submissions" / name,
            folder / "submissions" / name,
            # Left over from a local run, not part of the submission.
            ignore=shutil.ignore_patterns("training_output", "__pycache__"),
        )
    (folder / "data").symlink_to(data, target_is_directory=True)
    return folder


def run(kit: Path, *args, quick=False) -> str:
    """Run a command in the kit (quick mode or not); its output, without colours."""
    env = dict(os.environ)
    env.pop("RAMP_TEST_MODE", None)
    if quick:
        env["RAMP_TEST_MODE"] = "1"
    result = subprocess.run(
        list(args), cwd=kit, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)


def quick_test(folder: Path, data: Path, submission: str) -> str:
    """``ramp-test --submission <submission> --quick-test`` in a new kit; its output."""
    kit = make_kit(folder, data, [submission])
    return run(
        kit,
        ramp_command("ramp-test"),
        "--submission",
        submission,
        "--quick-test",
        quick=True,
    )


def bagged_test_dice(output: str) -> float:
    """The bagged test Dice printed by ``ramp-test`` (first score column)."""
    bagged = output.split("Bagged scores")[1]
    header = next(line for line in bagged.splitlines() if "dice" in line)
    assert header.split()[:2] == ["score", "dice"]
    test_row = next(
        line for line in bagged.splitlines() if line.strip().startswith("test")
    )
    return float(test_row.split()[1])


def bagged_scores(kit: Path, submission: str) -> pd.DataFrame:
    path = kit / "submissions" / submission / "training_output" / "bagged_scores.csv"
    scores = pd.read_csv(path, index_col=[0, 1])
    last_bag = scores.index.get_level_values("n_bag").max()
    return scores.xs(last_bag, level="n_bag")


def rewrite_nifti(path, data=None, affine=None):
    """Rewrite a NIfTI file with new data and/or affine (the rest as it was)."""
    image = nib.load(str(path))
    data = np.asarray(image.dataobj) if data is None else data
    affine = image.affine if affine is None else affine
    nib.save(nib.Nifti1Image(data, affine), path)


def flipped_x(path):
    """Store ``path`` flipped on x, its affine adjusted: same brain, LAS on disk."""
    image = nib.load(str(path))
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = image.shape[0] - 1
    rewrite_nifti(path, np.asarray(image.dataobj)[::-1], image.affine @ flip)
