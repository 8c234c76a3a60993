"""Benchmark: scoring 655 ATLAS-sized subjects, sparse versus dense.

Builds 655 synthetic ground-truth masks on the 197 x 233 x 189 grid with ATLAS-like
lesion volumes (log-normal, median about 5 mL, 0.01 to 500 mL, 1 to 4 lesions) and
predictions that disagree with them (shifted borders, misses, false positives),
then times the kit's four scores on the sparse representation, on one core, and
compares with a plain dense implementation (numpy + scipy.ndimage.label) in the
same run. Dense scoring of all 655 subjects takes minutes, so it is timed on a
subset and scaled up (the per-subject cost does not depend on the others).

Run: ``python bench/bench_scores.py [--subjects 655] [--dense-subjects 40]``.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from atlas_ramp.masks import SparseMask, SparseProba  # noqa: E402
from atlas_ramp.predictions import Predictions, object_array  # noqa: E402
from atlas_ramp.scores import atlas_score_types  # noqa: E402

SHAPE = (197, 233, 189)
VOXEL_ML = 0.001


def blob(rng, volume_voxels, centre):
    """Flat indices of an irregular (lumpy ellipsoid) blob of ``volume_voxels``."""
    radius = max((3 * volume_voxels / (4 * np.pi)) ** (1 / 3), 0.6)
    half = int(np.ceil(radius * 1.4)) + 1
    axes = rng.uniform(0.75, 1.25, 3)
    grid = np.mgrid[-half : half + 1, -half : half + 1, -half : half + 1].astype(float)
    distance = np.sqrt(
        sum((g / (a * radius)) ** 2 for g, a in zip(grid, axes, strict=True))
    )
    # Smooth, low-frequency bumps on the surface instead of a perfect ellipsoid.
    phase = rng.uniform(0, 2 * np.pi, 3)
    bumps = 0.1 * sum(
        np.sin(2.5 * g / (radius + 1) + p) for g, p in zip(grid, phase, strict=True)
    )
    inside = distance + bumps < 1.0
    inside[half, half, half] = True
    coords = [
        np.clip(c - half + centre[k], 0, SHAPE[k] - 1)
        for k, c in enumerate(np.nonzero(inside))
    ]
    return np.unique(np.ravel_multi_index(coords, SHAPE))


def random_centre(rng):
    return rng.integers(30, np.array(SHAPE) - 30)


def make_subject(rng):
    """Ground truth and an imperfect prediction, as sparse masks."""
    n_lesions = rng.choice([1, 2, 3, 4], p=[0.62, 0.2, 0.1, 0.08])
    total_ml = float(np.clip(rng.lognormal(np.log(5.0), 1.6), 0.01, 500))
    shares = rng.dirichlet(np.ones(n_lesions))
    truth_parts, prediction_parts = [], []
    for share in shares:
        voxels = max(share * total_ml / VOXEL_ML, 1)
        centre = random_centre(rng)
        truth_parts.append(blob(rng, voxels, centre))
        if rng.random() < 0.85:  # found, with a shifted, resized border
            shift = rng.integers(-2, 3, 3)
            prediction_parts.append(
                blob(rng, voxels * rng.uniform(0.6, 1.4), centre + shift)
            )
    for _ in range(rng.integers(0, 3)):  # false positives
        prediction_parts.append(
            blob(rng, rng.lognormal(np.log(300), 1.0), random_centre(rng))
        )
    truth = np.unique(np.concatenate(truth_parts))
    prediction = np.unique(np.concatenate(prediction_parts or [np.zeros(0, np.int64)]))
    return (
        SparseMask(truth, SHAPE, VOXEL_ML),
        SparseProba(
            prediction, np.full(prediction.size, 255, np.uint8), SHAPE, VOXEL_ML
        ),
    )


def dense_scores(true, pred):
    """The four scores on dense boolean volumes (the plain alternative)."""
    total = true.sum() + pred.sum()
    dice = 1.0 if total == 0 else 2 * np.logical_and(true, pred).sum() / total
    true_labels, n_true = ndimage.label(true)
    pred_labels, n_pred = ndimage.label(pred)
    detected = np.unique(true_labels[pred & (true_labels > 0)]).size
    matched = np.unique(pred_labels[true & (pred_labels > 0)]).size
    fp, fn = n_pred - matched, n_true - detected
    f1 = 1.0 if detected + fp + fn == 0 else 2 * detected / (2 * detected + fp + fn)
    volume = abs(int(pred.sum()) - int(true.sum())) * VOXEL_ML
    return dice, f1, volume, abs(n_pred - n_true)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=655)
    parser.add_argument("--dense-subjects", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    pairs = [make_subject(rng) for _ in range(args.subjects)]
    print(f"built {args.subjects} subjects in {time.perf_counter() - t0:.1f} s")
    truths = object_array(t for t, _ in pairs)
    volumes = np.array([t.volume_ml for t in truths])
    print(
        f"lesion volume: median {np.median(volumes):.1f} mL, "
        f"min {volumes.min():.3f} mL, max {volumes.max():.0f} mL"
    )

    # Sparse: time all four scores through ramp's Predictions, fresh objects each
    # repeat so that no cached lesion labels carry over.
    sparse_times = []
    for _ in range(args.repeats):
        y_true = Predictions(
            y_true=object_array(SparseMask(t.indices, SHAPE, VOXEL_ML) for t in truths)
        )
        y_pred = Predictions(
            y_pred=object_array(
                SparseProba(p.indices, p.levels, SHAPE, VOXEL_ML) for _, p in pairs
            )
        )
        start = time.perf_counter()
        values = [score.score_function(y_true, y_pred) for score in atlas_score_types()]
        sparse_times.append(time.perf_counter() - start)
    sparse_median = statistics.median(sparse_times)

    # Dense: the same scores on dense volumes, on a subset.
    subset = pairs[: args.dense_subjects]
    dense_times = []
    dense_values = []
    for truth, prediction in subset:
        true_dense, pred_dense = truth.to_dense(), prediction.binarize().to_dense()
        start = time.perf_counter()
        dense_values.append(dense_scores(true_dense, pred_dense))
        dense_times.append(time.perf_counter() - start)
    dense_per_subject = statistics.median(dense_times)

    # Check the two agree on the subset.
    sparse_subset = [
        score.score_function(
            Predictions(y_true=object_array(t for t, _ in subset)),
            Predictions(y_pred=object_array(p for _, p in subset)),
        )
        for score in atlas_score_types()
    ]
    dense_subset = np.mean(dense_values, axis=0)
    assert np.allclose(sparse_subset, dense_subset), (sparse_subset, dense_subset)

    truth_bytes = sum(t.nbytes for t in truths)
    pred_bytes = sum(p.nbytes for _, p in pairs)
    dense_bytes = 2 * args.subjects * int(np.prod(SHAPE))  # uint8 truth + prediction
    names = [score.name for score in atlas_score_types()]
    print()
    print(
        f"scores over {args.subjects} subjects: "
        + ", ".join(f"{n}={v:.3f}" for n, v in zip(names, values, strict=True))
    )
    print()
    print(
        "| implementation | all 4 scores, 655 subjects, 1 core "
        "| memory, truth + predictions |"
    )
    print("|---|---|---|")
    print(
        f"| sparse (kit) | {sparse_median:.2f} s (median of {args.repeats}) "
        f"| {(truth_bytes + pred_bytes) / 1e6:.1f} MB |"
    )
    print(
        "| dense uint8 + scipy.ndimage.label "
        f"| {dense_per_subject * args.subjects:.0f} s "
        f"(median {dense_per_subject * 1000:.0f} ms/subject x {args.subjects}, "
        f"measured on {len(subset)}) | {dense_bytes / 1e9:.2f} GB |"
    )
    print()
    print(
        f"speed-up {dense_per_subject * args.subjects / sparse_median:.0f}x; "
        f"memory ratio dense/sparse {dense_bytes / (truth_bytes + pred_bytes):.0f}x "
        f"(target >= 50x); target time <= 10 s: "
        f"{'met' if sparse_median <= 10 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
