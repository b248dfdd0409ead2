"""``python -m mechbench.zoo train [--only NAME] [--out DIR]`` retrains the toy zoo from scratch;
``python -m mechbench.zoo smoke [--steps N]`` runs a few steps of a tiny config;
``python -m mechbench.zoo cards [--out DIR]`` evaluates the models and (re)writes their model cards."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _pin_cpu_and_reexec(argv: list[str]) -> None:
    """Training re-runs this command with the pinned CPU environment: it must be set before torch loads."""
    from mechbench.zoo.train import PINNED_CPU_ENV, unpinned_cpu_settings

    if unpinned_cpu_settings() and not os.environ.get("MECHBENCH_ZOO_REEXEC"):
        env = {**os.environ, **PINNED_CPU_ENV, "MECHBENCH_ZOO_REEXEC": "1"}
        print(
            f"re-running with pinned CPU kernels: {' '.join(f'{k}={v}' for k, v in PINNED_CPU_ENV.items())}", flush=True
        )
        os.execve(sys.executable, [sys.executable, "-m", "mechbench.zoo", *argv], env)


def main(argv: list[str] | None = None) -> int:
    from mechbench.zoo.train import MODELS_DIR, ZOO

    p = argparse.ArgumentParser(prog="python -m mechbench.zoo", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="retrain the zoo (or one model) from scratch")
    t.add_argument("--only", choices=ZOO, help="train only this model (fine-tunes need toy-llama in --out)")
    t.add_argument("--out", type=Path, default=MODELS_DIR, help=f"where the model folders go ({MODELS_DIR})")
    t.add_argument("--smoke", action="store_true", help="a few steps on a tiny config instead (for CI)")
    t.add_argument("--no-cards", action="store_true", help="do not evaluate and write model cards")
    s = sub.add_parser("smoke", help="a few training steps on a tiny config")
    s.add_argument("--steps", type=int, default=8)
    c = sub.add_parser("cards", help="evaluate the models and write their README.md model cards")
    c.add_argument("--out", type=Path, default=MODELS_DIR)
    r = sub.add_parser("compare", help="does a retrained zoo reproduce the shipped weights bit for bit?")
    r.add_argument("retrained", type=Path, help="the --out folder of a retrain")
    r.add_argument("--zoo", type=Path, default=MODELS_DIR, help=f"the shipped zoo ({MODELS_DIR})")
    r.add_argument("--record", action="store_true", help="append the outcome to the shipped training.json files")
    pr = sub.add_parser("probes", help="train fine-tunes of toy-llama the project never shipped (for comparison mode)")
    pr.add_argument("--out", type=Path, required=True, help="where the probe folders go")
    pr.add_argument("--only", action="append", default=None, help="train only these probes")
    pr.add_argument(
        "--checkpoints", type=int, default=None, metavar="N", help="also save every N steps into <out>/<name>-run/"
    )
    args = p.parse_args(argv)
    if args.cmd == "train" and not args.smoke and argv is None:
        _pin_cpu_and_reexec(sys.argv[1:])

    if args.cmd == "smoke" or (args.cmd == "train" and args.smoke):
        from mechbench.zoo.train import smoke_train

        print(json.dumps(smoke_train(getattr(args, "steps", 8)), indent=1))
        return 0
    if args.cmd == "probes":
        from mechbench.zoo.probes import train_probes

        train_probes(args.out, args.only, checkpoints_every=args.checkpoints)
        return 0
    if args.cmd == "compare":
        from mechbench.zoo.reproduce import compare_zoos, describe, record_reproductions

        rows = compare_zoos(args.zoo, args.retrained)
        if not rows:
            print(f"no model has a training.json in both {args.zoo} and {args.retrained}", file=sys.stderr)
            return 2
        for row in rows:
            print(f"{row['model']}: {describe(row)}")
        if args.record:
            record_reproductions(args.zoo, rows)
        return 0 if all(row["identical"] for row in rows) else 1
    if args.cmd == "train":
        from mechbench.zoo.train import train_zoo

        train_zoo(args.out, args.only)
        if args.no_cards:
            return 0
    from mechbench.zoo.cards import write_cards

    write_cards(args.out, [args.only] if getattr(args, "only", None) else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
