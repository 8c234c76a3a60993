"""Benchmark: reading volumes through the cache, and memory while iterating.

1. Reading one full-resolution (197 x 233 x 189) T1w volume and using every
   voxel once (a sum): decoding the ``.nii.gz`` with nibabel (the plain
   alternative) versus the kit's decompressed ``.npy`` cache (memory-mapped),
   side by side, median of several reads. Both files are in the OS page cache,
   as they are after the first CV fold. The sum makes the comparison fair: a
   memory map reads its pages only when they are used.
2. Peak resident memory (RSS) of a fresh process that loads a split with
   ``load_split`` (lazy volumes, sparse masks) and reads every volume once, with
   the size of one volume for comparison: it should stay near "Python + a couple
   of volumes", whatever the number of subjects.

Run: ``python bench/bench_volumes.py [--data data]``; builds the default
synthetic sample into ``--data`` first if it is missing.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from atlas_ramp.volumes import ImageSequence

ITERATE_SCRIPT = """
import json, os, resource, sys, time
from atlas_ramp.volumes import load_split

PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 1e6

def current_mb():
    # Resident memory now (Linux); ru_maxrss alone would hide what happens
    # after the peak reached while importing the libraries.
    with open("/proc/self/statm") as stream:
        return int(stream.read().split()[1]) * PAGE_MB

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

start = time.perf_counter()
before = current_mb()
X, y = load_split(sys.argv[1], sys.argv[2])
after_load = current_mb()
highest = after_load
total = 0.0
for volume in X:
    total += float(volume.sum())  # use every voxel
    highest = max(highest, current_mb())
print(json.dumps({
    "subjects": len(X),
    "volume_mb": X[0].nbytes / 1e6,
    "sparse_masks_mb": sum(m.nbytes for m in y) / 1e6,
    "rss_after_imports_mb": before,
    "rss_after_load_split_mb": after_load,
    "highest_rss_while_iterating_mb": highest,
    "peak_rss_mb": peak_mb(),
    "seconds": time.perf_counter() - start,
}))
"""


def time_reads(function, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_iteration(data_dir: Path, split: str) -> dict:
    output = subprocess.run(
        [sys.executable, "-c", ITERATE_SCRIPT, str(data_dir), split],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    if not (args.data / "train").is_dir():
        from atlas_ramp.synthetic import build_sample

        print(f"building the default synthetic sample in {args.data} ...")
        build_sample(args.data)

    # Use a private cache so the first read really is a miss.
    with tempfile.TemporaryDirectory() as cache_dir:
        X = ImageSequence.from_folder(args.data / "train", cache_dir=cache_dir)
        path = X.subjects[0].t1w_path

        def decode():
            return float(nib.load(str(path)).get_fdata(dtype=np.float32).sum())

        def cached():
            return float(X[0].sum())

        decode()  # warm the page cache for the .nii.gz
        first_start = time.perf_counter()
        X[0]  # miss: decode + write the .npy
        first_read = time.perf_counter() - first_start
        nibabel_median = time_reads(decode, args.repeats)
        cached_median = time_reads(cached, args.repeats)

    print()
    print(
        f"one T1w volume {X.volume_shape}, float32 "
        f"({np.prod(X.volume_shape) * 4 / 1e6:.1f} MB)"
    )
    print("| read one volume, then sum it | median time |")
    print("|---|---|")
    print(f"| nibabel, decode .nii.gz | {nibabel_median * 1000:.0f} ms |")
    print(
        f"| kit cache, first read (decode + write .npy) | {first_read * 1000:.0f} ms |"
    )
    print(f"| kit cache, later reads (.npy) | {cached_median * 1000:.1f} ms |")
    print(
        f"speed-up of cached reads: {nibabel_median / cached_median:.0f}x "
        "(target >= 10x)"
    )

    print()
    print(
        "| split | subjects | one volume | sparse masks | RSS after imports "
        "| after load_split | highest while reading every volume | process peak "
        "| wall |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for split in ("train", "test"):
        run_iteration(args.data, split)  # fill the shared cache first
        figures = run_iteration(args.data, split)
        print(
            f"| {split} | {figures['subjects']} | {figures['volume_mb']:.0f} MB "
            f"| {figures['sparse_masks_mb']:.2f} MB "
            f"| {figures['rss_after_imports_mb']:.0f} MB "
            f"| {figures['rss_after_load_split_mb']:.0f} MB "
            f"| {figures['highest_rss_while_iterating_mb']:.0f} MB "
            f"| {figures['peak_rss_mb']:.0f} MB "
            f"| {figures['seconds']:.1f} s |"
        )
    print(
        "While iterating, resident memory should grow by about two volumes at "
        "most (the one held and the one being read), whatever the subject count."
    )


if __name__ == "__main__":
    main()
