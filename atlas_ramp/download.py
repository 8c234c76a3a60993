"""Command line of ``download_data.py``: the one entry point for data."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .archive.release import ATLAS_URL
from .bids import DataError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="download_data.py",
        description=(
            "Build the synthetic ATLAS-like sample (default, offline) or install the "
            "real ATLAS R2.0 archive (--atlas) into data/train and data/test."
        ),
    )
    parser.add_argument(
        "--output", type=Path, default=Path("data"), help="data folder (default: data)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--force", action="store_true", help="rebuild even if the data looks complete"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    synthetic = parser.add_argument_group("synthetic sample (default)")
    synthetic.add_argument(
        "--n-train", type=int, default=40, help="training subjects (default: 40)"
    )
    synthetic.add_argument(
        "--n-test", type=int, default=16, help="test subjects (default: 16)"
    )
    synthetic.add_argument(
        "--n-cohorts", type=int, default=6, help="cohorts / sites (default: 6)"
    )
    synthetic.add_argument(
        "--downsample",
        type=int,
        default=1,
        help="integer downsampling factor of the 1 mm grid (tests use 4); default 1",
    )
    synthetic.add_argument(
        "--n-generalizability",
        type=_non_negative_int,
        default=16,
        metavar="N",
        help="subjects of unseen cohorts in data/generalizability (default: 16; "
        "0: none)",
    )
    synthetic.add_argument(
        "--jobs",
        type=_positive_int,
        default=None,
        metavar="N",
        help="worker processes (default: one per usable CPU core for 1-2 mm "
        "volumes, as memory allows; 1 for coarser grids)",
    )
    atlas = parser.add_argument_group("real ATLAS R2.0 archive (--atlas)")
    atlas.add_argument(
        "--atlas",
        action="store_true",
        help="install the real, encrypted ATLAS R2.0 archive instead",
    )
    atlas.add_argument(
        "--archive",
        type=Path,
        default=None,
        help="ATLAS_R2.0_encrypted.tar.gz already downloaded (else it is downloaded)",
    )
    atlas.add_argument(
        "--url", default=ATLAS_URL, help="where to download the archive from"
    )
    atlas.add_argument(
        "--password-file",
        type=Path,
        default=None,
        help="file holding the password (else $ATLAS_PASSWORD, else a prompt)",
    )
    atlas.add_argument(
        "--skip-checksum",
        action="store_true",
        help="do not check the archive's SHA-256 (for other releases)",
    )
    atlas.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="share of labelled subjects held out as data/test (default: 0.2)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        if args.atlas:
            from .archive import install_atlas

            install_atlas(
                output_dir=args.output,
                archive=args.archive,
                url=args.url,
                password_file=args.password_file,
                skip_checksum=args.skip_checksum,
                test_fraction=args.test_fraction,
                seed=args.seed,
                force=args.force,
                progress=not args.quiet,
            )
        else:
            from .synthetic import build_sample

            build_sample(
                output_dir=args.output,
                n_train=args.n_train,
                n_test=args.n_test,
                n_cohorts=args.n_cohorts,
                seed=args.seed,
                downsample=args.downsample,
                force=args.force,
                progress=not args.quiet,
                n_jobs=args.jobs,
                n_generalizability=args.n_generalizability,
            )
    except (DataError, OSError) as error:
        if isinstance(error.__cause__, KeyboardInterrupt):
            print(f"download_data.py: interrupted: {error}", file=sys.stderr)
            return 130
        print(f"download_data.py: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "download_data.py: interrupted; nothing half-written was kept.",
            file=sys.stderr,
        )
        return 130
    return 0


def _positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    return _integer_at_least(text, 1, "a positive integer")


def _non_negative_int(text: str) -> int:
    """argparse type: an integer of at least 0."""
    return _integer_at_least(text, 0, "an integer >= 0")


def _integer_at_least(text: str, minimum: int, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value
