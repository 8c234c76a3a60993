"""Benchmark: the evaluation report for 100 and 300 ATLAS-sized subjects.

Synthetic sparse masks on the 197 x 233 x 189 grid (ATLAS-like lesion volumes:
log-normal, median about 5 mL, 0.01 to 500 mL, 1 to 4 lesions; predictions with
shifted borders, misses and false positives) are made one subject at a time and
streamed through :func:`atlas_ramp.results.breakdown.score_subjects`, which keeps
one row
per subject and the masks of the 4 worst; then :func:`atlas_ramp.results.report.
write_report` draws the figures and writes the HTML and CSVs. Making the masks is
not counted.

Each size runs in its own process (``--measure N``), so that its peak resident
memory (``ru_maxrss``) is its own: memory is flat when 300 subjects peak where
100 do. The plain alternative, the same breakdown on dense volumes with
``scipy.ndimage.label``, is timed per subject on a few subjects in the same run.

Run: ``python bench/bench_report.py [--sizes 100,300] [--repeats 3]``.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from atlas_ramp.masks import SparseMask, SparseProba  # noqa: E402
from atlas_ramp.results.breakdown import WorstCase, score_subjects  # noqa: E402
from atlas_ramp.results.report import write_report  # noqa: E402

SHAPE = (197, 233, 189)
VOXEL_ML = 0.001
AFFINE = np.array(
    [[1.0, 0, 0, -98], [0, 1, 0, -134], [0, 0, 1, -72], [0, 0, 0, 1]]
)  # MNI152NLin2009aSym, 1 mm


def blob(rng, volume_voxels, centre):
    """Flat indices of a lumpy ellipsoid of about ``volume_voxels`` voxels."""
    radius = max((3 * volume_voxels / (4 * np.pi)) ** (1 / 3), 0.6)
    half = int(np.ceil(radius * 1.3)) + 1
    grid = np.mgrid[-half : half + 1, -half : half + 1, -half : half + 1]
    axes = rng.uniform(0.75, 1.25, 3)[:, None, None, None]
    noise = rng.normal(0, 0.05, grid[0].shape)  # a lumpy border
    inside = ((grid / (axes * radius)) ** 2).sum(0) + noise < 1
    inside[half, half, half] = True
    coords = [
        np.clip(c - half + centre[k], 0, SHAPE[k] - 1)
        for k, c in enumerate(np.nonzero(inside))
    ]
    return np.unique(np.ravel_multi_index(coords, SHAPE))


def make_subject(seed):
    """Ground truth and an imperfect prediction of one subject, as sparse masks."""
    rng = np.random.default_rng(seed)
    n_lesions = rng.choice([1, 2, 3, 4], p=[0.62, 0.2, 0.1, 0.08])
    total_ml = float(np.clip(rng.lognormal(np.log(5.0), 1.6), 0.01, 500))
    truth, prediction = [], []
    for share in rng.dirichlet(np.ones(n_lesions)):
        voxels = max(share * total_ml / VOXEL_ML, 1)
        centre = rng.integers(30, np.array(SHAPE) - 30)
        truth.append(blob(rng, voxels, centre))
        if rng.random() < 0.85:  # found, with a shifted, resized border
            shift = rng.integers(-2, 3, 3)
            prediction.append(blob(rng, voxels * rng.uniform(0.6, 1.4), centre + shift))
    for _ in range(rng.integers(0, 4)):  # false positives, mostly small
        centre = rng.integers(30, np.array(SHAPE) - 30)
        prediction.append(blob(rng, rng.lognormal(np.log(200), 1.5), centre))
    truth = np.unique(np.concatenate(truth))
    prediction = np.unique(np.concatenate(prediction or [np.zeros(0, np.int64)]))
    levels = np.full(prediction.size, 255, np.uint8)
    return SparseMask(truth, SHAPE, VOXEL_ML), SparseProba(
        prediction, levels, SHAPE, VOXEL_ML
    )


def dense_breakdown(truth, predicted):
    """The per-bin counts of one subject on dense volumes (the plain way)."""
    edges = np.array([100, 1000, 10000])  # voxels of 1 mm: 0.1, 1, 10 mL
    counts = {}
    for name, mask, other in (("true", truth, predicted), ("pred", predicted, truth)):
        labels, n = ndimage.label(mask)
        sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        touching = np.zeros(n + 1, bool)
        touching[np.unique(labels[other])] = True
        bins = np.digitize(sizes, edges)
        counts[name] = np.bincount(bins, minlength=4)
        counts[name + "_touching"] = np.bincount(bins[touching[1:]], minlength=4)
    return counts


def head_image():
    """A smooth ellipsoidal 'head', the background of the worst-subject panels."""
    grid = np.ogrid[tuple(slice(0, n) for n in SHAPE)]
    centre = np.array(SHAPE) / 2
    distance = sum(
        ((g - c) / (0.45 * n)) ** 2 for g, c, n in zip(grid, centre, SHAPE, strict=True)
    )
    return np.clip(1.5 - distance, 0, 1).astype(np.float32)


def measure(n_subjects: int, output: Path) -> dict:
    """One run: stream ``n_subjects`` through the breakdown, write the report."""
    making = [0.0]

    def subjects():
        for k in range(n_subjects):
            start = time.perf_counter()
            truth, prediction = make_subject(k)
            making[0] += time.perf_counter() - start
            yield (
                f"sub-r{1 + k % 6:03d}s{k:03d}",
                f"R{1 + k % 6:03d}",
                truth,
                prediction,
            )

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    table, worst = score_subjects(subjects(), n_worst=4)
    breakdown_s = time.perf_counter() - start - making[0]
    start = time.perf_counter()
    image = head_image()
    cases = []
    for position, subject_id, cohort, truth, predicted, value in worst:
        case = WorstCase(position, subject_id, cohort, truth, image=image)
        case.predictions["bench"], case.dice["bench"] = predicted, value
        cases.append(case)
    write_report(output, {"bench": table}, cases, AFFINE, "Benchmark")
    report_s = time.perf_counter() - start
    return {
        "subjects": n_subjects,
        "breakdown_s": breakdown_s,
        "report_s": report_s,
        "total_s": breakdown_s + report_s,
        "making_s": making[0],
        "rss_before_mb": rss_before / 1024,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "mean_dice": float(table["dice"].mean()),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,300")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dense-subjects", type=int, default=10)
    parser.add_argument("--measure", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        with tempfile.TemporaryDirectory() as folder:
            print(json.dumps(measure(args.measure, Path(folder) / "report")))
        return

    results = {}
    for size in (int(s) for s in args.sizes.split(",")):
        runs = []
        for _ in range(args.repeats):
            done = subprocess.run(
                [sys.executable, __file__, "--measure", str(size)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        results[size] = runs

    dense_times, sparse_times = [], []
    for k in range(args.dense_subjects):
        truth, prediction = make_subject(k)
        true_dense, pred_dense = truth.to_dense(), prediction.binarize().to_dense()
        start = time.perf_counter()
        dense_breakdown(true_dense, pred_dense)
        dense_times.append(time.perf_counter() - start)
        fresh = SparseMask(truth.indices, SHAPE, VOXEL_ML)  # no cached labels
        start = time.perf_counter()
        score_subjects([("s", "R001", fresh, prediction.binarize())])
        sparse_times.append(time.perf_counter() - start)

    print(
        "| subjects | breakdown (s) | figures + HTML + CSV (s) | total (s) "
        "| peak RSS (MB) | RSS before (MB) |"
    )
    print("|---|---|---|---|---|---|")
    for size, runs in results.items():

        def median(key, runs=runs):
            return statistics.median(r[key] for r in runs)

        print(
            f"| {size} | {median('breakdown_s'):.2f} | {median('report_s'):.2f} "
            f"| {median('total_s'):.2f} | {median('peak_rss_mb'):.0f} "
            f"| {median('rss_before_mb'):.0f} |"
        )
    sizes = list(results)
    last = results[sizes[-1]]
    print(
        f"\nmedians of {args.repeats} runs each, one process per run; mean Dice "
        f"of the synthetic predictions {last[0]['mean_dice']:.2f}"
    )
    largest = statistics.median(r["total_s"] for r in last)
    verdict = "met" if largest <= 10 else "NOT met"
    print(f"target <= 10 s for {sizes[-1]} subjects: {verdict}")
    if len(sizes) > 1:
        low, high = (
            statistics.median(r["peak_rss_mb"] for r in results[size])
            for size in (sizes[0], sizes[-1])
        )
        print(
            f"peak RSS, {sizes[-1]} vs {sizes[0]} subjects: {high - low:+.0f} MB "
            f"({high / low:.2f}x)"
        )
    dense, sparse = statistics.median(dense_times), statistics.median(sparse_times)
    print(
        f"\nper-subject breakdown, median of {args.dense_subjects}: sparse (kit) "
        f"{sparse * 1000:.1f} ms, dense scipy.ndimage.label {dense * 1000:.0f} ms "
        f"({dense / sparse:.0f}x); for {sizes[-1]} subjects dense would take "
        f"{dense * sizes[-1]:.0f} s"
    )


if __name__ == "__main__":
    main()
