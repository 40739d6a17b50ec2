"""`python -m worker`: one worker process, without the rest of the llamaherd command line.

The worker starts its split models' children this way, so the data plane never runs the
control plane's code; `llamaherd up` starts its workers this way too, with
LLAMAHERD_DIE_WITH_PARENT set to its pid so that they die with it (worker.split.lifetime).
"""

from __future__ import annotations

import argparse
import os
import sys

from worker.cli import DESCRIPTION, configure_parser
from worker.split.lifetime import DIE_WITH_PARENT_ENV, die_with_parent


def main() -> int:
    # Popped, so the worker's own children (split models) are not tied to our parent.
    parent = os.environ.pop(DIE_WITH_PARENT_ENV, "")
    if parent:
        die_with_parent(int(parent))
    parser = argparse.ArgumentParser(prog="python -m worker", description=DESCRIPTION)
    configure_parser(parser)
    args = parser.parse_args()
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
