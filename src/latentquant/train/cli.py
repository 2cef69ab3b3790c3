"""``latentquant train``, ``latentquant evaluate`` and ``latentquant export``: train a zoo model,
re-evaluate a run directory, write a run's trained weights to one file."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Any

from latentquant.cli import UsageError

_EPILOG = """examples:
  latentquant train --model qlae --dataset shapes3d --steps 3000 --seed 0 --out runs/qlae
  latentquant train --config configs/demo.yaml --out runs/demo batch_size=32 model_args.num_values=12
  latentquant train --resume runs/demo steps=6000
  latentquant evaluate runs/demo
  latentquant export runs/demo qlae_demo.safetensors

Settings are given as key=value anywhere on the command line, by their dotted name (optim.lr=3e-4,
encoder.name=tiny, model.args.num_values=12) or their flat name (lr=3e-4, encoder=tiny,
model_args.num_values=12); values are YAML (null, true, 3e-4, [10, 12]). A --config file holds the same
settings, nested or flat (a run's config.yaml is one). Precedence: defaults < --config file < flags <
key=value. --print-config shows every setting's resolved value; key=v1,v2 sweeps: see latentquant sweep.

"""


def register(subparsers: Any) -> None:
    """Add the ``train`` and ``evaluate`` sub-commands to the ``latentquant`` parser."""
    train = subparsers.add_parser(
        "train",
        help="train a zoo model, evaluate it and write a report",
        description="Train a zoo model (QLAE, AE, beta-VAE, beta-TCVAE, BioAE, VQ-VAE, QLInfoWGAN-GP, "
        "InfoWGAN-GP, WGAN-GP) with the paper's "
        "defaults, evaluate InfoM/InfoE/InfoC and PSNR, and write the run directory with report.html.",
        epilog=_EPILOG + _settings_listing(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("--config", type=Path, help="YAML file of settings (nested or flat)")
    train.add_argument(
        "--print-config",
        action="store_true",
        help="print every setting (value after --config, flags and overrides; default; description) and exit",
    )
    train.add_argument(
        "--model",
        help="zoo model: qlae, qlae_global, qlae_no_wd, ae, beta_vae, beta_tcvae, bioae, vqvae, "
        "qlinfowgan, qlinfowgan_no_wd, infowgan, wgan",
    )
    train.add_argument("--dataset", help="dataset name (shapes3d, dsprites, ...)")
    train.add_argument(
        "--data-path", help="path of the real dataset file, where the dataset loader needs one"
    )
    train.add_argument("--steps", type=int, help="optimizer steps in total")
    train.add_argument("--seed", type=int, help="random seed")
    train.add_argument("--out", type=Path, help="run directory to create")
    train.add_argument(
        "--resume", type=Path, metavar="DIR", help="continue the run in DIR from its checkpoint"
    )
    train.add_argument(
        "--compile",
        action="store_const",
        const="model",
        default=None,
        help="torch.compile the whole forward pass, the same as compile=model (compile=decoder: the decoder "
        "alone, most of the gain at eager precision)",
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--device", help="auto (CUDA when available), cpu or cuda[:i]; the same as device=...")
    train.add_argument(
        "--nproc-per-node",
        type=int,
        default=1,
        metavar="N",
        help="train one model in N processes with DistributedDataParallel, started by torchrun's launcher "
        "(one per GPU with CUDA, else CPU processes over gloo); batch_size is per process",
    )
    train.add_argument(
        "overrides", nargs="*", metavar="key=value", help="setting overrides (anywhere on the command line)"
    )
    train.set_defaults(func=_train)

    evaluate = subparsers.add_parser(
        "evaluate",
        help="re-evaluate a run directory's checkpoint",
        description="Evaluate the checkpoint in DIR (InfoM/InfoE/InfoC on the run's evaluation sample, PSNR, and "
        "the metrics --metrics names) and rewrite DIR/metrics.json, the figures and DIR/report.html.",
    )
    evaluate.add_argument(
        "run_dir", type=Path, metavar="DIR", help="a directory written by latentquant train"
    )
    evaluate.add_argument(
        "--samples", type=int, help="evaluation sample size (default: the run's eval_samples)"
    )
    evaluate.add_argument("--device", help="auto, cpu or cuda[:i] (default: the run's device)")
    evaluate.add_argument(
        "--metrics",
        default="infomec",
        help="comma-separated metrics for metrics.json: infomec, mig, dci, sap, modularity, or all "
        "(default: infomec; InfoMEC and PSNR are always computed)",
    )
    evaluate.set_defaults(func=_evaluate)

    export = subparsers.add_parser(
        "export",
        help="write a run's trained weights (and its configuration) to one safetensors file",
        description="Write the model weights of DIR's checkpoint to OUT (safetensors; no optimizer or random "
        "state), with the resolved configuration and SHA-256 digests in its metadata. Load it with "
        "latentquant.load_model(OUT).",
    )
    export.add_argument("run_dir", type=Path, metavar="DIR", help="a directory written by latentquant train")
    export.add_argument("out", type=Path, metavar="OUT", help="the file to write, e.g. model.safetensors")
    export.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    export.set_defaults(func=_export)


def _settings_listing() -> str:
    from latentquant.train.schema import describe

    return "settings:\n" + "\n".join(f"  {line}" for line in describe().splitlines())


def _print_config(args: argparse.Namespace) -> int:
    from latentquant.train.config import merge_settings, resolve_config
    from latentquant.train.run import read_run_config
    from latentquant.train.schema import describe

    stored = read_run_config(args.resume) if args.resume is not None else {}
    config = resolve_config(merge_settings(stored, _settings(args)))
    print(describe(config.to_dict()))
    return 0


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    from latentquant.train.config import load_yaml_config, merge_settings, parse_overrides

    file_settings = load_yaml_config(args.config) if args.config is not None else {}
    flags = {
        "model": args.model,
        "dataset": args.dataset,
        "data_path": args.data_path,
        "steps": args.steps,
        "seed": args.seed,
        "compile": args.compile,
        "device": args.device,
    }
    flags = {k: v for k, v in flags.items() if v is not None}
    return merge_settings(file_settings, flags, parse_overrides(args.overrides))


def _train(args: argparse.Namespace) -> int:
    from latentquant.train.loop import train
    from latentquant.train.rundir import OutputWriteError

    if args.print_config:
        return _print_config(args)
    if args.nproc_per_node != 1 and "WORLD_SIZE" not in os.environ:
        return _launch(args)
    if args.resume is None and args.out is None:
        raise UsageError("give --out DIR for a new run, or --resume DIR to continue one")
    if args.resume is not None and args.out is not None and args.out.resolve() != args.resume.resolve():
        raise UsageError(f"--out {args.out} and --resume {args.resume} name different directories")
    if args.resume is not None and args.config is not None:
        raise UsageError("--config cannot be combined with --resume (the run's own config.yaml is used)")
    settings = _settings(args)
    out_dir = args.resume if args.resume is not None else args.out
    try:
        result = train(settings, out_dir, resume=args.resume is not None, progress=not args.no_progress)
    except KeyboardInterrupt as err:  # a second signal, or one during the final evaluation
        print(
            f"\nInterrupted; the last checkpoint in {out_dir} is kept. Resume with: latentquant train --resume "
            f"{out_dir} (or evaluate it with: latentquant evaluate {out_dir})",
            file=sys.stderr,
        )
        return 128 + getattr(err, "signum", signal.SIGINT)
    except OutputWriteError as err:
        raise UsageError(str(err)) from err
    if result.interrupted:
        return 128 + (result.signal or signal.SIGINT)
    if result.metrics is not None:  # ranks other than 0 of a data-parallel run report nothing
        _print_summary(result.metrics, result.report)
    return 0


def _launch(args: argparse.Namespace) -> int:
    """``latentquant train --nproc-per-node N ...``: the same command in N processes through torchrun."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from latentquant.train.distributed import launch

    if args.nproc_per_node < 1:
        raise UsageError(f"--nproc-per-node must be >= 1, got {args.nproc_per_node}")
    argv, skip = [], False
    for arg in args.argv:
        if skip:
            skip = False
        elif arg == "--nproc-per-node":
            skip = True
        elif not arg.startswith("--nproc-per-node="):
            argv.append(arg)
    try:
        return launch(args.nproc_per_node, argv)
    except ChildFailedError as err:
        failures = "; ".join(f"rank {f.local_rank}: exit code {f.exitcode}" for f in err.failures.values())
        print(
            f"latentquant train: {len(err.failures)} process(es) failed ({failures}); see their output above",
            file=sys.stderr,
        )
        return 1


def _evaluate(args: argparse.Namespace) -> int:
    from latentquant.train.run import evaluate_run
    from latentquant.train.rundir import OutputWriteError

    try:
        metrics, report = evaluate_run(
            args.run_dir, eval_samples=args.samples, device=args.device, metrics=args.metrics
        )
    except OutputWriteError as err:
        raise UsageError(str(err)) from err
    _print_summary(metrics, report)
    return 0


def _export(args: argparse.Namespace) -> int:
    from latentquant.train.rundir import OutputWriteError, export_model

    try:
        path = export_model(args.run_dir, args.out, overwrite=args.overwrite)
    except OutputWriteError as err:
        raise UsageError(str(err)) from err
    print(f"Exported the model of {args.run_dir} to {path}")
    return 0


def _print_summary(metrics: dict[str, Any], report: Path | None) -> None:
    names = (
        "infom",
        "infoe",
        "infoc",
        "psnr",
        "mig",
        "dci_disentanglement",
        "dci_completeness",
        "sap",
        "modularity",
    )
    fields = [f"{k}={metrics[k]:.4f}" for k in names if isinstance(metrics.get(k), float)]
    print(
        f"{metrics.get('model')} on {metrics.get('dataset')}, {metrics.get('steps')} steps: {' '.join(fields)}"
    )
    if report is not None:
        print(f"Report: {report}")
    sys.stdout.flush()
