"""The `rnnserve` command: serve, list the model repository, and check a server's health."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import pydantic
from pydantic import SecretStr
from rnnserve.server.settings import Settings

HEALTH_EXIT_SERVING = 0
HEALTH_EXIT_NOT_SERVING = 1
HEALTH_EXIT_UNREACHABLE = 2


# ---- Settings -> flags -------------------------------------------------------------------------


def _strip_optional(annotation: Any) -> Any:
    """`X | None` -> X (None stays reachable through the environment and the default)."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per Settings field (`foo_bar` -> `--foo-bar`), derived from the model itself.

    Flags default to "not given", so environment variables (RNNSERVE_*) and the field defaults
    still apply to whatever the command line leaves out.
    """
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kind = _strip_optional(field.annotation)
        default = field.get_default(call_default_factory=True)
        text = field.description or name.replace("_", " ").capitalize() + "."
        help_text = f"{text} [env RNNSERVE_{name.upper()}; default: {default}]"
        options: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": help_text}
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **options)
        elif get_origin(kind) is Literal:
            parser.add_argument(flag, choices=[str(c) for c in get_args(kind)], **options)
        elif get_origin(kind) is list:
            parser.add_argument(flag, nargs="+", metavar=name.upper().rstrip("S"), **options)
        elif kind in (int, float, str, Path):
            parser.add_argument(flag, type=kind, metavar=name.upper(), **options)
        elif kind is SecretStr:
            parser.add_argument(flag, type=str, metavar=name.upper(), **options)
        else:
            raise TypeError(f"Settings.{name}: no flag mapping for {field.annotation!r}")


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the given flags, then RNNSERVE_* environment variables, then defaults."""
    given = {name: getattr(args, name) for name in Settings.model_fields if hasattr(args, name)}
    return Settings(**given)


# ---- commands ----------------------------------------------------------------------------------


def _command_serve(args: argparse.Namespace) -> int:
    from rnnserve.server.app import serve
    from rnnserve.server.repository import RepositoryError
    from rnnserve.server.security import SecurityConfigError

    settings = settings_from_args(args)
    try:
        asyncio.run(serve(settings))
    except RepositoryError as err:
        print(f"rnnserve: cannot load the models: {err}", file=sys.stderr)
        return 1
    except SecurityConfigError as err:
        print(f"rnnserve: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"rnnserve: {err}", file=sys.stderr)
        return 1
    return 0


def _command_models_inspect(args: argparse.Namespace) -> int:
    # The inspector reads the graph with the `onnx` package, which the [server] extra leaves out.
    try:
        from google.protobuf.message import DecodeError
        from rnnserve.server.inspect_onnx import InspectionError, propose_manifest_json
    except ModuleNotFoundError as err:
        print(
            f"rnnserve: inspecting needs the {err.name!r} package: pip install 'rnnserve[train]' "
            "(or just onnx)",
            file=sys.stderr,
        )
        return 2
    try:
        text = propose_manifest_json(args.onnx, name=args.name)
    except (InspectionError, OSError, DecodeError) as err:
        print(f"rnnserve: {args.onnx}: not a recurrent ONNX model: {err}", file=sys.stderr)
        return 1
    print(text, end="")
    return 0


def _command_models_list(args: argparse.Namespace) -> int:
    from rnnserve.server.repository import ModelRepository, RepositoryError

    settings = settings_from_args(args)
    try:
        found = ModelRepository(settings.model_repository, settings.models).scan()
    except RepositoryError as err:
        print(f"rnnserve: {err}", file=sys.stderr)
        return 1
    rows = []
    for name, files in sorted(found.items()):
        manifest = files.manifest
        spec = manifest.input
        width = len(spec.vocabulary) if spec.kind == "tokens" else spec.width
        rows.append(
            {
                "name": name,
                "versions": ",".join(str(v) for v in sorted(files.paths)),
                "task": manifest.task,
                "cell": manifest.cell + ("-bi" if manifest.bidirectional else ""),
                "input": f"{spec.kind}[{width}]",
                "streamable": "yes" if manifest.streamable else "no",
                "state_bytes": str(manifest.state_bytes),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    headers = {key: key.upper().replace("_", " ") for key in rows[0]}
    widths = {key: max(len(headers[key]), *(len(row[key]) for row in rows)) for key in headers}
    for row in [headers, *rows]:
        print("  ".join(row[key].ljust(widths[key]) for key in headers).rstrip())
    return 0


def _default_port() -> int:
    """RNNSERVE_PORT when set and valid, so a container's HEALTHCHECK needs no flags."""
    try:
        return Settings().port
    except pydantic.ValidationError:
        return Settings.model_fields["port"].default  # type: ignore[no-any-return]


def _command_token_new(args: argparse.Namespace) -> int:
    from rnnserve.server.tokens import new_token, token_line

    token = new_token()
    try:
        line = token_line(token, args.principal)
    except ValueError as err:
        print(f"rnnserve: {err}", file=sys.stderr)
        return 2
    # The token (for the client) alone on stdout, so `> client.token` captures just it; the
    # line for the server's tokens file (no secret in it) on stderr.
    print(token)
    print(line, file=sys.stderr)
    return 0


def _command_token_hash(args: argparse.Namespace) -> int:
    from rnnserve.server.tokens import token_line

    token = sys.stdin.readline().strip()
    if not token:
        print("rnnserve: no token on stdin", file=sys.stderr)
        return 2
    try:
        print(token_line(token, args.principal))
    except ValueError as err:
        print(f"rnnserve: {err}", file=sys.stderr)
        return 2
    return 0


def _health_credentials(args: argparse.Namespace) -> tuple[Any, tuple[tuple[str, str], ...]]:
    """Channel credentials (None: plaintext) and call metadata for `rnnserve healthcheck`."""
    import grpc

    def read(path: Path | None) -> bytes | None:
        return None if path is None else path.read_bytes()

    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("--tls-cert and --tls-key: give both (a client certificate and its key)")
    credentials = None
    if args.tls or args.tls_ca or args.tls_cert:
        credentials = grpc.ssl_channel_credentials(
            read(args.tls_ca), read(args.tls_key), read(args.tls_cert)
        )
    token = args.token
    if args.token_file is not None:
        token = args.token_file.read_text(encoding="utf-8").strip()
    elif token is None:
        token = os.environ.get("RNNSERVE_TOKEN") or None
    metadata = (("authorization", f"Bearer {token.strip()}"),) if token else ()
    return credentials, metadata


def _command_healthcheck(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    port = args.port if args.port is not None else _default_port()
    target = f"[{args.host}]:{port}" if ":" in args.host else f"{args.host}:{port}"
    try:
        credentials, metadata = _health_credentials(args)
    except (OSError, ValueError) as err:
        print(f"rnnserve: {err}", file=sys.stderr)
        return HEALTH_EXIT_UNREACHABLE
    channel = (
        grpc.insecure_channel(target)
        if credentials is None
        else grpc.secure_channel(target, credentials)
    )
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(
                health_pb2.HealthCheckRequest(service=args.service),
                timeout=args.timeout,
                metadata=metadata,
            )
        except grpc.RpcError as err:
            print(f"{target}: unreachable ({err.code().name})", file=sys.stderr)
            return HEALTH_EXIT_UNREACHABLE
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{target}: {status}")
    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    return HEALTH_EXIT_SERVING if serving else HEALTH_EXIT_NOT_SERVING


def build_parser() -> argparse.ArgumentParser:
    """The whole `rnnserve` command line."""
    parser = argparse.ArgumentParser(
        prog="rnnserve", description="A stateful gRPC server for recurrent networks."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the server until SIGTERM/SIGINT",
        description="Run the gRPC server. Every flag has an RNNSERVE_* environment twin.",
    )
    add_settings_flags(serve)
    serve.set_defaults(handler=_command_serve)

    models = commands.add_parser("models", help="work with the model repository")
    model_commands = models.add_subparsers(dest="models_command", required=True)
    listing = model_commands.add_parser(
        "list", help="validate the repository and print its models as a table"
    )
    listing.add_argument(
        "--model-repository",
        dest="model_repository",
        type=Path,
        default=argparse.SUPPRESS,
        help="the repository folder [env RNNSERVE_MODEL_REPOSITORY]",
    )
    listing.add_argument(
        "--models",
        dest="models",
        nargs="+",
        default=argparse.SUPPRESS,
        help="only these model names [env RNNSERVE_MODELS]",
    )
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(handler=_command_models_list)
    inspect = model_commands.add_parser(
        "inspect",
        help="propose a manifest (model.json) for an ONNX file with recurrent state",
        description="Reads the graph, finds its recurrent ops and state inputs/outputs, checks "
        "them with onnxruntime, and prints a manifest to review and save as model.json.",
    )
    inspect.add_argument("onnx", type=Path, help="the .onnx file")
    inspect.add_argument("--name", default=None, help="model name (default: from the file name)")
    inspect.set_defaults(handler=_command_models_inspect)

    health = commands.add_parser(
        "healthcheck",
        help="exit 0 iff the server reports SERVING (for container health checks)",
        description="Exit codes: 0 SERVING, 1 NOT_SERVING (or unknown), 2 unreachable.",
    )
    health.add_argument("--host", default="127.0.0.1", help="server address (default 127.0.0.1)")
    health.add_argument(
        "--port", type=int, default=None, help="server port (default: RNNSERVE_PORT or 50051)"
    )
    health.add_argument("--timeout", type=float, default=3.0, help="seconds to wait (default 3)")
    health.add_argument(
        "--service", default="", help='health service name (default "", the whole server)'
    )
    health.add_argument(
        "--token",
        default=None,
        help="bearer token, when health needs one (auth_open_health off) [env RNNSERVE_TOKEN]",
    )
    health.add_argument("--token-file", type=Path, default=None, help="file holding the token")
    health.add_argument("--tls", action="store_true", help="TLS, trusting the system's roots")
    health.add_argument("--tls-ca", type=Path, default=None, help="CA bundle (PEM) of the server")
    health.add_argument("--tls-cert", type=Path, default=None, help="client certificate (PEM)")
    health.add_argument("--tls-key", type=Path, default=None, help="key of --tls-cert (PEM)")
    health.set_defaults(handler=_command_healthcheck)

    token = commands.add_parser("token", help="make bearer tokens for auth_tokens_file")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    new = token_commands.add_parser(
        "new",
        help="print a new random token on stdout and its tokens-file line on stderr",
        description="The token goes to the client (stdout); the line `sha256:<hex> <principal>` "
        "goes into the server's auth_tokens_file (stderr). The server never stores the token.",
    )
    new.add_argument("--principal", default="client", help="who presents it (default: client)")
    new.set_defaults(handler=_command_token_new)
    hashing = token_commands.add_parser(
        "hash",
        help="read a token on stdin and print its tokens-file line",
        description="For a token made elsewhere: prints `sha256:<hex> <principal>`.",
    )
    hashing.add_argument("--principal", default="client", help="who presents it (default: client)")
    hashing.set_defaults(handler=_command_token_hash)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `rnnserve` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except pydantic.ValidationError as err:
        parser.error(str(err))
    return code


if __name__ == "__main__":
    sys.exit(main())
