#!/usr/bin/env python
"""CSRec command line: train one model, run/resume an experiment grid, status, tables, report.

    python launch.py train --data lastfm --model gru4rec --out runs/gru4rec
    python launch.py run experiments/quickstart.yaml
    python launch.py table runs/quickstart --format latex

A mistake the user can fix (bad file, bad spec, bad value) prints one line and exits with status 2;
a run whose trials failed prints its (marked) table, names them and exits 3 (0 with --allow-failed);
Ctrl-C or SIGTERM stops a run with status 130 (`resume` goes on). docs/RELIABILITY.md lists them.
"""

from __future__ import annotations

import argparse
import signal
import sys
import warnings

from csrec.cli import COMMANDS
from csrec.errors import CSRecError


class Parser(argparse.ArgumentParser):
    """argparse whose usage mistakes are one line too (`launch.py COMMAND --help` shows the usage)."""

    def error(self, message: str):
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr if file is None else file)


def build_parser() -> Parser:
    """launch.py's command line: one subcommand each of csrec.cli.COMMANDS."""
    parser = Parser(prog="launch.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add_arguments, _run, help_text) in COMMANDS.items():
        add_arguments(commands.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    from csrec.runner.signals import sigterm_as_ctrl_c

    args = build_parser().parse_args(argv)
    previous = sigterm_as_ctrl_c()  # Slurm, Kubernetes and `timeout` stop a driver with SIGTERM: as Ctrl-C
    show = warnings.showwarning
    warnings.showwarning = _one_line_warning  # "warning: ..." lines, not Python's source-line format
    try:
        return COMMANDS[args.command][1](args) or 0
    except CSRecError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted: finished work is kept; `launch.py resume DIR` goes on from there", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = show
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
