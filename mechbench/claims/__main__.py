"""python -m mechbench.claims [--write [README]]: the README's claims table from the registry."""

import argparse
from pathlib import Path

from mechbench.claims.readme import claims_table, write

parser = argparse.ArgumentParser(prog="python -m mechbench.claims", description=__doc__)
parser.add_argument(
    "--write",
    nargs="?",
    const="README.md",
    default=None,
    metavar="README",
    help="put the table into this README (default README.md) between its markers",
)
args = parser.parse_args()
if args.write:
    print(f"{args.write}: {'updated' if write(Path(args.write)) else 'already current'}")
else:
    print(claims_table())
