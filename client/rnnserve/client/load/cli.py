"""`rnnserve-load`: drive an rnnserve server with sessions and report throughput and latency."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from rnnserve.client._credentials import (
    CredentialError,
    add_connection_flags,
    connection_from_args,
)
from rnnserve.client.load.config import DEFAULT_TARGET, MODES, ConfigError, LoadConfig
from rnnserve.client.load.report import format_json, format_table
from rnnserve.client.load.runner import run_load

_EPILOG = """\
examples:
  rnnserve-load -c 64 -n 200                         64 streams, 200 one-token messages each
  rnnserve-load --mode step -c 16 -z 10              unary Step calls for 10 s
  rnnserve-load --rate 2000 -c 64 -z 30              open loop at 2,000 msg/s over 64 sessions
  rnnserve-load --steps-per-message 64 -n 20         chunked input
  rnnserve-load --json result.json --plot out.png    machine- and people-readable output

The run always stops by itself: after --sessions sessions (default: one per worker), after
--max-messages messages or after --duration seconds, whichever comes first.
"""


def build_parser() -> argparse.ArgumentParser:
    """The command line (every flag maps to a LoadConfig field)."""
    parser = argparse.ArgumentParser(
        prog="rnnserve-load",
        description=__doc__,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add(
        "--target",
        default=DEFAULT_TARGET,
        help=f"host:port of the server (default {DEFAULT_TARGET})",
    )
    add("--model", default="char-lstm", help="model name (default char-lstm)")
    add("--model-version", type=int, default=0, help="model version (default 0 = latest)")
    add(
        "--mode",
        choices=MODES,
        default="stream",
        help="stream: bidirectional Stream; step: unary Step; generate: Generate (each token is a "
        "message); predict: stateless Predict re-sending the whole prefix (the naive baseline)",
    )
    add("-c", "--concurrency", type=int, default=1, help="concurrent sessions (default 1)")
    add(
        "-n",
        "--steps",
        type=int,
        default=100,
        help="messages per session; tokens per session for generate (default 100)",
    )
    add(
        "--steps-per-message",
        type=int,
        default=1,
        help="input steps each message carries; prompt length for generate (default 1)",
    )
    add(
        "--window",
        type=int,
        default=1,
        help="stream mode: messages each session keeps in flight (default 1: wait for each reply)",
    )
    add("--sessions", type=int, help="sessions in all (default: one per worker)")
    add("-z", "--duration", type=float, help="stop after this many seconds")
    add("--max-messages", type=int, help="stop after this many timed messages")
    add("--rate", type=float, help="open loop: target messages/s in all (default: closed loop)")
    add(
        "--warmup",
        type=int,
        default=10,
        help="messages per worker on a throw-away session before timing (default 10)",
    )
    add(
        "--start-position",
        type=int,
        default=0,
        help="feed each session this many steps (untimed) before its timed messages",
    )
    add("--output-format", choices=("raw", "probabilities", "top_k", "none"), default="raw")
    add("--output-steps", choices=("all", "last"), default="all")
    add(
        "--connections",
        type=int,
        default=1,
        help="gRPC connections the sessions are spread over (default 1)",
    )
    add("--timeout", type=float, default=30.0, help="deadline per call in seconds (default 30)")
    add("--identity", default="rnnserve-load", help="x-client-id metadata (default rnnserve-load)")
    add_connection_flags(parser)
    add(
        "--metrics-url", help="the server's Prometheus endpoint, e.g. http://127.0.0.1:9090/metrics"
    )
    add("--seed", type=int, default=0, help="random seed for inputs (default 0)")
    add(
        "--json",
        nargs="?",
        const="-",
        metavar="PATH",
        help="write the result as JSON to PATH (or stdout with no PATH) instead of the table",
    )
    add("--plot", type=Path, metavar="PNG", help="write latency distribution and throughput plot")
    add("--no-progress", action="store_true", help="no progress bar")
    return parser


def config_from_args(args: argparse.Namespace) -> LoadConfig:
    """The LoadConfig the parsed flags describe (raises ConfigError)."""
    try:
        connection = connection_from_args(args)
    except CredentialError as err:
        raise ConfigError(str(err)) from None
    return LoadConfig(
        target=args.target,
        model=args.model,
        version=args.model_version,
        mode=args.mode,
        concurrency=args.concurrency,
        steps=args.steps,
        steps_per_message=args.steps_per_message,
        window=args.window,
        sessions=args.sessions,
        duration_s=args.duration,
        max_messages=args.max_messages,
        rate=args.rate,
        warmup_messages=args.warmup,
        start_position=args.start_position,
        output_format=args.output_format,
        output_steps=args.output_steps,
        connections=args.connections,
        timeout_s=args.timeout,
        identity=args.identity,
        token=connection.token,
        tls=connection.tls,
        tls_ca=connection.tls_ca,
        tls_cert=connection.tls_cert,
        tls_key=connection.tls_key,
        tls_server_name=connection.tls_server_name,
        metrics_url=args.metrics_url,
        seed=args.seed,
        progress=not args.no_progress and sys.stderr.isatty(),
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of `rnnserve-load`; returns the exit status (1 if no message succeeded)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ConfigError as err:
        parser.error(str(err))
    try:
        result = run_load(config)
    except CredentialError as err:  # a TLS file that cannot be read
        print(f"rnnserve-load: {err}", file=sys.stderr)
        return 2
    except grpc.aio.AioRpcError as err:
        print(
            f"rnnserve-load: {config.target}: {err.code().name}: {err.details()}", file=sys.stderr
        )
        return 1
    except KeyboardInterrupt:
        return 130
    if args.json == "-":
        print(format_json(result))
    else:
        print(format_table(result))
        if args.json:
            Path(args.json).write_text(format_json(result) + "\n", encoding="utf-8")
    if args.plot is not None:
        from rnnserve.client.load.plot import plot_result

        plot_result(result, args.plot)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0 if result.summary.messages_ok > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
