"""``atlas-ramp``: one command line for everything the kit adds to ``ramp-test``.

Each sub-command is the command line of one module, imported only when it runs
(the server's commands need ramp-board, the others must not)::

    atlas-ramp evaluate --submission voxel_classifier --data data/generalizability
    atlas-ramp server deploy --deployment-dir /srv/ramp ...

``python -m atlas_ramp ...`` runs the same. ``atlas-ramp <command> --help`` gives
the options of one command.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module whose ``main(argv)`` runs it, one line for ``--help``)
COMMANDS = {
    "evaluate": (
        "atlas_ramp.results.evaluate",
        "train a submission and score it on any labelled folder",
    ),
    "report": (
        "atlas_ramp.results.report",
        "an HTML report of a submission's scores (also from saved predictions)",
    ),
    "montage": ("atlas_ramp.results.montage", "a contact sheet of a split's subjects"),
    "export": (
        "atlas_ramp.results.export",
        "a submission's predictions as BIDS lesion masks",
    ),
    "instructor": (
        "atlas_ramp.course.instructor",
        "a course's private (labelled) and public data folders",
    ),
    "server": (
        "atlas_ramp.course.server",
        "run a course on a RAMP server: deploy an event, dispatch its submissions",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: the sub-commands, each with its one line."""
    parser = argparse.ArgumentParser(
        prog="atlas-ramp",
        description="The ATLAS stroke-lesion RAMP kit's commands, beside "
        "ramp-workflow's ramp-test and ramp-blend.",
        epilog="`atlas-ramp <command> --help` lists the options of a command.",
    )
    commands = parser.add_subparsers(dest="command", metavar="<command>")
    for name, (_, summary) in COMMANDS.items():
        # The command's own parser reads its options: this one only names it.
        commands.add_parser(name, help=summary, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``atlas-ramp``; returns the process exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv[:1])  # --help, or a clear "invalid choice" error
        parser.print_help()
        return 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest)


if __name__ == "__main__":
    raise SystemExit(main())
