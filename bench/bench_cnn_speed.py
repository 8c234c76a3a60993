"""Benchmark: how fast the small CNN's training is fed, and how fast it steps.

Run from the repository root on the default sample (``python download_data.py``)::

    python bench/bench_cnn_speed.py [--budget cpu|gpu] [--workers 0 1 2]
        [--subjects 8] [--patches 320] [--repeats 3]

It prints medians of ``--repeats`` runs:

1. the patch pipeline alone (``atlas_ramp.cnn.PatchDataset`` through a
   ``DataLoader``, the submission's own ``make_patch``): patches per second
   with 0, 1, 2 ... worker processes, and milliseconds per patch;
2. three parts of a patch against their plain alternative: the bias field on
   the patch by upsampling nearby cells (``bias_patch``) against
   ``map_coordinates`` on every voxel (``bias_on``, before issue 26), pooling
   the 1 mm window by strided sums against a copy and ``avg_pool3d``, and a
   cached volume read with cache paths resolved once against resolved at
   every read;
3. the network step alone (forward, backward, AdamW) on random batches of the
   budget's shape: steps per second;
4. end to end, one short epoch of ``fit`` per worker count: steps per second
   and the share of the training loop spent waiting for data; on CUDA also
   the GPU memory peak.

The CPU is whatever this machine offers (``atlas_ramp.machine.available_cpus``);
on a shared machine, run it with ``nice`` and read the figures as noisy.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rampwf.utils.importing import import_module_from_source  # noqa: E402

from atlas_ramp import cnn, volume_cache  # noqa: E402
from atlas_ramp.machine import available_cpus  # noqa: E402
from atlas_ramp.volumes import MaskSequence, load_split  # noqa: E402

ESTIMATOR = REPO / "submissions" / "small_cnn" / "estimator.py"


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "data")
    parser.add_argument("--budget", default="cpu", help="a key of BUDGETS")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--subjects", type=int, default=8, help="training subjects")
    parser.add_argument("--patches", type=int, default=320, help="patches a run")
    parser.add_argument("--steps", type=int, default=30, help="network steps a run")
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args()


def median_time(function, repeats):
    """Median seconds of ``repeats`` calls of ``function()``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def pipeline_rate(estimator, subjects, workers, n_patches, batch_size, repeats):
    """Patches per second of the DataLoader alone (worker start-up excluded)."""
    rates = []
    for repeat in range(repeats):
        dataset = cnn.PatchDataset(
            subjects, estimator.make_patch, n_patches + batch_size, seed=repeat
        )
        batches = iter(cnn.patch_loader(dataset, batch_size, workers, seed=repeat))
        next(batches)  # workers started, first batch out
        start = time.perf_counter()
        for _ in batches:
            pass
        rates.append(n_patches / (time.perf_counter() - start))
    return statistics.median(rates)


def part_costs(subjects, repeats, n=200):
    """Milliseconds per patch: bias field, pooling and volume read, new and plain."""
    rng = np.random.default_rng(0)
    log_bias = subjects.log_biases[0]
    corners = [rng.integers(0, np.array(subjects.shape) - 16) for _ in range(n)]
    sides = (16, 16, 16)

    def new_bias():
        for corner in corners:
            cnn.bias_patch(log_bias, corner, sides)

    def plain_bias():
        for corner in corners:
            grid = np.indices(sides) + np.reshape(corner, (3, 1, 1, 1))
            cnn.bias_on(log_bias, grid)

    factor = subjects.factor
    file = subjects.mapped_files[0]
    volume = np.memmap(**file) if file else subjects.X[0]
    windows = [
        tuple(slice(c * factor, (c + 16) * factor) for c in corner)
        for corner in corners
    ]

    def new_pooling():
        for window in windows:
            cnn.downsample(volume[window], factor)

    def plain_pooling():
        for window in windows:
            copy = torch.from_numpy(np.ascontiguousarray(volume[window], np.float32))
            torch.nn.functional.avg_pool3d(copy[None, None], factor, ceil_mode=True)

    def read_cached():
        for i in range(n):
            subjects.X[i % len(subjects)]

    def read_resolving():
        for i in range(n):
            volume_cache._resolved_absolute.cache_clear()
            subjects.X[i % len(subjects)]

    return {
        name: 1e3 * median_time(function, repeats) / n
        for name, function in (
            ("bias_patch (separable interpolation)", new_bias),
            ("bias_on (map_coordinates, before)", plain_bias),
            ("pooling a window (strided sums)", new_pooling),
            ("pooling a window (copy + avg_pool3d, before)", plain_pooling),
            ("cached volume read, paths resolved once", read_cached),
            ("cached volume read, resolved every read (before)", read_resolving),
        )
    }


def network_step_rate(estimator, device, batch_size, steps, repeats):
    """Steps per second of forward + backward + AdamW on random batches."""
    network = estimator.build_network().to(device, memory_format=torch.channels_last_3d)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3)
    channels = 1 + estimator.mirror_channel + estimator.template_channel
    size = estimator.patch_size
    images = torch.randn(batch_size, channels, size, size, size, device=device)
    images = cnn.channels_last(images)
    targets = (torch.rand(batch_size, 1, size, size, size, device=device) > 0.9).float()
    bf16 = device.type == "cuda" and estimator.bf16_autocast

    def run():
        for _ in range(steps):
            with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                logits = network(images)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                logits.float(), targets
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    run()  # warm-up
    return steps / median_time(run, repeats)


def main():
    arguments = parse_arguments()
    module = import_module_from_source(str(ESTIMATOR), "estimator")
    settings = module.BUDGETS[arguments.budget]
    estimator = module.SmallUNet(**settings)
    device = cnn.pick_device(estimator.device)
    batch_size = (device.type == "cuda" and estimator.cuda_batch_size) or (
        estimator.batch_size
    )
    X, y = load_split(arguments.data, "train")
    X, y = X[: arguments.subjects], MaskSequence(y[: arguments.subjects])
    print(
        f"small_cnn {arguments.budget!r} budget on {device}; {available_cpus()} CPUs; "
        f"torch {torch.__version__}; {len(X)} subjects; batches of {batch_size}"
    )
    subjects = estimator.read_training_subjects(X, y)

    print("\n1. patch pipeline alone (DataLoader, make_patch):")
    rates = {}
    for workers in arguments.workers:
        rates[workers] = pipeline_rate(
            estimator,
            subjects,
            workers,
            arguments.patches,
            batch_size,
            arguments.repeats,
        )
        print(
            f"   {workers} workers: {rates[workers]:7.0f} patches/s "
            f"({1e3 / rates[workers]:.2f} ms a patch)"
        )
    if 1 in rates and 2 in rates:
        print(f"   2 workers / 1 worker: {rates[2] / rates[1]:.2f}x")

    print("\n2. parts of a patch, ms (median):")
    for name, ms in part_costs(subjects, arguments.repeats).items():
        print(f"   {name:50s} {ms:6.3f}")

    print("\n3. network step alone:")
    rate = network_step_rate(
        estimator, device, batch_size, arguments.steps, arguments.repeats
    )
    print(f"   {rate:.1f} steps/s ({rate * batch_size:.0f} patches/s)")

    print("\n4. end to end, one epoch of fit:")
    steps = max(4, arguments.patches // batch_size)
    for workers in arguments.workers:
        short = module.SmallUNet(
            **{
                **settings,
                "epochs": 1,
                "patches_per_epoch": steps * batch_size,
                "data_workers": workers,
                "n_calibration_subjects": 1,
                "flip_averaging": False,
            }
        )
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        short.fit(X, y)
        loop = short.epoch_seconds_[0]
        memory = ""
        if device.type == "cuda":
            memory = f", GPU peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GB"
        print(
            f"   {workers} workers: {steps / loop:.2f} steps/s, waiting for data "
            f"{100 * short.data_wait_s_ / loop:.0f}% of the loop{memory}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
