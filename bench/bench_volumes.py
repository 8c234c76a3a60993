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
3. The cache's size on disk, per subject and at ATLAS scale (955 labelled and
   test volumes), and the smaller cache it could be: the kit's float32 ``.npy``
   against one in the source's own dtype when that is lossless (the synthetic
   sample stores int16 without scaling), side by side: size, and the median
   time to read one volume as the float32 array ``X[i]`` gives, then sum it;
   warm (file in the OS page cache) and cold (evicted with
   ``posix_fadvise(DONTNEED)`` before each read, as on a machine whose memory
   cannot hold the whole cache).

Run: ``python bench/bench_volumes.py [--data data]``; builds the default
synthetic sample into ``--data`` first if it is missing.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from atlas_ramp.volumes import ImageSequence, default_cache_dir

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


#: Labelled training plus test volumes of ATLAS R2.0 (655 + 300).
ATLAS_VOLUMES = 955


def evict(path: Path) -> None:
    """Drop one file's pages from the OS page cache (its next read is cold)."""
    with open(path, "rb") as stream:
        os.posix_fadvise(stream.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def time_cache_reads(path: Path, read, repeats: int, cold: bool) -> float:
    times = []
    for _ in range(repeats):
        if cold:
            evict(path)
        start = time.perf_counter()
        read(path)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def read_float32_cache(path: Path) -> float:
    # As the kit reads it: a copy-on-write memory map, no conversion.
    return float(np.load(path, mmap_mode="c").sum())


def read_source_dtype_cache(path: Path) -> float:
    # X[i] is float32: an integer cache must be converted at every read.
    return float(np.load(path, mmap_mode="r").astype(np.float32).sum())


def source_dtype_volume(path: Path) -> np.ndarray | None:
    """The stored values in their own dtype, when float32 adds nothing (else None)."""
    image = nib.load(str(path))
    stored = np.asanyarray(image.dataobj.get_unscaled())
    as_float = image.get_fdata(dtype=np.float32)
    if stored.dtype.kind not in "iu" or not np.array_equal(stored, as_float):
        return None  # floating point, or scaled (scl_slope/scl_inter)
    return stored


def compare_cache_dtypes(t1w: Path, repeats: int) -> list[tuple]:
    """Rows (kind, dtype, MB, warm ms, cold ms) for the float32 and source caches."""
    stored = source_dtype_volume(t1w)
    variants = [("kit cache (float32)", nib.load(str(t1w)).get_fdata(dtype=np.float32))]
    if stored is not None:
        variants.append(("source dtype, lossless", stored))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for kind, array in variants:
            path = Path(folder) / f"{array.dtype}.npy"
            np.save(path, array)
            read = (
                read_float32_cache
                if array.dtype == np.float32
                else read_source_dtype_cache
            )
            read(path)  # into the page cache
            warm = time_cache_reads(path, read, repeats, cold=False)
            cold = time_cache_reads(path, read, repeats, cold=True)
            rows.append((kind, array.dtype, path.stat().st_size / 1e6, warm, cold))
    return rows


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


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

    cache = default_cache_dir(args.data / "train")
    n_train = len(ImageSequence.from_folder(args.data / "train"))
    volumes_mb = sum(p.stat().st_size for p in cache.glob("*_T1w-*.npy")) / 1e6
    per_subject = folder_mb(cache) / n_train
    print()
    print(
        f"volume cache {cache}: {per_subject:.1f} MB per subject (its T1w "
        f"{volumes_mb / n_train:.1f} MB, the rest its sparse mask and metadata); "
        f"at ATLAS scale ({ATLAS_VOLUMES} volumes on this grid): "
        f"{ATLAS_VOLUMES * volumes_mb / n_train / 1e3:.1f} GB"
    )
    rows = compare_cache_dtypes(X.subjects[0].t1w_path, args.repeats)
    print(
        "| cache of one T1w | dtype | size | at ATLAS scale | read + sum, warm "
        "| read + sum, cold |"
    )
    print("|---|---|---|---|---|---|")
    for kind, dtype, size_mb, warm, cold in rows:
        print(
            f"| {kind} | {dtype} | {size_mb:.1f} MB "
            f"| {ATLAS_VOLUMES * size_mb / 1e3:.1f} GB | {warm * 1000:.1f} ms "
            f"| {cold * 1000:.1f} ms |"
        )
    if len(rows) == 1:
        print("(the source is floating point or scaled: float32 is its own dtype)")


if __name__ == "__main__":
    main()
