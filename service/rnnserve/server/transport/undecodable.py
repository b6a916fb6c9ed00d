"""What a request whose bytes do not parse becomes, and the error it is answered with."""

from __future__ import annotations

from dataclasses import dataclass

from rnnserve.server.errors import InvalidInput, RnnServeError


class MalformedRequest(InvalidInput):
    """A request (or one stream message) whose bytes do not parse as its method's message."""


class RequestTooLarge(RnnServeError):
    """A request longer than its method's largest legal request (RESOURCE_EXHAUSTED, as gRPC's
    own receive limit answers); refused from its length, never parsed."""


@dataclass(frozen=True, slots=True)
class Undecodable:
    """Stands in for a request whose bytes did not parse as `message_name`.

    The request decoder (transport/registration.py) returns it instead of raising, because grpc
    turns a decoder's exception into UNKNOWN (unary calls) or kills a whole stream. Handlers answer
    it with `error()`: INVALID_ARGUMENT for a call, an in-band error inside a stream. The bytes are
    never kept or echoed.
    """

    message_name: str  # the full protobuf name, e.g. "rnnserve.v1.StepRequest"
    # Set when the bytes were not parsed because there were more than this many.
    max_bytes: int | None = None

    def error(self) -> MalformedRequest | RequestTooLarge:
        """The error to answer with: INVALID_ARGUMENT naming the expected message, or
        RESOURCE_EXHAUSTED for a body longer than any legal one."""
        if self.max_bytes is not None:
            return RequestTooLarge(
                f"the request body is larger than {self.max_bytes:,} bytes, more than any "
                f"valid {self.message_name} needs"
            )
        return MalformedRequest(
            f"the request body is not a valid {self.message_name} message (malformed protobuf "
            "wire format, or a string field that is not valid UTF-8)"
        )
