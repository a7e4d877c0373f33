#!/usr/bin/env python
"""CSRec command line from a clone: the same commands as `csrec`, the console script pip installs
(csrec.cli, which documents them and their exit statuses).

    python launch.py train --data lastfm --model gru4rec --out runs/gru4rec
    python launch.py run experiments/quickstart.yaml
    python launch.py table runs/quickstart --format latex
"""

from __future__ import annotations

import sys
from functools import partial

from csrec import cli

Parser = cli.Parser
build_parser = partial(cli.build_parser, "launch.py")
main = partial(cli.main, prog="launch.py")

if __name__ == "__main__":
    sys.exit(main())
