"""`python -m worker`: one worker process, without the rest of the llamaherd command line.

The worker starts its split models' children this way, so the data plane never runs the
control plane's code.
"""

from __future__ import annotations

import argparse
import sys

from worker.cli import DESCRIPTION, configure_parser


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m worker", description=DESCRIPTION)
    configure_parser(parser)
    args = parser.parse_args()
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
