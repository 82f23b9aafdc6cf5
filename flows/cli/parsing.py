"""The command line's arguments: argparse, with every usage error one line (exit status 2)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

__all__ = ["UsageError", "parse_args", "parser"]


class UsageError(Exception):
    """Bad arguments; the message is one line."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (raised, not printed with the usage)."""

    def error(self, message: str):  # noqa: D401
        command = self.prog.split()[-1] if " " in self.prog else None
        hint = f"flows {command} --help" if command else "flows --help"
        raise UsageError(f"{message} (see `{hint}`)")


def parser() -> argparse.ArgumentParser:
    """The ``flows`` parser: ``args.command`` is ``"run"`` or ``"show"``."""
    from .. import __version__

    top = _Parser(
        prog="flows",
        description="Run gradient descent and its continuous-time flows side by side.",
    )
    top.add_argument("--version", action="version", version=f"flows {__version__}")
    commands = top.add_subparsers(dest="command", metavar="{run,show}", required=True,
                                   parser_class=_Parser)
    run = commands.add_parser(
        "run", help="run the methods of a config file", description=(
            "Run every method of CONFIG on its problem and write the results to DIR; "
            "resume if DIR holds a checkpoint of the same configuration."
        ),
    )
    run.add_argument("config", metavar="CONFIG",
                     help="a TOML run configuration (see configs/README.md)")
    run.add_argument("--out", metavar="DIR",
                     help="output folder (default: runs/<config name>)")
    run.add_argument(
        "--overwrite", action="store_true",
        help="start afresh in DIR, replacing a run of another configuration or a damaged one",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    show = commands.add_parser(
        "show", help="summarize a run (finished or running) and refresh its plots",
        description="Print the summary of the run in DIR, finished or still going, and "
        "redraw its plots.",
    )
    show.add_argument("dir", metavar="DIR", help="a run folder written by `flows run`")
    show.add_argument("--no-plots", action="store_true", help="do not redraw the plots")
    return top


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The parsed arguments; raises `UsageError`, or SystemExit(0) after ``--help`` and
    ``--version`` have printed."""
    return parser().parse_args(argv)
