"""One prepared command: the small CNN's "gpu" budget, fit once on a GPU machine.

Run from the repository root, offline (under 8 minutes on one H200 is the aim)::

    python bench/check_cnn_cuda.py                # the check
    python bench/check_cnn_cuda.py --dry-run      # a tiny run of the same code (CPU)

It builds the default synthetic sample (1 mm; ``python download_data.py``) into
``data/`` when ``data/train`` is missing, fits ``submissions/small_cnn`` with
``BUDGETS["gpu"]`` once on all of ``data/train`` (CUDA when present, else CPU)
and prints:

* the fit time, seconds per epoch, the GPU memory peak, the data workers and
  the share of the training loop spent waiting for patches;
* Dice and lesion-wise F1 on ``data/test`` and on ``data/generalizability``
  (cohorts never seen in training), the subjects' means as the challenge
  scores them.

The targets (issue 26): fit in at most 90 s on one H200 with at most 20% of the
step time waiting for data; unseen Dice and lesion F1 of at least 0.70.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rampwf.utils.importing import import_module_from_source  # noqa: E402

from atlas_ramp.masks import SparseMask  # noqa: E402
from atlas_ramp.scores import dice, lesion_f1  # noqa: E402
from atlas_ramp.volumes import load_split  # noqa: E402

ESTIMATOR = REPO / "submissions" / "small_cnn" / "estimator.py"


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "data")
    parser.add_argument("--budget", default="gpu", help="a key of BUDGETS")
    parser.add_argument("--epochs", type=int, help="override the budget's epochs")
    parser.add_argument("--workers", type=int, help="data workers (default: auto)")
    parser.add_argument("--batch-size", type=int, help="CUDA batch size override")
    parser.add_argument("--no-bf16", action="store_true", help="float32 on CUDA")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="1 epoch of 16 patches on 4 subjects, 2 scored per folder",
    )
    return parser.parse_args()


def ensure_sample(data):
    """Build the default synthetic sample into ``data`` when it is missing."""
    if (data / "train").is_dir() and (data / "generalizability").is_dir():
        return
    from atlas_ramp.download import main as download

    start = time.perf_counter()
    if download(["--output", str(data), "--quiet"]) != 0:
        raise SystemExit(f"could not build the synthetic sample in {data}")
    print(f"built the default sample in {time.perf_counter() - start:.0f} s")


def scores(estimator, data, split, limit=None):
    """Mean Dice and lesion F1 of ``estimator`` on ``data/split``; seconds a subject."""
    X, y = load_split(data, split)
    X, y = X[:limit], y[:limit]
    dices, f1s = [], []
    start = time.perf_counter()
    for first in range(0, len(X), 4):
        chunk = np.arange(first, min(first + 4, len(X)))
        for mask, truth in zip(estimator.predict(X[chunk]), y[chunk], strict=True):
            predicted = SparseMask.from_dense(mask)
            dices.append(dice(truth, predicted))
            f1s.append(lesion_f1(truth, predicted))
    seconds = (time.perf_counter() - start) / len(X)
    return float(np.mean(dices)), float(np.mean(f1s)), seconds, len(X)


def main():
    arguments = parse_arguments()
    cuda = torch.cuda.is_available()
    name = torch.cuda.get_device_name(0) if cuda else "no CUDA: CPU"
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}; device: {name}; CPU threads {threads}")
    ensure_sample(arguments.data)
    module = import_module_from_source(str(ESTIMATOR), "estimator")
    settings = dict(module.BUDGETS[arguments.budget], seed=arguments.seed)
    if arguments.epochs:
        settings["epochs"] = arguments.epochs
    if arguments.workers is not None:
        settings["data_workers"] = arguments.workers
    if arguments.batch_size:
        settings["cuda_batch_size"] = arguments.batch_size
    if arguments.no_bf16:
        settings["bf16_autocast"] = False
    X, y = load_split(arguments.data, "train")
    limit = None
    if arguments.dry_run:
        settings.update(epochs=1, patches_per_epoch=16, n_calibration_subjects=1)
        X, y, limit = X[:4], y[:4], 2
    estimator = module.SmallUNet(**settings)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    estimator.fit(X, y)
    fit_seconds = time.perf_counter() - start
    loop_seconds = sum(estimator.epoch_seconds_)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    print(
        f"\n=== small_cnn, {arguments.budget!r} budget, {len(X)} training subjects ==="
    )
    print(f"settings: {settings}")
    print(
        f"fit {fit_seconds:.0f} s; {np.mean(estimator.epoch_seconds_):.2f} s an epoch "
        f"({estimator.epochs} epochs); GPU peak {peak:.2f} GB; "
        f"{estimator.data_workers_} data workers, waiting for data "
        f"{100 * estimator.data_wait_s_ / loop_seconds:.0f}% of the training loop"
    )
    for split in ("test", "generalizability"):
        mean_dice, mean_f1, seconds, count = scores(
            estimator, arguments.data, split, limit
        )
        print(
            f"data/{split}: Dice {mean_dice:.3f}, lesion F1 {mean_f1:.3f} "
            f"({count} subjects, {seconds:.1f} s a subject to predict)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
