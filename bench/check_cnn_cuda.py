"""One-off check of the small CNN submission on a CUDA machine.

Run from the repository root, offline::

    python bench/check_cnn_cuda.py            # the check (about 2-3 minutes)
    python bench/check_cnn_cuda.py --quick    # a tiny CPU-only dry run
    python bench/check_cnn_cuda.py --budget gpu  # the wider "gpu" network

It builds its own small synthetic sample at 2 mm (``build_sample(...,
downsample=2)``: the grid the submission works on) in a temporary folder, then
trains ``submissions/small_cnn`` with the same budget on CUDA and on CPU and
prints: the device, seconds per epoch on each, the peak GPU memory, Dice on a
few held-out subjects, and how close CUDA and CPU results are:

* the *same* weights (the CPU-trained model) predicting on CUDA and on CPU
  should agree to about 1e-3 in probability (cuDNN may use TF32 on recent GPUs);
* the CUDA-trained and CPU-trained models see the same patches in the same
  order from the same initial weights, so they differ only by floating-point
  rounding, which grows over training: expect similar, not identical, Dice.

Without CUDA it says so and runs the CPU half only.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rampwf.utils.importing import import_module_from_source  # noqa: E402

from atlas_ramp.masks import SparseMask  # noqa: E402
from atlas_ramp.scores import dice  # noqa: E402
from atlas_ramp.synthetic import build_sample  # noqa: E402
from atlas_ramp.volumes import MaskSequence, load_split  # noqa: E402

ESTIMATOR = REPO / "submissions" / "small_cnn" / "estimator.py"


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=10)
    parser.add_argument("--n-test", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--patches-per-epoch", type=int, default=32)
    parser.add_argument(
        "--budget",
        choices=("cpu", "gpu"),
        default="cpu",
        help="the submission's other settings (BUDGETS): 'gpu' is wider",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny budget and data: a dry run"
    )
    arguments = parser.parse_args()
    if arguments.quick:
        arguments.n_train, arguments.n_test = 4, 2
        arguments.epochs, arguments.patches_per_epoch = 1, 8
    return arguments


def train(module, device, X, y, arguments):
    """Fit the submission on ``device``; return it, seconds per epoch, peak MiB."""
    # The same settings on both devices, but the training length.
    settings = dict(module.BUDGETS[arguments.budget])
    settings.update(
        epochs=arguments.epochs,
        patches_per_epoch=arguments.patches_per_epoch,
        device=device,
    )
    estimator = module.SmallUNet(**settings)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    start = time.perf_counter()
    estimator.fit(X, y)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak_mib = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else 0.0
    return estimator, seconds / arguments.epochs, peak_mib


def predict(estimator, device, X):
    """Probabilities of ``X`` predicted on ``device``, and seconds per subject."""
    estimator.device = device
    start = time.perf_counter()
    probabilities = estimator.predict_proba(X)
    if device == "cuda":
        torch.cuda.synchronize()
    return probabilities, (time.perf_counter() - start) / len(X)


def mean_dice(probabilities, masks):
    return float(
        np.mean(
            [
                dice(true, SparseMask.from_dense(p >= 0.5))
                for p, true in zip(probabilities, masks, strict=True)
            ]
        )
    )


def main():
    arguments = parse_arguments()
    has_cuda = torch.cuda.is_available()
    print(f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}")
    if has_cuda:
        print(
            f"CUDA device: {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
        )
    else:
        print("no CUDA: torch.cuda.is_available() is False; running the CPU half only")

    module = import_module_from_source(str(ESTIMATOR), "estimator")
    # The CPU timing uses all cores of this machine, not the laptop's 2.
    devices = ["cuda", "cpu"] if has_cuda else ["cpu"]

    with tempfile.TemporaryDirectory(prefix="check_cnn_cuda_") as folder:
        start = time.perf_counter()
        build_sample(
            Path(folder),
            n_train=arguments.n_train,
            n_test=arguments.n_test,
            n_cohorts=3,
            seed=0,
            downsample=2,
            progress=False,
        )
        X, y = load_split(folder, "train")
        X_test, y_test = load_split(folder, "test")
        print(
            f"data: {len(X)} train + {len(X_test)} held-out subjects, shape "
            f"{X.volume_shape} at 2 mm, built in {time.perf_counter() - start:.0f} s"
        )

        results = {}
        for device in devices:
            print(f"\n--- training on {device} ---", flush=True)
            estimator, epoch_seconds, peak_mib = train(
                module, device, X, MaskSequence(y), arguments
            )
            probabilities, predict_seconds = predict(estimator, device, X_test)
            results[device] = dict(
                estimator=estimator,
                epoch_seconds=epoch_seconds,
                peak_mib=peak_mib,
                probabilities=probabilities,
                predict_seconds=predict_seconds,
                dice=mean_dice(probabilities, y_test),
            )

        print("\n=== small_cnn on CUDA vs CPU ===")
        print(
            f"budget: {arguments.epochs} epochs x {arguments.patches_per_epoch} "
            f"patches, {len(X)} training subjects, "
            f"{results['cpu']['estimator'].n_parameters_:,} parameters "
            f"({arguments.budget} budget's network)"
        )
        header = ("device", "s/epoch", "s/subject", "dice", "peak MiB")
        print(f"{header[0]:8s}" + "".join(f"{h:>10s}" for h in header[1:]))
        for device, result in results.items():
            print(
                f"{device:8s}{result['epoch_seconds']:10.2f}"
                f"{result['predict_seconds']:10.2f}{result['dice']:10.3f}"
                f"{result['peak_mib']:10.0f}"
            )
        if not has_cuda:
            print("no CUDA: nothing to compare; the CPU half ran fine.")
            return 0

        cuda, cpu = results["cuda"], results["cpu"]
        speed_up = cpu["epoch_seconds"] / cuda["epoch_seconds"]
        print(f"speed-up of training on CUDA: {speed_up:.1f}x")
        # Same weights, two devices: only arithmetic differs.
        same_weights, _ = predict(cpu["estimator"], "cuda", X_test)
        gap = float(np.abs(same_weights - cpu["probabilities"]).max())
        agreement = mean_dice(
            same_weights,
            [SparseMask.from_dense(p >= 0.5) for p in cpu["probabilities"]],
        )
        print(
            f"same weights, CUDA vs CPU prediction: max |dp| = {gap:.2e}, "
            f"mask Dice between them = {agreement:.4f}"
        )
        # Two trainings: same patches, same start, different rounding.
        trained_gap = abs(cuda["dice"] - cpu["dice"])
        print(
            f"CUDA-trained vs CPU-trained Dice: {cuda['dice']:.3f} vs {cpu['dice']:.3f}"
        )
        close = gap < 1e-2 and agreement > 0.99 and trained_gap < 0.15
        print("RESULT:", "CUDA and CPU agree" if close else "CUDA and CPU DIFFER: look")
        return 0 if close else 1


if __name__ == "__main__":
    raise SystemExit(main())
