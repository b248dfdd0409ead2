"""``mechbench`` on the command line: list models, measure accuracy, validate baselines.

mechbench models
mechbench accuracy toy-goat --n 500 --seed 0
mechbench baselines
mechbench discover toy-llama --store     # path-patching circuit -> baselines/circuits.json
mechbench report                         # results/results.jsonl -> results/report.md and figures
mechbench compare /ckpt/my-ft --base toy-llama [--quick]   # side-by-side report and a mechanism verdict
mechbench calibrate toy-llama --seeds 10 [--plant readers]  # false-alarm audit (and power on a planted change)
mechbench baseline /ckpt/my-base --baselines-dir mine/ [--boxes 3]  # a new base: circuit and every baseline
"""

from __future__ import annotations

import argparse
import sys

from mechbench.calibrate import PLANTS
from mechbench.errors import MechbenchError
from mechbench.options import RESULTS_DIR, add_command_options


def build_parser() -> argparse.ArgumentParser:
    """The ``mechbench`` command line's parser."""
    # the options a command shares with the pytest plugin (--device, --dtype, --seed, --bos, --baselines-dir,
    # --results-dir, ...) come from their one table, mechbench/options.py: the same choices and defaults in both
    parser = argparse.ArgumentParser(prog="mechbench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list the registered models")
    acc = sub.add_parser("accuracy", help="top-1 entity-tracking accuracy of a model")
    acc.add_argument("model")
    acc.add_argument("--n", type=int, default=500)
    add_command_options(acc, "accuracy")
    base = sub.add_parser("baselines", help="check every baseline file against the schema")
    base.add_argument("--dir", default=None, help="the baseline files' directory (default: the checkout's baselines/)")
    disc = sub.add_parser("discover", help="find a model's circuit by iterated path patching (docs/paper.md §4)")
    disc.add_argument("model")
    from mechbench.models.registry import CIRCUITS  # plain data: no torch behind it

    disc.add_argument(
        "--config",
        default=None,
        help=f"discovery settings of a stored circuit ({', '.join(CIRCUITS)}; default: the model's own if "
        f"it has one, else chosen from its shape: the paper's chain from 16 layers, the toy chain below, "
        f"head counts scaled by its heads; the choice is printed)",
    )
    disc.add_argument(
        "--steps",
        choices=("paper", "toy"),
        default=None,
        help="paper: D->C->B->A; toy: no position-detector step, readers feed the value fetchers",
    )
    disc.add_argument("--pairs", type=int, default=None, help="noise pairs (the paper: 300)")
    disc.add_argument("--seed", type=int, default=None, help="pairs seed (the paper's Llama run: 20)")
    disc.add_argument("--receivers", default=None, metavar="G=K,...", help="heads passed on as receivers per group")
    disc.add_argument("--keep", default=None, metavar="G=K,...", help="heads kept in the circuit per group")
    disc.add_argument("--min-effect", type=float, default=None, help="keep only heads with score below -this")
    disc.add_argument("--name", default=None, help="circuit name (default: the model's)")
    disc.add_argument("--store", action="store_true", help="store the circuit in <--baselines-dir>/circuits.json")
    disc.add_argument(
        "--work-dir",
        default=f"{RESULTS_DIR}/discovery",
        help=f"each finished step is saved here; rerunning the same command resumes (default: "
        f"{RESULTS_DIR}/discovery, the cache the pytest plugin's comparisons read under "
        f"--results-dir)",
    )
    disc.add_argument(
        "--scores",
        default=None,
        help="write the score tables and circuit to this JSON file (--circuit FILE reads it as is)",
    )
    add_command_options(disc, "discover")
    bl = sub.add_parser(
        "baseline",
        help="a new base end to end: chance guard, discovery, circuit stored, every claim's baselines stored "
        "and checked (resumable)",
    )
    bl.add_argument("model", help="the base: a directory, hub id or registered name")
    bl.add_argument("--config", default=None, help="discovery settings of a stored circuit (default: from the shape)")
    bl.add_argument("--name", default=None, help="circuit name (default: the directory's name)")
    bl.add_argument("--claims", default=None, help="comma-separated subset of the claims (default: all)")
    bl.add_argument(
        "--check-seed",
        type=int,
        default=0,
        help="seed of the check run after storing (default 0: the stored sample, re-measured; S > 0: fresh "
        "prompts, each claim judged by its independent-sample tolerance)",
    )
    add_command_options(bl, "baseline")
    rep = sub.add_parser("report", help="tables and figures of the latest measurements in a results file")
    rep.add_argument(
        "runs",
        nargs="*",
        help="results directories or results.jsonl files of several runs (a CI matrix's artifacts, a job array's "
        "--results-dir): joined, the newest measurement per claim and keys, disagreements said (default: --results)",
    )
    rep.add_argument("--results", default=f"{RESULTS_DIR}/results.jsonl")
    rep.add_argument("--out", default=RESULTS_DIR, help="directory for report.md and the figures")
    rep.add_argument("--no-figures", action="store_true")
    cmp = sub.add_parser("compare", help="a new fine-tune beside its base: every claim side by side, and a verdict")
    cmp.add_argument(
        "model",
        nargs="+",
        help="the fine-tune: registered name, directory, hub id or base+adapter; several, or a directory of "
        "checkpoints (checkpoint-N), compare a training run step by step (a trajectory)",
    )
    cmp.add_argument("--base", default=None, help="the model it was tuned from (default: its registered base)")
    cmp.add_argument("--name", default=None, help="a trajectory's name (default: the checkpoints' directory)")
    cmp.add_argument(
        "--shard",
        default=None,
        metavar="K/N",
        help="a trajectory's checkpoints K, K+N, ... only (N processes or job-array tasks share one run; the "
        "others' records are read back, and the report is written once every checkpoint has one)",
    )
    cmp.add_argument("--circuit", default=None, help="circuit name or JSON file (default: the base's)")
    cmp.add_argument("--claims", default=None, help="comma-separated subset of the claims (default: all)")
    add_command_options(cmp, "compare")
    cmp.add_argument("--out", default=None, help="directory of the report and figures (default: --results-dir)")
    cal = sub.add_parser("calibrate", help="false-alarm audit: each claim under fresh seeds on an unchanged model")
    cal.add_argument("model")
    cal.add_argument("--seeds", type=int, default=10, help="seeds 1..N (the baselines were measured at seed 0)")
    cal.add_argument(
        "--plant",
        choices=tuple(PLANTS),
        default=None,
        help="audit a planted change of mechanism instead (a copy of MODEL with circuit heads silenced, "
        "checked against MODEL's baselines): it should fail",
    )
    cal.add_argument("--out", default=f"{RESULTS_DIR}/calibrate")
    cal.add_argument("-k", dest="select", default=None, help="pytest -k expression: a subset of the claims")
    add_command_options(cal, "calibrate")  # each seed's pytest runs with them
    pln = sub.add_parser("plan", help="peak GPU memory, host memory and GPU time of every claim, before loading")
    pln.add_argument("models", nargs="+", help="registered paper models, or local model directories")
    pln.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    pln.add_argument("--batch-size", default="50", help="prompts per forward, or auto (the largest that fits)")
    pln.add_argument("--gpu-gib", type=float, default=80.0, help="GPU memory to plan against (default 80)")
    pln.add_argument(
        "--gpus",
        type=int,
        default=1,
        help="GPUs of the node: the wall time of pytest -n GPUS (a model's claims on one GPU, the longest the floor)",
    )
    add_command_options(pln, "plan")
    pln.add_argument(
        "--own-circuit",
        action="store_true",
        help="also plan each model on its own circuit (--circuit=MODEL: DCM, path patching, minimality), "
        "as ci/run-gpu.sh runs Goat and FLoat",
    )
    pln.add_argument(
        "--tflops",
        type=float,
        default=50.0,
        help="sustained bf16 TFLOP/s of the GPU (default 50: an H100 at about half its dense peak)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _validate(args)
        if args.command == "models":
            from mechbench.models.registry import REGISTRY, resolve

            for name, spec in REGISTRY.items():
                r = resolve(name)
                print(
                    f"{name:12} {spec.kind:6} {r.weights}{' + ' + r.adapter if r.adapter else ''}  {spec.description}"
                )
        elif args.command == "accuracy":
            from mechbench.api import accuracy_check

            task = accuracy_check(
                args.model,
                n_examples=args.n,
                seed=args.seed,
                num_boxes=args.boxes,
                device=args.device,
                dtype=args.dtype,
                **_load_options(args),
            )
            # the chance guard's verdict beside the number: a model at (or below) chance has no mechanism to measure
            margin = f"{task.z:g} cluster-robust standard errors ({task.z:g} x {task.se:.3f})"
            if task.passed:
                verdict = f"does the task (above chance by more than {margin})"
            else:
                verdict = (
                    f"{'BELOW CHANCE' if task.below else 'AT CHANCE'}: not above chance by {margin}; the model does "
                    f"not do the task and no circuit claim applies to it"
                )
            print(
                f"{args.model}: accuracy {task.accuracy:.4f} on {args.n} examples (seed {args.seed}, {args.boxes} "
                f"boxes; chance {task.chance:.3f}): {verdict}"
            )
        elif args.command == "baselines":
            from mechbench import baselines

            valid, invalid = baselines.check_directory(args.dir)  # every file, then every invalid one named
            for line in valid:
                print(line)
            if invalid:
                raise invalid
        elif args.command == "report":
            from mechbench.report import write_report

            try:
                print(write_report(args.runs or args.results, args.out, figures=not args.no_figures))
            except OSError as e:  # the directory was checked: it went read-only or full while writing
                raise MechbenchError(
                    f"the report could not be written to --out {args.out} ({e.strerror or e}): "
                    f"pass a directory you can write"
                ) from None
        elif args.command == "discover":
            _discover(args)
        elif args.command == "baseline":
            _baseline(args)
        elif args.command == "compare":
            _compare(args)
        elif args.command == "calibrate":
            _calibrate(args)
        elif args.command == "plan":
            _plan(args)
    except MechbenchError as e:
        print(f"mechbench: error: {e}", file=sys.stderr)
        return 2
    return 0


def _plan(args) -> None:
    from mechbench import plan
    from mechbench.models.registry import CIRCUITS
    from mechbench.validate import positive

    positive("--gpus", args.gpus)
    hours, fits, per_model, widths = 0.0, True, {}, {}
    for model in args.models:
        # a model wider than one GPU is planned over the fewest GPUs a device map needs for it, and holds them all
        widths[model], largest = plan.gpus_needed(model, args.dtype, args.gpu_gib * plan.GIB)
        gpu_gib = args.gpu_gib * widths[model]
        if widths[model] > 1:
            print(
                f"{model} in {args.dtype} does not fit one {args.gpu_gib:g} GiB GPU ({largest.claim} needs "
                f"{largest.device_bytes / plan.GIB:.1f} GiB at its smallest batch; {plan.HEADROOM:.0%} of each GPU "
                f"is kept free): load it "
                f"over {widths[model]} GPUs with --device cuda --device-map auto (accelerate places whole layers; "
                f"planned below against {gpu_gib:g} GiB in all). Under pytest -n, a worker then needs "
                f"{widths[model]} GPUs of its own: one job per model with CUDA_VISIBLE_DEVICES naming them "
                f"(docs/running.md, 'Many GPUs')\n"
            )
        batch = (
            plan.choose_batch_size(model, args.dtype, gpu_gib * plan.GIB)
            if args.batch_size == "auto"
            else plan.resolve_batch_size(args.batch_size, "cpu", args.dtype, [model])
        )
        circuits = [plan.default_circuit(model, args.baselines_dir)]
        if args.own_circuit and model not in circuits and model in CIRCUITS:
            circuits.append(model)
        for circuit in circuits:
            plans = plan.plan(
                model, args.dtype, batch, tflops=args.tflops, circuit=circuit, baselines_dir=args.baselines_dir
            )
            print(plan.format_plan(model, plans, args.dtype, batch, gpu_gib, circuit) + "\n")
            # GPU hours held: a model spread over k GPUs holds all k for its time
            hours += widths[model] * sum(p.gpu_seconds for p in plans) / 3600
            per_model[model] = per_model.get(model, 0.0) + sum(p.gpu_seconds for p in plans) / 3600
            fits &= all(p.fits(gpu_gib * plan.GIB) for p in plans)
    print(
        f"in all: {hours:.1f} GPU hours at {args.tflops:g} TFLOP/s; "
        f"{'every claim fits' if fits else 'SOME CLAIM DOES NOT FIT'} in {args.gpu_gib:g} GiB"
        + (" GPUs, a model wider than one over several as said" if max(widths.values()) > 1 else "")
    )
    wider = {m: k for m, k in widths.items() if k > args.gpus}
    if wider:
        raise MechbenchError(
            "; ".join(f"{m} needs {k} GPUs of {args.gpu_gib:g} GiB under a device map" for m, k in wider.items())
            + f", and --gpus is {args.gpus}: plan with --gpus {max(wider.values())}, larger GPUs (--gpu-gib) or "
            f"--dtype bfloat16"
        )
    if args.gpus > 1:
        wall, ran = plan.wall_hours(per_model, args.gpus, widths)
        longest = max(per_model, key=per_model.get)
        print(
            f"on {args.gpus} GPUs (pytest -n {args.gpus}, a model's claims on one GPU): about {wall:.1f} hours of wall "
            f"time; the floor is the longest model's, {longest} {per_model[longest]:.1f} h. "
            + "; ".join(f"GPU {g}: {', '.join(models) or 'idle'}" for g, models in enumerate(ran))
        )
    if not fits:
        raise MechbenchError(
            "a claim's planned peak exceeds the GPU memory: use --dtype bfloat16 or a smaller --batch-size"
        )


def _load_options(args) -> dict:
    """The loader's opt-ins a command was given (mechbench.models.loading.chosen_options)."""
    from mechbench.models.loading import chosen_options

    return chosen_options(
        allow_pickle=args.allow_pickle,
        bos=args.bos,
        drop_multi_token=args.drop_multi_token,
        tokenizer=getattr(args, "tokenizer", None),
        device_map=getattr(args, "device_map", None),
    )


def _validate(args) -> None:
    """The options every command shares, checked before any model loads (mechbench.validate)."""
    from pathlib import Path

    from mechbench import validate

    for name, check in (
        ("dtype", validate.dtype),
        ("device", validate.device),
        ("seed", validate.seed),
        ("device_map", validate.device_map),
    ):
        if getattr(args, name, None) is not None:
            check(getattr(args, name))
    if getattr(args, "boxes", None) is not None:
        from mechbench.data.prompts import MAX_BOXES, MIN_BOXES

        if not MIN_BOXES <= args.boxes <= MAX_BOXES:
            raise MechbenchError(f"--boxes {args.boxes}: the task has {MIN_BOXES} to {MAX_BOXES} boxes (the paper: 7)")
    for name in ("n", "pairs", "seeds"):
        if getattr(args, name, None) is not None:
            validate.positive(f"--{name}", getattr(args, name))
    for name in ("model", "base"):
        if isinstance(getattr(args, name, None), str):
            validate.model_directory(getattr(args, name), getattr(args, "tokenizer", None))
    if getattr(args, "results_dir", None) and args.command == "compare":
        validate.writable_dir("--results-dir", Path(args.results_dir))
    if getattr(args, "out", None) and args.command in ("compare", "calibrate"):  # report's, once its results are read
        validate.writable_dir("--out", Path(args.out))
    for name, hint in (("tflops", " (the GPU's sustained TFLOP/s, e.g. 50)"), ("gpu_gib", " (e.g. 80)")):
        if getattr(args, name, None) is not None:
            validate.positive_number("--" + name.replace("_", "-"), getattr(args, name), hint)


def _calibrate(args) -> None:
    from pathlib import Path

    from mechbench.calibrate import describe_plant, plant, run_seeds, table
    from mechbench.validate import writable_dir

    # a model given as a path gets a directory of its own under --out, not the model's directory itself
    name = args.model.strip("/").replace("/", "_") + (f"-{args.plant}" if args.plant else "")
    out = writable_dir("--out", Path(args.out) / name)
    model, extra = args.model, ["-k", args.select] if args.select else []
    extra += [f"--device={args.device}", f"--dtype={args.dtype}"]
    extra += [f"--boxes={args.boxes}"] if args.boxes != 7 else []
    extra += [f"--tokenizer={args.tokenizer}"] if args.tokenizer else []
    extra += [f"--device-map={args.device_map}"] if args.device_map else []
    extra += [f"--baselines-dir={args.baselines_dir}"] if args.baselines_dir else []
    if args.plant:  # in the circuit the suites evaluate on the model, the one its baselines were measured with
        from mechbench.plan import default_circuit

        circuit = default_circuit(args.model, args.baselines_dir)
        model = str(plant(args.model, args.plant, out, circuit, getattr(args, "baselines_dir", None)))
        extra += [f"--baseline-model={args.model}", f"--circuit={circuit}"]
        from mechbench.models.registry import base_name_of

        try:  # the copy's base is the model's: CMAP patches the planted fine-tune into it
            extra += [f"--base-model={base_name_of(args.model)}"]
        except MechbenchError:
            pass  # a model with no base: the claims that need one skip, as on the model itself
        print(
            f"planted: {describe_plant(args.model, args.plant, circuit, getattr(args, 'baselines_dir', None))} -> {model}"
        )
    failures = run_seeds(model, list(range(1, args.seeds + 1)), out, extra, log=lambda m: print(m, file=sys.stderr))
    print(table(failures, args.seeds))


def _compare(args) -> None:
    from pathlib import Path

    from mechbench import validate
    from mechbench.api import get_model
    from mechbench.circuits import Circuit
    from mechbench.compare import CLAIMS, LANES, Comparison, base_circuit_name, record, record_verdict
    from mechbench.models.registry import base_name_of
    from mechbench.report import write_comparison_report
    from mechbench.results import ResultsWriter

    claims = list(CLAIMS) if args.claims is None else list(dict.fromkeys(c.strip() for c in args.claims.split(",")))
    unknown = [c for c in claims if c not in CLAIMS]
    if "" in claims:  # "" or "a,,b": an empty selection runs nothing the user meant (it ran every claim)
        raise MechbenchError(
            f"--claims {args.claims!r} names an empty claim; give a comma-separated list of: "
            f"{', '.join(CLAIMS)} (or leave --claims out for all)"
        )
    if unknown:
        raise MechbenchError(f"unknown claim(s) {', '.join(unknown)}; known: {', '.join(CLAIMS)}")
    from mechbench.trajectory import is_trajectory

    trajectory = is_trajectory(args.model)
    if not trajectory and (args.shard or args.name):
        raise MechbenchError("--shard and --name are for a trajectory: pass several checkpoints or their directory")
    if trajectory:
        from mechbench.trajectory import checkpoints, shard_of

        shard_of(args.shard)  # checked before any model loads
        refs = [c.ref for c in checkpoints(args.model)]
        for ref in refs:
            validate.model_directory(ref, getattr(args, "tokenizer", None))
        if not args.base:
            raise MechbenchError(
                "a trajectory needs --base: the model its checkpoints were tuned from (measured once, and each "
                "checkpoint against it)"
            )
    else:
        refs = [args.model[0]]
        validate.model_directory(refs[0], getattr(args, "tokenizer", None))
    base_name = args.base or base_name_of(refs[0])
    circuit, no_circuit = None, None
    if args.circuit:  # a circuit the user named must load
        circuit = Circuit.load(args.circuit, args.baselines_dir)
    else:  # none found: the claims that need one are reported as not run, the others (accuracy) run
        try:
            circuit = Circuit.load(base_circuit_name(base_name, args.baselines_dir), args.baselines_dir)
        except MechbenchError as e:
            no_circuit = str(e)
    try:  # the base's shape from its config, where it can be read without loading: a wrong circuit fails first
        from mechbench.plan import shape_of

        shape = shape_of(base_name)
    except MechbenchError:
        shape = None  # checked once the base has loaded
    if shape is not None and circuit is not None:
        try:
            circuit.check_fits(shape.n_layers, shape.n_heads)
        except MechbenchError as e:
            raise MechbenchError(f"--circuit {args.circuit or circuit.name} on {base_name}: {e}") from None
    results = ResultsWriter(
        args.results_dir, boxes=args.boxes
    )  # made before any model loads: a bad directory fails first
    base = get_model(base_name, device=args.device, dtype=args.dtype, **_load_options(args))
    if circuit is None:  # stored under another name with the base's weights fingerprint
        try:
            name = base_circuit_name(base_name, args.baselines_dir, base.fingerprint.get("weights_sha256"))
            circuit, no_circuit = Circuit.load(name, args.baselines_dir), None
        except MechbenchError:
            print(f"mechbench: {no_circuit}; the claims that need a circuit are reported as not run", file=sys.stderr)

    def comparison_of(ref: str) -> Comparison:
        return Comparison(
            get_model(ref, device=args.device, dtype=args.dtype, keep=(base_name,), **_load_options(args)),
            get_model(base_name, device=args.device, dtype=args.dtype, keep=(ref,), **_load_options(args)),
            circuit,
            LANES["quick" if args.quick else "full"],
            args.seed,
            args.baselines_dir,
            tuple(args.reference) if args.reference else None,
            log=lambda msg: print(msg, file=sys.stderr, flush=True),
            discovery_cache=Path(args.results_dir) / "discovery",
            boxes=args.boxes,
            no_circuit=no_circuit,
        )

    if trajectory:
        _trajectory(args, refs, base, circuit, claims, comparison_of, results)
        return
    comparison = comparison_of(refs[0])
    fine_tune = comparison.fine_tune
    for claim in claims:
        record(results, comparison, comparison.claim(claim))
    if comparison.verdict_ready():
        verdict = comparison.verdict()
        record_verdict(results, comparison, verdict)
        print(f"{fine_tune.name} against {base.name}: {verdict.label}")
    for claim, why in comparison.not_run().items():
        print(f"{claim}: could not run: {why}", file=sys.stderr)
    print(
        validate.written_or_kept(
            f"the comparison report (its measurements are in {results.path})",
            Path(args.out or args.results_dir),
            lambda out: write_comparison_report(comparison, out, results_path=str(results.path)),
        )
    )


def _trajectory(args, refs, base, circuit, claims, comparison_of, results) -> None:
    """``mechbench compare CKPT1 CKPT2 ... --base B``: every checkpoint against the base (mechbench.trajectory)."""
    from pathlib import Path

    from mechbench import validate
    from mechbench.api import release
    from mechbench.results import versions
    from mechbench.trajectory import files_key, run_trajectory, shard_of, write_trajectory_report

    key = {
        "base": base.name,
        "base_weights": base.fingerprint.get("weights_sha256"),
        "base_files": files_key(base.name),
        "circuit": circuit.to_json() if circuit is not None else None,
        "lane": "quick" if args.quick else "full",
        "seed": args.seed,
        "boxes": args.boxes,
        "dtype": args.dtype,
        # what changes the token ids or the numbers shown beside them (not where the model sits: --device-map)
        "loading": {k: v for k, v in _load_options(args).items() if k != "device_map"},
        "baselines": str(Path(args.baselines_dir).resolve()) if args.baselines_dir else None,
        "references": list(args.reference) if args.reference else None,
        "mechbench": versions()["mechbench"],
    }
    traj = run_trajectory(
        refs,
        base.name,
        comparison_of,
        claims,
        key,
        Path(args.results_dir),
        name=args.name,
        shard=shard_of(args.shard),
        results=results,
        log=lambda msg: print(msg, file=sys.stderr, flush=True),
        release=lambda ref: release(args.device, keep=(base.name,)),
    )
    for step in traj.steps:
        if step.verdict:
            print(f"{step.checkpoint.describe()} ({step.checkpoint.ref}) against {base.name}: {step.verdict.label}")
    if traj.missing:
        print(
            f"mechbench: {len(traj.missing)} checkpoint(s) not measured yet (other shards): "
            f"{', '.join(c.describe() for c in traj.missing)}; the trajectory report is written by the run that "
            f"finds every checkpoint measured",
            file=sys.stderr,
        )
        return
    print(
        validate.written_or_kept(
            f"the trajectory report (each checkpoint's record is in {traj.directory})",
            Path(args.out or args.results_dir),
            lambda out: write_trajectory_report(traj, out),
        )
    )


def _baseline(args) -> None:
    from pathlib import Path

    from mechbench.claims import CLAIMS
    from mechbench.newbase import baseline

    if not args.baselines_dir:
        raise MechbenchError(
            "mechbench baseline needs --baselines-dir DIR: the directory its circuit and baselines go to (made if "
            "missing; the checkout's baselines/ holds the paper's and the toy zoo's)"
        )
    claims = None if args.claims is None else [c.strip() for c in args.claims.split(",") if c.strip()]
    unknown = [c for c in claims or () if c not in CLAIMS]
    if unknown or claims == []:
        raise MechbenchError(f"--claims {args.claims!r}: unknown or empty; known: {', '.join(CLAIMS)}")
    summary = baseline(
        args.model,
        Path(args.baselines_dir),
        Path(args.results_dir),
        _load_options(args),
        boxes=args.boxes,
        device=args.device,
        dtype=args.dtype,
        config_name=args.config,
        name=args.name,
        claims=claims,
        check_seed=args.check_seed,
        log=lambda m: print(m, flush=True),
    )
    if summary["check"]["exit_code"] != 0:
        raise MechbenchError(
            f"the check run failed ({summary['check']['counts']}): the failures are listed above; the baselines "
            f"are stored in {args.baselines_dir}"
        )


def _group_ints(option: str, text: str | None, groups) -> dict[str, int]:
    """``--receivers``/``--keep``: GROUP=K,... with each GROUP one of the configured steps' and each K at least 1."""
    if text is None:
        return {}
    try:
        pairs = [(g.strip(), int(k)) for g, k in (item.split("=") for item in text.split(","))]
    except ValueError:
        raise MechbenchError(
            f"{option} {text!r}: expected GROUP=K,... (e.g. value_fetcher=8,pos_transmitter=3)"
        ) from None
    for group, k in pairs:
        if group not in groups:  # an unknown group would be ignored: the run would not be the one asked for
            raise MechbenchError(
                f"{option} {text!r}: no step finds group {group!r}; the steps find "
                f"{', '.join(groups)} (--steps chooses them)"
            )
        if k < 1:
            raise MechbenchError(f"{option} {text!r}: {group}={k}: give each group at least 1 head")
    if len({g for g, _ in pairs}) < len(pairs):
        raise MechbenchError(f"{option} {text!r}: a group is given twice; give each group once")
    return dict(pairs)


def _discover(args) -> None:
    import json
    import math
    from dataclasses import replace
    from pathlib import Path

    from mechbench import validate
    from mechbench.api import get_model
    from mechbench.methods.discovery import PAPER_STEPS, TOY_STEPS, checkpoint_path, discover
    from mechbench.models.discovery_settings import config_to_json
    from mechbench.models.registry import CIRCUITS

    # a stored circuit's settings are in the spec of the model it was found on
    config_name = args.config or (args.model if args.model in CIRCUITS else None)
    if args.config and args.config not in CIRCUITS:
        raise MechbenchError(f"no discovery settings named {args.config!r}; known: {', '.join(CIRCUITS)}")
    handle = None
    if config_name:
        config, why = CIRCUITS[config_name].discovery, f"{config_name}'s stored settings"
    else:  # chosen from the model's shape (mechbench.newbase.settings_for), read from its config where it can be
        from mechbench.newbase import settings_for
        from mechbench.plan import shape_of

        try:
            shape = shape_of(args.model)
        except MechbenchError:
            handle = get_model(args.model, device=args.device, dtype=args.dtype, **_load_options(args))
            shape = handle.shape
        config, why = settings_for(shape)
    config = replace(config, num_boxes=args.boxes)
    if args.min_effect is not None and not (math.isfinite(args.min_effect) and args.min_effect >= 0):
        raise MechbenchError(
            f"--min-effect {args.min_effect:g}: give a non-negative number (a head is kept when its "
            f"score is below -min-effect; 0 keeps every head that lowers the logit difference)"
        )
    name = args.name if args.name is not None else args.model
    if not name.strip():
        raise MechbenchError("--name '': give the circuit a name (default: the model's)")
    steps = config.steps if args.steps is None else (PAPER_STEPS if args.steps == "paper" else TOY_STEPS)
    groups = [step.group for step in steps]
    receivers, keep = _group_ints("--receivers", args.receivers, groups), _group_ints("--keep", args.keep, groups)
    changes = {
        k: v
        for k, v in {
            "steps": None if args.steps is None else steps,
            "receiver_k": tuple({**dict(config.receiver_k), **receivers}.items()) if receivers else None,
            "circuit_k": tuple({**dict(config.circuit_k), **keep}.items()) if keep else None,
            "min_effect": args.min_effect,
            "n_pairs": args.pairs,
            "seed": args.seed,
        }.items()
        if v is not None
    }
    config = replace(config, **changes)
    # every place the finished work goes, checked before the model loads: none can fail after the discovery
    validate.writable_dir("--work-dir", Path(args.work_dir))
    if args.scores:
        validate.writable_file("--scores", Path(args.scores))
    if args.store:
        from mechbench import baselines
        from mechbench.circuits import check_storable, store_circuit

        validate.writable_dir("--baselines-dir", Path(args.baselines_dir or baselines.DEFAULT_DIR))
        check_storable(name, args.baselines_dir)
    from mechbench.newbase import circuit_lines, require_task, without_null_groups

    handle = handle or get_model(args.model, device=args.device, dtype=args.dtype, **_load_options(args))
    task = require_task(handle, args.boxes)  # the chance guard first: a circuit found on a model at chance is noise
    print(f"{task.message(handle.name)} ({args.boxes} boxes)", file=sys.stderr)
    print(
        f"discovery settings: {why}{' (changed: ' + ', '.join(changes) + ')' if changes else ''}",
        file=sys.stderr,
    )
    found = discover(
        handle, name, config, log=lambda msg: print(msg, file=sys.stderr, flush=True), cache_dir=args.work_dir
    )
    saved = checkpoint_path(handle, name, config, args.work_dir)[1]
    circuit, dropped, weak = without_null_groups(found, config.min_effect)
    lines = circuit_lines(found, circuit, dropped, weak)
    for line in lines[: len(dropped) + len(weak)]:
        print(line, file=sys.stderr)
    if not circuit.groups:
        raise MechbenchError(
            f"the discovery found no group with an effect (no head's score below -{config.min_effect:g} and 3 "
            f"standard errors; its scores are in {saved}): {args.model} does the task, but not through heads "
            f"these settings find; try other --config/--steps/--receivers, or lower --min-effect"
        )
    for line in lines[len(dropped) + len(weak) :]:  # the circuit itself, on stdout
        print(line)
    # what it was found on and with: a claim finds it by the fingerprint and re-runs the discovery as it was run
    stored = replace(circuit, fingerprint=handle.fingerprint.get("weights_sha256"), discovery=config_to_json(config))
    if args.scores:
        scores = Path(args.scores)
        validate.written_or_kept(
            f"--scores {scores}",
            scores.parent,
            lambda d: _write_text(
                d / scores.name,
                json.dumps({**found.to_json(), "circuit": stored.to_json()}, indent=1) + "\n",
            ),
        )
    if args.store:
        how = f"mechbench discover {args.model} ({why.split(':')[0]}{', changed: ' + ', '.join(changes) if changes else ''})"
        try:
            print(
                store_circuit(
                    stored,
                    how,
                    baselines_dir=args.baselines_dir,
                    fingerprint=stored.fingerprint,
                    discovery=stored.discovery,
                )
            )
        except OSError as e:  # checked before: the directory went read-only or full since
            raise MechbenchError(
                f"the circuit could not be stored ({e.strerror or e}); the discovery is saved in "
                f"{saved}: rerun the same command with a writable --baselines-dir and it is read back "
                f"without recomputing"
            ) from None


def _write_text(path, text: str):
    path.write_text(text)
    return path


if __name__ == "__main__":
    sys.exit(main())
