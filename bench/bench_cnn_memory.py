"""Benchmark: how the small CNN's training memory grows with the training set.

The small CNN trains on 2 mm voxels. The previous version held every training
volume in memory at 2 mm (image, mirror and template channels, lesion
fraction, head indices, about 9.5 MB a subject); this one keeps a head mask
(a bit a voxel), the head's mean, sd and histogram landmarks, a coarse bias
field and the sparse lesion voxels per subject (about 220 kB), and cuts each
patch from the memory-mapped volume cache when it is drawn. The rule (issue
13): at most 1 MB more per training subject, so that ATLAS's 524 training
subjects of a fold fit in 4 GB.

It builds a synthetic sample at 2 mm (the working grid, 99 x 117 x 95) in a
temporary folder, fills the volume cache, then fits, in a fresh child process
each, the current estimator and the previous one (``git show
main:submissions/small_cnn/estimator.py``, or ``--old FILE``) on the first 40
and on all 160 training subjects, with a tiny training budget (what grows
with the subjects is the data held, not the steps). It prints each child's
peak resident memory (``ru_maxrss``) and the growth per subject::

    python bench/bench_cnn_memory.py [--subjects 40 160] [--old FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CURRENT = REPO / "submissions" / "small_cnn" / "estimator.py"

FIT_SCRIPT = """
import json, resource, sys, time
sys.path.insert(0, sys.argv[4])
from rampwf.utils.importing import import_module_from_source
from atlas_ramp.volumes import MaskSequence, load_split

module = import_module_from_source(sys.argv[1], "estimator")
X, y = load_split(sys.argv[2], "train")
count = int(sys.argv[3])
X, y = X[:count], MaskSequence(y[:count])
budget = dict(epochs=1, patches_per_epoch=8, batch_size=4)
if hasattr(module, "N_CALIBRATION_SUBJECTS"):  # the previous version's globals
    module.N_CALIBRATION_SUBJECTS = 1
else:
    budget["n_calibration_subjects"] = 1
start = time.perf_counter()
module.SmallUNet(**budget).fit(X, y)
print(json.dumps({
    "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "fit_s": time.perf_counter() - start,
}))
"""


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, nargs=2, default=(40, 160))
    parser.add_argument("--data", type=Path, help="an existing 2 mm sample")
    parser.add_argument("--old", type=Path, help="the previous estimator.py")
    return parser.parse_args()


def previous_estimator(folder: Path) -> Path:
    """main's small_cnn estimator, written to ``folder``."""
    source = subprocess.run(
        ["git", "show", "main:submissions/small_cnn/estimator.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = folder / "old_estimator.py"
    path.write_text(source)
    return path


def fit_in_child(estimator: Path, data: Path, count: int) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", FIT_SCRIPT, str(estimator), str(data), str(count)]
        + [str(REPO)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    arguments = parse_arguments()
    small, large = arguments.subjects
    with tempfile.TemporaryDirectory(prefix="bench_cnn_memory_") as folder:
        folder = Path(folder)
        old = arguments.old or previous_estimator(folder)
        data = arguments.data
        if data is None:
            from atlas_ramp.synthetic import build_sample

            start = time.perf_counter()
            data = build_sample(
                folder / "data", n_train=large, n_test=2, downsample=2, progress=False
            )
            print(
                f"built {large} subjects at 2 mm in {time.perf_counter() - start:.0f} s"
            )
        from atlas_ramp.volumes import load_split

        X, _ = load_split(data, "train")
        for i in range(len(X)):
            X[i]  # fill the decompressed volume cache
        print(f"{len(X)} training subjects at 2 mm, grid {X.shape}\n")
        print(f"{'estimator':10s}{'subjects':>10s}{'peak RSS MB':>14s}{'fit s':>8s}")
        growth = {}
        for name, estimator in (("previous", old), ("current", CURRENT)):
            peaks = {}
            for count in (small, large):
                result = fit_in_child(estimator, data, count)
                peaks[count] = result["peak_mb"]
                print(
                    f"{name:10s}{count:10d}{result['peak_mb']:14.0f}"
                    f"{result['fit_s']:8.1f}",
                    flush=True,
                )
            growth[name] = (peaks[large] - peaks[small]) / (large - small)
        print()
        for name, per_subject in growth.items():
            print(
                f"{name}: {per_subject:.2f} MB more peak RSS per training subject; "
                f"an ATLAS fold (524) would add {per_subject * 524 / 1e3:.2f} GB"
            )
        print(
            "rule: at most 1 MB per subject:",
            "met" if growth["current"] <= 1 else "NOT met",
        )


if __name__ == "__main__":
    main()
