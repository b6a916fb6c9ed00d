"""The request decoder of transport/registration.py: a message when the bytes parse, otherwise an
Undecodable whose error names the message and never the bytes."""

from __future__ import annotations

import pytest
from rnnserve.server.errors import InvalidInput
from rnnserve.server.transport.registration import decoder_for
from rnnserve.server.transport.undecodable import Undecodable
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
