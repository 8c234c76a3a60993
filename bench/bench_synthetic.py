"""Benchmark of the synthetic sample generator (prints figures, asserts nothing).

Measures, on one core, the time to generate and write one full-resolution
(1 mm) subject, then the time to build the default sample (40 train + 16 test
subjects at 1 mm) with the default number of worker processes, and the lesion
statistics of a set of generated subjects.

Targets: at most 2 s per 1 mm subject on one core; at most 3 min for the
default sample on 2 cores. Run it on an otherwise idle machine, pinned to the
cores you mean to measure::

    taskset -c 0,1 python bench/bench_synthetic.py [--repeats 7]
        [--stats-subjects 200] [--stats-downsample 4] [--skip-sample]
"""

import os

# One thread per process, set before numpy is imported (BLAS reads it once).
for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(variable, "1")

import argparse  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from atlas_ramp import synthetic  # noqa: E402


def time_one_subject(repeats: int) -> None:
    """Generate and write single 1 mm subjects; print median times.

    Wall-clock time, and the process's CPU time, which a busy machine inflates
    much less (with one thread, CPU time is what one free core would take).
    """
    start = time.perf_counter()
    anatomy = synthetic.load_anatomy(1)
    elapsed = time.perf_counter() - start
    print(f"template anatomy at 1 mm (once per process): {elapsed:.2f} s")
    profiles = synthetic.make_cohort_profiles(6, seed=0)
    wall, cpu, write = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        for index in range(repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            subject = synthetic.make_subject(
                synthetic.subject_seed(0, index), profiles[index % 6], anatomy
            )
            middle = time.perf_counter()
            synthetic.write_subject(Path(folder), f"sub-r001s{index + 1:03d}", subject)
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
            write.append(time.perf_counter() - middle)
    print(
        f"one 1 mm subject (generate + write), one core, median of {repeats}: "
        f"{statistics.median(wall):.2f} s wall (of which write "
        f"{statistics.median(write):.2f} s), {statistics.median(cpu):.2f} s CPU; "
        f"wall min {min(wall):.2f} s, max {max(wall):.2f} s"
    )


def time_default_sample() -> None:
    """Build the default sample (40 + 16 subjects, 1 mm) in a temporary folder."""

    def cpu_seconds():
        # This process and its finished children (the worker processes).
        own = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return sum(u.ru_utime + u.ru_stime for u in (own, children))

    with tempfile.TemporaryDirectory() as folder:
        start, start_cpu = time.perf_counter(), cpu_seconds()
        synthetic.build_sample(folder, progress=False)
        elapsed, cpu = time.perf_counter() - start, cpu_seconds() - start_cpu
        size = sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
    jobs = synthetic.sample._default_jobs(56, 1)
    print(
        f"default sample (40 + 16 subjects, 1 mm, {jobs} worker processes, "
        f"{os.cpu_count()} CPUs): {elapsed:.0f} s wall, {cpu:.0f} s CPU in all "
        f"(about {cpu / jobs:.0f} s on {jobs} idle cores), {size / 1e6:.0f} MB on disk"
    )


def lesion_statistics(n_subjects: int, downsample: int) -> None:
    """Statistics of rendered subjects (volumes measured on the masks)."""
    anatomy = synthetic.load_anatomy(downsample)
    profiles = synthetic.make_cohort_profiles(6, seed=0)
    start = time.perf_counter()
    infos = [
        synthetic.make_subject(
            synthetic.subject_seed(0, index), profiles[index % 6], anatomy
        ).info
        for index in range(n_subjects)
    ]
    elapsed = time.perf_counter() - start
    volumes = np.array([info["lesion_volume_ml"] for info in infos])
    single = np.mean([info["n_lesions"] == 1 for info in infos])
    print(
        f"{n_subjects} subjects at {downsample} mm ({elapsed / n_subjects:.3f} s each):"
    )
    print(f"  single-lesion share: {single:.3f}")
    for location in synthetic.LOCATIONS:
        share = np.mean([info["location"] == location for info in infos])
        print(f"  location {location}: {share:.3f}")
    for side in ("left", "right", "bilateral"):
        share = np.mean([info["hemisphere"] == side for info in infos])
        print(f"  hemisphere {side}: {share:.3f}")
    print(
        f"  total lesion volume (mL): median {np.median(volumes):.2f}, "
        f"min {volumes.min():.3f}, max {volumes.max():.1f}, "
        f"10th-90th percentile {np.percentile(volumes, 10):.2f}-"
        f"{np.percentile(volumes, 90):.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--stats-subjects", type=int, default=200)
    parser.add_argument("--stats-downsample", type=int, default=4)
    parser.add_argument("--skip-sample", action="store_true")
    args = parser.parse_args()
    time_one_subject(args.repeats)
    if not args.skip_sample:
        time_default_sample()
    if args.stats_subjects:
        lesion_statistics(args.stats_subjects, args.stats_downsample)


if __name__ == "__main__":
    main()
