"""``mechbench`` on the command line: list models, measure accuracy, validate baselines.

    mechbench models
    mechbench accuracy toy-goat --n 500 --seed 0
    mechbench baselines
"""

from __future__ import annotations

import argparse
import sys

from mechbench.errors import MechbenchError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mechbench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list the registered models")
    acc = sub.add_parser("accuracy", help="top-1 entity-tracking accuracy of a model")
    acc.add_argument("model")
    acc.add_argument("--n", type=int, default=500)
    acc.add_argument("--seed", type=int, default=0)
    acc.add_argument("--boxes", type=int, default=7)
    acc.add_argument("--device", default="cpu")
    acc.add_argument("--dtype", default="float32")
    base = sub.add_parser("baselines", help="check every baseline file against the schema")
    base.add_argument("--dir", default=None)
    args = parser.parse_args(argv)
    try:
        if args.command == "models":
            from mechbench.models.registry import REGISTRY, resolve

            for name, spec in REGISTRY.items():
                r = resolve(name)
                print(f"{name:12} {spec.kind:6} {r.base}{' + ' + r.adapter if r.adapter else ''}  {spec.description}")
        elif args.command == "accuracy":
            from mechbench.api import accuracy

            value = accuracy(args.model, n_examples=args.n, seed=args.seed, num_boxes=args.boxes,
                             device=args.device, dtype=args.dtype)
            print(f"{args.model}: accuracy {value:.4f} on {args.n} examples (seed {args.seed}, {args.boxes} boxes)")
        elif args.command == "baselines":
            from pathlib import Path

            from mechbench import baselines

            directory = Path(args.dir) if args.dir else baselines.DEFAULT_DIR
            for path in sorted(directory.glob("*.json")):
                b = baselines.load(path.stem, directory)
                print(f"{path.name}: {len(b.records)} records ok")
    except MechbenchError as e:
        print(f"mechbench: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
