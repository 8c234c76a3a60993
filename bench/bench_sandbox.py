"""Benchmark the course server's sandbox: what it adds to one submission's run.

For one submission (``starting_kit`` by default) on a data folder (the 4 mm
synthetic sample of 12 + 6 subjects by default), alternately:

* **plain**: ``ramp-test --submission X --save-output`` in a kit folder, as the
  unsandboxed worker runs it;
* **sandboxed**: :func:`atlas_ramp.course.sandbox.run_sandboxed_submission`: staging,
  ``ramp-test`` in bubblewrap, trusted scoring outside, as the local worker
  runs it;

each ``--repeats`` times, quick (``RAMP_TEST_MODE=1``) and full. Prints the
median wall time of each and the median difference (the sandbox's cost), and
checks that both give the same bagged test Dice.

Usage::

    python bench/bench_sandbox.py                         # starting_kit, 3 repeats
    python bench/bench_sandbox.py --submission voxel_classifier --repeats 1
    python bench/bench_sandbox.py --data data             # another data folder

Wall times on a shared machine depend on the others; compare the columns of one
run with each other.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from atlas_ramp.course.sandbox import run_sandboxed_submission  # noqa: E402


def _bagged_test_dice(output: Path) -> float:
    bagged = pd.read_csv(output / "bagged_scores.csv", index_col=[0, 1])
    return float(bagged.loc["test"]["dice"].iloc[-1])


def time_plain(kit: Path, submission: str, env: dict) -> tuple[float, float]:
    """``ramp-test --save-output`` in the kit: seconds, bagged test Dice."""
    output = kit / "submissions" / submission / "training_output"
    shutil.rmtree(output, ignore_errors=True)
    ramp_test = Path(sys.executable).parent / "ramp-test"
    start = time.perf_counter()
    subprocess.run(
        [str(ramp_test), "--submission", submission, "--save-output"],
        cwd=kit,
        env=env,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start, _bagged_test_dice(output)


def time_sandboxed(kit: Path, submission: str, log: Path) -> tuple[float, float]:
    """:func:`run_sandboxed_submission`: seconds, bagged test Dice."""
    output = kit / "sandboxed_output"
    start = time.perf_counter()
    returncode = run_sandboxed_submission(
        kit, kit, kit / "submissions" / submission, sys.prefix, output, log
    )
    seconds = time.perf_counter() - start
    if returncode:
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"sandboxed run failed ({returncode}):\n{tail}")
    return seconds, _bagged_test_dice(output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submission", default="starting_kit")
    parser.add_argument("--data", type=Path, help="default: the 4 mm sample")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sandbox-") as folder:
        kit = Path(folder) / "kit"
        kit.mkdir()
        shutil.copy(REPO / "problem.py", kit)
        shutil.copytree(
            REPO / "submissions" / args.submission,
            kit / "submissions" / args.submission,
            ignore=shutil.ignore_patterns("training_output", "__pycache__"),
        )
        if args.data is None:
            from atlas_ramp.synthetic import build_sample

            build_sample(kit / "data", n_train=12, n_test=6, n_cohorts=3, seed=0,
                         downsample=4, progress=False)  # fmt: skip
        else:
            (kit / "data").symlink_to(args.data.resolve(), target_is_directory=True)
        print(f"{args.submission}, {args.repeats} repeats; seconds (median)")
        print(f"{'mode':<6} {'plain':>8} {'sandboxed':>10} {'added':>8}  test Dice")
        for quick in (True, False):
            env = dict(os.environ, RAMP_TEST_MODE="1" if quick else "0")
            os.environ["RAMP_TEST_MODE"] = env["RAMP_TEST_MODE"]
            plain, boxed, dice = [], [], set()
            for _ in range(args.repeats):
                seconds, plain_dice = time_plain(kit, args.submission, env)
                plain.append(seconds)
                seconds, boxed_dice = time_sandboxed(
                    kit, args.submission, Path(folder) / "log"
                )
                boxed.append(seconds)
                dice |= {plain_dice, boxed_dice}
            added = statistics.median(b - p for b, p in zip(boxed, plain, strict=True))
            same = "same" if len(dice) == 1 else f"DIFFERENT {sorted(dice)}"
            print(
                f"{'quick' if quick else 'full':<6} {statistics.median(plain):8.1f} "
                f"{statistics.median(boxed):10.1f} {added:8.1f}  {same}"
            )


if __name__ == "__main__":
    main()
