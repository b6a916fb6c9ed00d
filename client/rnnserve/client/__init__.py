"""The rnnserve Python client: sessions that keep a recurrent model's state on the server.

Synchronous use::

    from rnnserve.client import Client

    with Client("localhost:50051") as client:
        with client.session("char-lstm") as s:
            out = s.feed("hello", output="top_k", top_k=3)   # StepOutput, numpy arrays
            print(out.labels, out.step_count)
            for piece in s.generate(" then", max_tokens=50, seed=1):  # continues the state
                print(piece, end="")
            with s.open_stream() as stream:               # one call, request/reply feeding
                out = stream.feed(out.labels[-1])
        for piece in client.generate("char-lstm", "Once ", max_tokens=50):
            print(piece, end="")

A server with authentication and TLS takes a bearer token and the CA that signed its
certificate (plus a client certificate and key when it requires mutual TLS)::

    Client("rnn.example.com:50051", token=token, tls_ca="ca.pem")

``AsyncClient`` (also in :mod:`rnnserve.client.aio`) has the same methods for asyncio. Every
failed call raises a subclass of :class:`RnnServeError` named after its gRPC status code (with
``code``, ``message``, ``field``); inside a stream a refused input raises the same exception and
the stream carries on.
"""

from rnnserve.client._call_policy import CLIENT_ID_KEY
from rnnserve.client._client import Client
from rnnserve.client._connection import SessionStream
from rnnserve.client._errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    RnnServeError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
)
from rnnserve.client._retry import NO_RETRY, RetryPolicy
from rnnserve.client._session import Session
from rnnserve.client._streams import Generation, OutputStream
from rnnserve.client._types import (
    FinishReason,
    GeneratedToken,
    InputLike,
    ModelInfo,
    ModelOutput,
    OutputFormat,
    OutputInfo,
    OutputOptions,
    OutputSteps,
    SessionInfo,
    StateInfo,
    StepOutput,
)
from rnnserve.client._vocabulary import Vocabulary
from rnnserve.client.aio import (
    AsyncClient,
    AsyncGeneration,
    AsyncOutputStream,
    AsyncSession,
    AsyncSessionStream,
)

__all__ = [
    "CLIENT_ID_KEY",
    "NO_RETRY",
    "Aborted",
    "AlreadyExists",
    "AsyncClient",
    "AsyncGeneration",
    "AsyncOutputStream",
    "AsyncSession",
    "AsyncSessionStream",
    "Cancelled",
    "Client",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FinishReason",
    "GeneratedToken",
    "Generation",
    "InputLike",
    "Internal",
    "InvalidArgument",
    "ModelInfo",
    "ModelOutput",
    "NotFound",
    "OutOfRange",
    "OutputFormat",
    "OutputInfo",
    "OutputOptions",
    "OutputSteps",
    "OutputStream",
    "PermissionDenied",
    "ResourceExhausted",
    "RetryPolicy",
    "RnnServeError",
    "Session",
    "SessionInfo",
    "SessionStream",
    "StateInfo",
    "StepOutput",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "Vocabulary",
]
