"""Benchmark of the synthetic sample generator (prints figures, asserts nothing).

Measures:

* the time to generate and write one subject at 1 mm and at 4 mm, in one
  process (median of ``--repeats``);
* the time per subject of ``build_sample`` with 1 and with 2 worker processes,
  at 1 mm (``--build-subjects-1mm`` subjects) and 4 mm (56 subjects), in the
  same run so that the two are compared under the same load;
* optionally (``--default-sample``) the time of the default sample (40 train
  + 16 test + 16 generalizability subjects at 1 mm) with the default number of
  worker processes;
* the lesion statistics of a set of generated subjects.

Targets: at most 2 s per 1 mm subject on one core; at most 3 min for the
default sample on 2 cores. Run it on an otherwise idle machine, pinned to the
cores you mean to measure::

    taskset -c 0,1 python bench/bench_synthetic.py [--repeats 5]
        [--build-subjects-1mm 8] [--default-sample] [--stats-subjects 200]
"""

import os

# One thread per process, set before numpy is imported (BLAS reads it once).
for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(variable, "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from atlas_ramp import synthetic  # noqa: E402
from atlas_ramp.machine import available_cpus  # noqa: E402


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (worker processes)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return sum(u.ru_utime + u.ru_stime for u in (own, children))


def quiet():
    """Hide build_sample's messages: the figures are what this prints."""
    return contextlib.redirect_stdout(io.StringIO())


def time_one_subject(downsample: int, repeats: int) -> None:
    """Generate and write single subjects in this process; print median times.

    Wall-clock time, and the process's CPU time, which a busy machine inflates
    much less (with one thread, CPU time is what one free core would take).
    """
    start = time.perf_counter()
    anatomy = synthetic.load_anatomy(downsample)
    elapsed = time.perf_counter() - start
    print(f"template anatomy at {downsample} mm (once per process): {elapsed:.2f} s")
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
        f"one {downsample} mm subject (generate + write), one process, median of "
        f"{repeats}: {statistics.median(wall):.3f} s wall (of which write "
        f"{statistics.median(write):.3f} s), {statistics.median(cpu):.3f} s CPU; "
        f"wall min {min(wall):.3f} s, max {max(wall):.3f} s"
    )


def time_builds(downsample: int, n_subjects: int, repeats: int) -> None:
    """``build_sample`` with 1 and 2 worker processes, alternating; medians."""
    n_test = max(1, n_subjects // 4)
    arguments = dict(
        n_train=n_subjects - n_test,
        n_test=n_test,
        n_cohorts=min(6, n_subjects),
        downsample=downsample,
        progress=False,
        n_generalizability=0,  # train and test only, as before the split existed
    )
    synthetic.load_anatomy(downsample)  # not part of what is timed
    times = {1: [], 2: []}
    for _ in range(repeats):
        for jobs in (1, 2):
            with tempfile.TemporaryDirectory() as folder, quiet():
                start = time.perf_counter()
                synthetic.build_sample(folder, n_jobs=jobs, **arguments)
                times[jobs].append((time.perf_counter() - start) / n_subjects)
    for jobs, values in times.items():
        print(
            f"build_sample, {n_subjects} subjects at {downsample} mm, {jobs} "
            f"process(es), median of {repeats}: {statistics.median(values):.3f} s "
            f"per subject (min {min(values):.3f}, max {max(values):.3f})"
        )


def time_default_sample() -> None:
    """Build the default sample (1 mm) with the default number of processes."""
    with tempfile.TemporaryDirectory() as folder:
        start, start_cpu = time.perf_counter(), cpu_seconds()
        with quiet():
            synthetic.build_sample(folder, progress=False)
        elapsed, cpu = time.perf_counter() - start, cpu_seconds() - start_cpu
        size = sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
        n_subjects = sum(1 for _ in Path(folder).rglob("*_T1w.nii.gz"))
    jobs = synthetic.default_jobs(n_subjects, 1)
    print(
        f"default sample ({n_subjects} subjects, 1 mm, {jobs} worker processes, "
        f"{available_cpus()} usable CPUs): {elapsed:.0f} s wall, "
        f"{cpu:.0f} s CPU in all, {size / 1e6:.0f} MB on disk"
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
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--build-repeats", type=int, default=3)
    parser.add_argument("--build-subjects-1mm", type=int, default=8)
    parser.add_argument("--default-sample", action="store_true")
    parser.add_argument("--stats-subjects", type=int, default=200)
    parser.add_argument("--stats-downsample", type=int, default=4)
    args = parser.parse_args()
    for downsample in (1, 4):
        time_one_subject(downsample, args.repeats)
    time_builds(4, 56, args.build_repeats)
    if args.build_subjects_1mm:
        time_builds(1, args.build_subjects_1mm, args.build_repeats)
    if args.default_sample:
        time_default_sample()
    if args.stats_subjects:
        lesion_statistics(args.stats_subjects, args.stats_downsample)


if __name__ == "__main__":
    main()
