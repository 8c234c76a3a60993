"""Benchmark: ``atlas-ramp evaluate`` of the starting kit at 1 mm.

The starting kit is evaluated on the test folder of a 1 mm synthetic sample
(default: 40 train, 16 test subjects, as ``python download_data.py`` builds it),
through the real command, in a temporary kit folder (``problem.py``, the
submission, a link to the data). Runs:

* **train + evaluate + report**: ``--retrain --output``: what a user waits for;
* **evaluate, saved model**: the model that the benchmark trained and pickled
  where ``ramp-test --retrain --pickle`` puts it, on 16 and on 8 subjects:
  memory flat in the number of subjects means the same peak for both;
* **plain alternative**: the saved model on all 16 subjects in one predict call
  (``--batch-size 16``), which holds every dense prediction at once.

Each run happens under a small wrapper process (this script, ``--measure``)
whose ``getrusage(RUSAGE_CHILDREN)`` gives the peak RSS of that run alone. The
volume cache is warmed first, so that no run pays gzip decoding.

Run: ``python bench/bench_evaluate.py [--data /tmp/eval_sample] [--repeats 3]``
(the sample is built there first when missing: 2 to 4 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cloudpickle

REPO = Path(__file__).resolve().parents[1]


def measure(command: list[str], report: Path) -> int:
    """Run ``command``; write its wall time and peak RSS to ``report``."""
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    report.write_text(
        json.dumps(
            {
                "wall_s": wall,
                "cpu_s": usage.ru_utime + usage.ru_stime,
                "peak_rss_mb": usage.ru_maxrss / 1024,
                "returncode": done.returncode,
                "output": (done.stdout + done.stderr)[-3000:],
            }
        )
    )
    return 0


def timed(kit: Path, arguments: list[str]) -> dict:
    command = [sys.executable, "-m", "atlas_ramp", "evaluate", "--no-progress"]
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "run.json"
        subprocess.run(
            [sys.executable, __file__, "--measure", str(report), "--", *command,
             *arguments],
            cwd=kit, check=True,
        )  # fmt: skip
        result = json.loads(report.read_text())
    if result["returncode"] != 0:
        raise RuntimeError(result["output"])
    return result


def make_kit(folder: Path, data: Path) -> Path:
    (folder / "submissions").mkdir(parents=True)
    shutil.copy(REPO / "problem.py", folder)
    shutil.copytree(
        REPO / "submissions" / "starting_kit",
        folder / "submissions" / "starting_kit",
        ignore=shutil.ignore_patterns("training_output", "__pycache__"),
    )
    (folder / "data").symlink_to(data.resolve(), target_is_directory=True)
    return folder


def first_subjects(split: Path, n: int, target: Path) -> Path:
    """A folder with links to the first ``n`` subjects of ``split``."""
    from atlas_ramp.bids import find_subjects

    for subject in find_subjects(split)[:n]:
        # Links to the files: discovery does not follow links to folders.
        for path in (subject.t1w_path, subject.mask_path):
            link = target / path.relative_to(split)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path.resolve())
    return target


def main():
    if sys.argv[1:2] == ["--measure"]:  # the wrapper: --measure REPORT -- COMMAND
        return measure(sys.argv[4:], Path(sys.argv[2]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/eval_sample"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    if not (args.data / "train").is_dir():
        print(f"building the 1 mm synthetic sample in {args.data} ...", flush=True)
        subprocess.run(
            [sys.executable, str(REPO / "download_data.py"), "--output",
             str(args.data), "--quiet"],
            check=True,
        )  # fmt: skip
    from atlas_ramp.volumes import ImageSequence, load_masks
    from atlas_ramp.workflow import LesionSegmentation

    X_train = ImageSequence.from_folder(args.data / "train")
    X_test = ImageSequence.from_folder(args.data / "test")
    start = time.perf_counter()
    for X in (X_train, X_test):  # warm the decompressed volume cache
        for i in range(len(X)):
            X[i]
    print(f"cache warm ({time.perf_counter() - start:.0f} s)", flush=True)

    with tempfile.TemporaryDirectory() as folder:
        kit = make_kit(Path(folder) / "kit", args.data)
        half = first_subjects(args.data / "test", len(X_test) // 2, kit / "half")
        full = timed(
            kit, ["--submission", "starting_kit", "--data", "data/test", "--retrain",
                  "--output", "report"],
        )  # fmt: skip
        print("train + evaluate + report done", flush=True)
        # Save the model where ramp-test --retrain --pickle would.
        model = LesionSegmentation().train_submission(
            str(kit / "submissions" / "starting_kit"), X_train, load_masks(X_train)
        )
        saved = kit / "submissions/starting_kit/training_output/retrained_model.pkl"
        saved.parent.mkdir(parents=True)
        saved.write_bytes(cloudpickle.dumps(model))
        runs = {
            f"saved model, {len(X_test)} subjects, batches of 4": [
                "--data", "data/test"],
            f"saved model, {len(X_test) // 2} subjects, batches of 4": [
                "--data", str(half)],
            f"plain: saved model, {len(X_test)} subjects, one batch of "
            f"{len(X_test)}": ["--data", "data/test", "--batch-size",
                               str(len(X_test))],
        }  # fmt: skip
        results = {}
        for name, arguments in runs.items():
            results[name] = [
                timed(kit, ["--submission", "starting_kit", *arguments])
                for _ in range(args.repeats)
            ]
            print(name, "done", flush=True)
        scores = full["output"].strip().splitlines()

    print()
    print(
        f"1 mm sample: {len(X_train)} train, {len(X_test)} test subjects; "
        f"grid {X_test[0].shape}; {os.cpu_count()} CPUs"
    )
    print("| run | wall (s) | CPU (s) | peak RSS (MB) |")
    print("|---|---|---|---|")
    print(
        f"| train on {len(X_train)} + evaluate {len(X_test)} + report (1 run) "
        f"| {full['wall_s']:.1f} | {full['cpu_s']:.1f} | {full['peak_rss_mb']:.0f} |"
    )
    for name, measured in results.items():

        def median(key, measured=measured):
            return statistics.median(m[key] for m in measured)

        print(
            f"| {name} (median of {len(measured)}) | {median('wall_s'):.1f} "
            f"| {median('cpu_s'):.1f} | {median('peak_rss_mb'):.0f} |"
        )
    print()
    print("\n".join(line for line in scores if line.startswith("    ")))


if __name__ == "__main__":
    main()
