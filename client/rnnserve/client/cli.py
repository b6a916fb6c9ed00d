"""`rnnserve-client`: try a server by hand (models, generate, stream, predict)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

import numpy as np
from rnnserve.client._client import Client
from rnnserve.client._credentials import add_connection_flags, connection_from_args
from rnnserve.client._errors import RnnServeError
from rnnserve.client._types import InputLike, ModelInfo, ModelOutput, StepOutput

DEFAULT_TARGET = "localhost:50051"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rnnserve-client",
        description="Call an rnnserve server: list models, generate text, stream inputs, predict.",
    )
    parser.add_argument(
        "--target",
        default=os.environ.get("RNNSERVE_TARGET", DEFAULT_TARGET),
        help="server address (default: $RNNSERVE_TARGET or %(default)s)",
    )
    parser.add_argument("--timeout", type=float, default=None, help="deadline per call, seconds")
    parser.add_argument(
        "--client-id",
        default=None,
        help="identity sent as x-client-id (with a token: a sub-identity of its principal)",
    )
    add_connection_flags(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    commands = parser.add_subparsers(dest="command", required=True)

    models = commands.add_parser("models", help="list the served models, or show one")
    models.add_argument("action", nargs="?", choices=["list", "show"], default="list")
    models.add_argument("name", nargs="?", help="model to show")
    models.add_argument("--version", type=int, default=0, help="version to show (0: latest)")

    generate = commands.add_parser("generate", help="sample text from a language model")
    generate.add_argument("model")
    generate.add_argument("prompt", nargs="?", default="", help="text fed before sampling")
    generate.add_argument("--version", type=int, default=0)
    generate.add_argument("--max-tokens", type=int, default=200)
    generate.add_argument("--temperature", type=float, default=None)
    generate.add_argument("--top-k", type=int, default=0)
    generate.add_argument("--top-p", type=float, default=0.0)
    generate.add_argument("--seed", type=int, default=None)
    generate.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")

    stream = commands.add_parser(
        "stream",
        help="open a session and feed inputs one message at a time, printing each step's output",
        description="Inputs come from the arguments, or from stdin (one message per line). Text "
        "is split into --chunk characters per message; with --tokens each input is token ids "
        '("3 1 4" or "3,1,4"); a features model reads JSON frames ([[...], ...] or [...]).',
    )
    stream.add_argument("model")
    stream.add_argument("inputs", nargs="*")
    stream.add_argument("--version", type=int, default=0)
    stream.add_argument("--tokens", action="store_true", help="inputs are token ids")
    stream.add_argument("--chunk", type=int, default=1, help="characters of text per message")
    stream.add_argument("--top-k", type=int, default=0, help="also print the k best per step")

    predict = commands.add_parser(
        "predict",
        help="stateless whole-sequence inference, one result per input sequence",
        description="Each argument (or stdin line) is one sequence: text, token ids with --tokens, "
        "or JSON frames for a features model.",
    )
    predict.add_argument("model")
    predict.add_argument("inputs", nargs="*")
    predict.add_argument("--version", type=int, default=0)
    predict.add_argument("--tokens", action="store_true", help="inputs are token ids")
    predict.add_argument(
        "--output", choices=["raw", "probabilities", "top_k", "none"], default="raw"
    )
    predict.add_argument("--top-k", type=int, default=5)
    predict.add_argument("--last", action="store_true", help="only the last step of each")
    return parser


def _lines(inputs: Sequence[str], stdin: TextIO) -> Iterator[str]:
    if inputs:
        yield from inputs
    else:
        for line in stdin:
            line = line.rstrip("\n")
            if line:
                yield line


def _parse_input(text: str, model: ModelInfo, tokens: bool) -> InputLike:
    if model.input_kind == "features":
        frames = np.asarray(json.loads(text), dtype=np.float32)
        return frames.reshape(1, -1) if frames.ndim == 1 else frames
    if tokens:
        return [int(part) for part in text.replace(",", " ").split()]
    return text


def _messages(
    lines: Iterator[str], model: ModelInfo, tokens: bool, chunk: int
) -> Iterator[InputLike]:
    for line in lines:
        data = _parse_input(line, model, tokens)
        if isinstance(data, str):
            for start in range(0, len(data), max(1, chunk)):
                yield data[start : start + max(1, chunk)]
        else:
            yield data


def _output_json(output: ModelOutput) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": output.name, "meaning": output.meaning}
    if output.tensor is not None:
        entry["tensor"] = output.tensor.tolist()
    if output.argmax is not None:
        entry["argmax"] = output.argmax.tolist()
    if output.labels:
        entry["labels"] = list(output.labels)
    if output.top_k_indices is not None and output.top_k_probabilities is not None:
        entry["top_k"] = [
            {"indices": i.tolist(), "probabilities": p.tolist()}
            | ({"labels": list(output.top_k_labels[row])} if output.top_k_labels else {})
            for row, (i, p) in enumerate(
                zip(output.top_k_indices, output.top_k_probabilities, strict=True)
            )
        ]
    return entry


def _step_json(result: StepOutput) -> dict[str, Any]:
    return {
        "steps": result.steps,
        "step_count": result.step_count,
        "outputs": [_output_json(output) for output in result],
    }


def _describe_step(data: InputLike, result: StepOutput, show_top_k: bool) -> str:
    shown = data if isinstance(data, str) else np.asarray(data).tolist()
    parts = [f"step {result.step_count:>5}  in {shown!r}"]
    for output in result:
        if output.labels:
            parts.append(f"{output.name}: {output.labels[-1]!r}")
        elif output.argmax is not None:
            parts.append(f"{output.name}: {int(output.argmax[-1])}")
        elif output.tensor is not None:
            parts.append(f"{output.name}: {np.round(output.tensor[-1], 4).tolist()}")
        if (
            show_top_k
            and output.top_k_indices is not None
            and output.top_k_probabilities is not None
        ):
            names = (
                output.top_k_labels[-1]
                if output.top_k_labels
                else tuple(str(i) for i in output.top_k_indices[-1])
            )
            best = ", ".join(
                f"{name!r} {p:.3f}"
                for name, p in zip(names, output.top_k_probabilities[-1], strict=True)
            )
            parts.append(f"top: {best}")
    return "  ".join(parts)


def _models(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    if args.action == "show" or args.name:
        if not args.name:
            raise SystemExit("rnnserve-client models show: a model name is needed")
        info = client.model(args.name, args.version)
        if args.json:
            print(json.dumps(_model_json(info), indent=2), file=out)
            return
        print(f"{info.name} v{info.version} (versions {list(info.versions)})", file=out)
        print(
            f"  task {info.task}, cell {info.cell}, bidirectional {info.bidirectional}, "
            f"streamable {info.streamable}",
            file=out,
        )
        if info.vocabulary is not None:
            print(f"  input: tokens, vocabulary of {len(info.vocabulary)}", file=out)
        else:
            print(f"  input: features, width {info.feature_width}", file=out)
        for output in info.outputs:
            labels = f", labels {list(output.labels)[:10]}" if output.labels else ""
            print(
                f"  output {output.name}: {output.meaning} {list(output.shape)}{labels}", file=out
            )
        print(
            f"  state: {info.state_bytes} bytes per session; at most "
            f"{info.max_steps_per_message} steps per message",
            file=out,
        )
        for name, value in sorted(info.metrics.items()):
            print(f"  metric {name}: {value:.4g}", file=out)
        if info.description:
            print(f"  {info.description}", file=out)
        return
    models = client.models()
    if args.json:
        print(json.dumps([_model_json(info) for info in models], indent=2), file=out)
        return
    for info in models:
        print(
            f"{info.name:<28} v{info.version:<3} {info.task:<15} {info.cell:<5} "
            f"{'stream' if info.streamable else 'predict-only'}",
            file=out,
        )


def _model_json(info: ModelInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "version": info.version,
        "versions": list(info.versions),
        "task": info.task,
        "cell": info.cell,
        "bidirectional": info.bidirectional,
        "streamable": info.streamable,
        "input_kind": info.input_kind,
        "vocabulary": list(info.vocabulary.tokens) if info.vocabulary is not None else None,
        "feature_width": info.feature_width,
        "outputs": [
            {"name": o.name, "meaning": o.meaning, "shape": list(o.shape), "labels": list(o.labels)}
            for o in info.outputs
        ],
        "states": [{"name": s.name, "shape": list(s.shape)} for s in info.states],
        "state_bytes": info.state_bytes,
        "max_steps_per_message": info.max_steps_per_message,
        "description": info.description,
        "metrics": dict(info.metrics),
    }


def _generate(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    generation = client.generate(
        args.model,
        args.prompt or None,
        version=args.version,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop=args.stop,
    )
    with generation:
        if args.json:
            generation.read()
            reason = generation.finish_reason
            print(
                json.dumps(
                    {
                        "text": generation.text,
                        "token_ids": generation.token_ids,
                        "finish_reason": reason.value if reason else None,
                        "session_id": generation.session_id,
                    }
                ),
                file=out,
            )
            return
        if args.prompt:
            print(args.prompt, end="", file=out, flush=True)
        for piece in generation:
            print(piece, end="", file=out, flush=True)
        print(file=out)


def _stream(client: Client, args: argparse.Namespace, out: TextIO, stdin: TextIO) -> int:
    info = client.model(args.model, args.version)
    sent: deque[InputLike] = deque()

    def inputs() -> Iterator[InputLike]:
        # Lazy, so that lines typed on stdin are sent as they come; `sent` pairs each reply
        # with the input it answers.
        for message in _messages(_lines(args.inputs, stdin), info, args.tokens, args.chunk):
            sent.append(message)
            yield message

    failures = 0
    with client.session(args.model, args.version) as session:
        # TOP_K with k >= 1 carries the argmax labels on every server, and stays small.
        stream = session.stream(inputs(), output="top_k", top_k=max(1, args.top_k))
        for result in stream.results():
            data = sent.popleft() if sent else ""
            if isinstance(result, RnnServeError):
                failures += 1
                if args.json:
                    print(json.dumps({"error": _error_json(result)}), file=out, flush=True)
                else:
                    print(f"error: {result}", file=sys.stderr, flush=True)
            elif args.json:
                print(json.dumps(_step_json(result)), file=out, flush=True)
            else:
                print(_describe_step(data, result, args.top_k > 0), file=out, flush=True)
    return 1 if failures else 0


def _predict(client: Client, args: argparse.Namespace, out: TextIO, stdin: TextIO) -> None:
    info = client.model(args.model, args.version)
    sequences = [_parse_input(line, info, args.tokens) for line in _lines(args.inputs, stdin)]
    results = client.predict(
        args.model,
        sequences,
        version=args.version,
        output=args.output,
        steps="last" if args.last else "all",
        top_k=args.top_k,
    )
    for data, result in zip(sequences, results, strict=True):
        if args.json:
            print(json.dumps(_step_json(result)), file=out)
            continue
        shown = data if isinstance(data, str) else np.asarray(data).tolist()
        if not result.outputs:
            print(f"{shown!r} -> {result.steps} steps, no outputs", file=out)
        for output in result:
            if output.labels:
                value: object = list(output.labels)
            elif output.argmax is not None:
                value = output.argmax.tolist()
            elif output.tensor is not None:
                value = np.round(output.tensor, 4).tolist()
            else:
                value = output.top_k_indices.tolist() if output.top_k_indices is not None else []
            print(f"{shown!r} -> {output.name}: {value}", file=out)


def _error_json(error: RnnServeError) -> dict[str, Any]:
    return {"code": error.code.name, "message": error.message, "field": error.field}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 a call failed, 2 usage)."""
    parser = _parser()
    # Inputs may follow options ("stream m --chunk 2 abc"), which argparse leaves over.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if getattr(args, "inputs", None) is None or any(item.startswith("--") for item in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.inputs = [*args.inputs, *extra]
    out, stdin = sys.stdout, sys.stdin
    try:
        connection = connection_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    try:
        with Client(
            args.target,
            client_id=args.client_id,
            timeout=args.timeout,
            **connection.client_options(),
        ) as client:
            if args.command == "models":
                _models(client, args, out)
            elif args.command == "generate":
                _generate(client, args, out)
            elif args.command == "stream":
                return _stream(client, args, out, stdin)
            else:
                _predict(client, args, out, stdin)
    except RnnServeError as error:
        if args.json:
            print(json.dumps({"error": _error_json(error)}), file=out)
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (ValueError, json.JSONDecodeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
