#!/usr/bin/env python
"""CSRec command line: train one model, run/resume an experiment grid, status, tables, report.

    python launch.py train --data ../shared/data/lastfm.csv --model gru4rec --out runs/gru4rec
    python launch.py run experiments/quickstart.yaml
    python launch.py table runs/quickstart --format latex

A mistake the user can fix (bad file, bad spec, bad value) prints one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys

from csrec.cli import COMMANDS
from csrec.errors import CSRecError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="launch.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add_arguments, _run, help_text) in COMMANDS.items():
        add_arguments(commands.add_parser(name, help=help_text, description=help_text))
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command][1](args) or 0
    except CSRecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished work is kept; `launch.py resume DIR` goes on from there", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
