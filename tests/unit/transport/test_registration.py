"""The request decoder of transport/registration.py: a message when the bytes parse, otherwise an
Undecodable whose error names the message and never the bytes."""

from __future__ import annotations

import pytest
from rnnserve.server.errors import InvalidInput
from rnnserve.server.transport.registration import decoder_for
from rnnserve.server.transport.undecodable import RequestTooLarge, Undecodable
from rnnserve.v1 import rnnserve_pb2 as pb


def test_bytes_that_parse_give_the_message() -> None:
    request = pb.StepRequest(session_id="abc", input=pb.StepInput(text="hi"))
    assert decoder_for(pb.StepRequest)(request.SerializeToString()) == request


@pytest.mark.parametrize(
    "body",
    [
        b"\x0a\x05ab",  # a length past the end
        b"\x0f\x01",  # wire type 7 does not exist
        b"\x0a\x02\xff\xfe",  # session_id (a string) that is not UTF-8
        b"\x0b" * 300,  # groups nested past the parser's limit
    ],
)
def test_bytes_that_do_not_parse_give_an_undecodable_naming_the_message(body: bytes) -> None:
    decoded = decoder_for(pb.StepRequest)(body)
    assert decoded == Undecodable("rnnserve.v1.StepRequest")
    assert isinstance(decoded, Undecodable)
    error = decoded.error()
    assert isinstance(error, InvalidInput)  # INVALID_ARGUMENT through the one error table
    assert error.message.startswith("the request body is not a valid rnnserve.v1.StepRequest")
    assert error.field is None


def test_more_bytes_than_the_method_can_need_are_refused_unparsed() -> None:
    request = pb.GetSessionRequest(session_id="abc").SerializeToString()
    decode = decoder_for(pb.GetSessionRequest, max_bytes=len(request))
    assert decode(request) == pb.GetSessionRequest(session_id="abc")  # at the bound: parsed
    decoded = decode(request + b"\x78\x01")  # one byte pair over
    assert isinstance(decoded, Undecodable)
    error = decoded.error()
    assert isinstance(error, RequestTooLarge)  # RESOURCE_EXHAUSTED, as gRPC's receive limit
    assert error.message == (
        f"the request body is larger than {len(request)} bytes, more than any valid "
        "rnnserve.v1.GetSessionRequest needs"
    )
