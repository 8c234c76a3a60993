"""Benchmark the baseline submissions: scores, wall time and peak memory.

Each baseline found in ``submissions/`` (``starting_kit``, ``voxel_classifier``,
``small_cnn``; missing ones are skipped) runs through the real ``ramp-test``,
quick (``--quick-test``) and full, in a temporary kit folder that holds a copy of
``problem.py`` and of the submission, and a link to the data folder. Scores are
read from the files ``ramp-test --save-output`` writes; the result is a markdown
table.

Usage::

    python bench/bench_baselines.py                        # data/, all baselines
    python bench/bench_baselines.py --data /tmp/kit/data --quick-only
    python bench/bench_baselines.py --submissions starting_kit,voxel_classifier

How the cost is measured
------------------------
Each ``ramp-test`` runs under a small wrapper process (this script, called
with ``--measure``) that starts it, waits for it and reports its wall time, and
its CPU time (user + system) and ``ru_maxrss`` from
``getrusage(RUSAGE_CHILDREN)``. In a fresh wrapper that has exactly one child,
``ru_maxrss`` is the peak resident memory of ``ramp-test`` (or of the largest
process it waited for), whatever ran before: measured from the bench process
itself, ``RUSAGE_CHILDREN`` would report the maximum over *all* children so far,
and every run after the largest one would inherit its peak. CPU time is the
figure to compare on a shared machine, where wall time depends on the others.

Scores: "CV Dice" is the mean (± standard deviation) over the CV folds of the
validation Dice; the test scores are ramp-test's bagged ones (the test
predictions of all folds averaged).

Before timing, every volume is read once, so that all runs find the
decompressed volume cache warm (the first ``ramp-test`` on fresh data would
otherwise also pay gzip decoding, and the submission tested first would look
slower).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASELINES = ("starting_kit", "voxel_classifier", "small_cnn")
SCORES = ("dice", "lesion_f1", "volume_diff_ml", "lesion_count_diff")


def measure(command: list[str], report: Path) -> int:
    """Run ``command``; write its wall time, CPU time and peak RSS to ``report``."""
    start = time.perf_counter()
    try:
        returncode = subprocess.call(command)
    except OSError as error:  # e.g. ramp-test not installed
        print(f"bench_baselines.py: cannot run {command[0]}: {error}", file=sys.stderr)
        returncode = 127
    wall_s = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    # Linux reports kilobytes, macOS bytes.
    scale = 2**20 if sys.platform == "darwin" else 2**10
    cost = {
        "returncode": returncode,
        "wall_s": wall_s,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "max_rss_mb": usage.ru_maxrss / scale,
    }
    report.write_text(json.dumps(cost))
    return returncode


def warm_volume_cache(data_dir: Path) -> None:
    """Read every volume and mask once, filling ``<data>/.cache``."""
    from atlas_ramp.volumes import load_split

    for split in ("train", "test"):
        X, _ = load_split(data_dir, split)
        for position in range(len(X)):
            X[position]


def make_kit(kit_dir: Path, data_dir: Path, submission: str) -> None:
    """A kit folder: problem.py, one submission (no old outputs), the data."""
    kit_dir.mkdir(parents=True)
    shutil.copy(REPO / "problem.py", kit_dir / "problem.py")
    shutil.copytree(
        REPO / "submissions" / submission,
        kit_dir / "submissions" / submission,
        ignore=shutil.ignore_patterns("training_output", "__pycache__"),
    )
    (kit_dir / "data").symlink_to(data_dir.resolve(), target_is_directory=True)


def read_scores(output_dir: Path) -> dict:
    """Scores from ``ramp-test --save-output``'s files.

    Returns
    -------
    dict
        ``cv_dice`` and ``cv_dice_std``: mean and standard deviation over folds
        of the validation Dice; ``test_<score>``: the bagged test scores (the
        predictions of all folds averaged, as ramp-test's "Bagged scores").
    """
    valid_dice = []
    for fold_dir in sorted(output_dir.glob("fold_*")):
        with open(fold_dir / "scores.csv", newline="") as stream:
            for row in csv.DictReader(stream):
                if row["step"] == "valid":
                    valid_dice.append(float(row["dice"]))
    bagged = {}
    with open(output_dir / "bagged_scores.csv", newline="") as stream:
        for row in csv.DictReader(stream):
            # Rows come by increasing n_bag; the last one bags every fold.
            bagged[row["step"]] = row
    n = len(valid_dice)
    mean = sum(valid_dice) / n
    scores = {
        "cv_dice": mean,
        "cv_dice_std": (sum((d - mean) ** 2 for d in valid_dice) / n) ** 0.5,
    }
    scores.update({f"test_{name}": float(bagged["test"][name]) for name in SCORES})
    return scores


def run_one(submission: str, quick: bool, data_dir: Path, work_dir: Path) -> dict:
    """One ``ramp-test`` of one submission; its scores and cost."""
    mode = "quick" if quick else "full"
    kit_dir = work_dir / f"{submission}-{mode}"
    make_kit(kit_dir, data_dir, submission)
    beside_python = Path(sys.executable).parent / "ramp-test"
    ramp_test = str(beside_python) if beside_python.exists() else "ramp-test"
    command = [ramp_test, "--submission", submission, "--save-output"]
    if quick:
        command.append("--quick-test")
    report, log = kit_dir / "cost.json", kit_dir / "ramp-test.log"
    wrapper = [sys.executable, __file__, "--measure", str(report), "--", *command]
    print(f"[bench] {submission} ({mode}) ...", file=sys.stderr, flush=True)
    with open(log, "w") as stream:
        subprocess.run(wrapper, cwd=kit_dir, stdout=stream, stderr=subprocess.STDOUT)
    cost = json.loads(report.read_text())
    result = {"submission": submission, "mode": mode, **cost}
    if cost["returncode"] != 0:
        tail = log.read_text().splitlines()[-15:]
        print(
            f"[bench] {submission} ({mode}) FAILED:", *tail, sep="\n  ", file=sys.stderr
        )
        return result
    output_dir = kit_dir / "submissions" / submission / "training_output"
    result.update(read_scores(output_dir))
    print(
        f"[bench] {submission} ({mode}): test Dice {result['test_dice']:.3f}, "
        f"{cost['wall_s']:.0f} s, {cost['max_rss_mb']:.0f} MB",
        file=sys.stderr,
        flush=True,
    )
    return result


def markdown_table(results: list[dict]) -> str:
    header = (
        "| submission | mode | CV Dice | test Dice | test lesion F1 "
        "| test vol. diff (mL) | test lesion-count diff | wall time (s) "
        "| CPU time (s) | peak RSS (MB) |"
    )
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for r in results:
        if r["returncode"] != 0:
            scores = ["failed"] + [""] * 4
        else:
            scores = [
                f"{r['cv_dice']:.3f} ± {r['cv_dice_std']:.3f}",
                f"{r['test_dice']:.3f}",
                f"{r['test_lesion_f1']:.3f}",
                f"{r['test_volume_diff_ml']:.2f}",
                f"{r['test_lesion_count_diff']:.2f}",
            ]
        cells = [r["submission"], r["mode"], *scores]
        cells += [f"{r['wall_s']:.0f}", f"{r['cpu_s']:.0f}", f"{r['max_rss_mb']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=REPO / "data",
        help="data folder holding train/ and test/ (default: data/ of the repo)",
    )
    parser.add_argument(
        "--submissions",
        default=",".join(BASELINES),
        help=f"comma-separated names (default: {','.join(BASELINES)})",
    )
    parser.add_argument(
        "--quick-only", action="store_true", help="only ramp-test --quick-test"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the kit folders and logs"
    )
    parser.add_argument(
        "--no-warm-cache",
        action="store_true",
        help="do not read every volume before timing",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--measure"]:  # the wrapper: --measure REPORT -- COMMAND...
        return measure(argv[3:], Path(argv[1]))
    args = parse_args(argv)
    data_dir = args.data.resolve()
    if not (data_dir / "train").is_dir() or not (data_dir / "test").is_dir():
        print(
            f"bench_baselines.py: {data_dir} has no train/ and test/; build data "
            "with `python download_data.py --output DIR`.",
            file=sys.stderr,
        )
        return 2
    wanted = [name for name in args.submissions.split(",") if name]
    present = [
        n for n in wanted if (REPO / "submissions" / n / "estimator.py").exists()
    ]
    for name in sorted(set(wanted) - set(present)):
        print(
            f"[bench] skipping {name}: no submissions/{name}/estimator.py",
            file=sys.stderr,
        )
    if not args.no_warm_cache:
        warm_volume_cache(data_dir)

    load_before = os.getloadavg()[0]
    work_dir = Path(tempfile.mkdtemp(prefix="bench_baselines_"))
    modes = [True] if args.quick_only else [True, False]
    try:
        results = [
            run_one(name, quick, data_dir, work_dir)
            for name in present
            for quick in modes
        ]
    finally:
        if args.keep:
            print(f"[bench] kit folders and logs kept in {work_dir}", file=sys.stderr)
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    # Timings mean little on a busy machine: say how busy it was.
    print(
        f"\nData: {data_dir}; {os.cpu_count()} CPUs; load average {load_before:.1f} "
        f"before, {os.getloadavg()[0]:.1f} after; OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}.\n"
    )
    print(markdown_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
