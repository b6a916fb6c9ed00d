"""Request caps, checked from sizes the request states before anything is decoded or encoded.

Every check here is O(1) or O(number of parts) on counts the protobuf message already holds
(`len(ids)`, a tensor's declared shape, `len(text)`), so a refused request costs almost nothing
and leaves nothing behind. Errors are InvalidInput (INVALID_ARGUMENT) naming the field and the
limit, and never repeat the client's value. The gRPC receive limit (`max_request_bytes`) is
derived from the same caps, so a message too big for any legal request is refused by gRPC
itself (RESOURCE_EXHAUSTED) before Python sees it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pydantic
from rnnserve.server.errors import InvalidInput
from rnnserve.server.manifest import MANIFEST_FILENAME, FeatureInput, ModelManifest, load_manifest
from rnnserve.server.settings import Settings
from rnnserve.server.snapshot import MAX_HEADER_BYTES

log = logging.getLogger(__name__)

# gRPC's own default receive limit: what a servicer built without settings assumes.
GRPC_DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# Room for everything in a request besides its payload: ids, names, options, sampling, field
# tags. Generous: a few KiB more per message costs nothing, a legal request refused costs a user.
REQUEST_OVERHEAD_BYTES = 64 * 1024
# Protobuf framing of one repeated sub-message (a Predict sequence): tags and lengths of the
# StepInput and of its TokenIds / Tensor, and a Tensor's dtype and shape.
SEQUENCE_OVERHEAD_BYTES = 48
# An int64 token id as a varint: at most 10 bytes (negative ids take all ten).
VARINT_MAX_BYTES = 10
# A snapshot's fixed parts besides its header and tensors: prefix, checksum, HMAC.
SNAPSHOT_FRAMING_BYTES = 16 + 32 + 32


def _setting(name: str) -> Any:
    """The default of Settings field `name` (one source for every default)."""
    return Settings.model_fields[name].default


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """The caps a front door checks before it decodes a request (see Settings for each)."""

    max_steps_per_message: int = _setting("max_steps_per_message")
    max_text_bytes: int = _setting("max_text_bytes")
    max_predict_sequences: int = _setting("max_predict_sequences")
    max_stop_strings: int = _setting("max_stop_strings")
    max_stop_string_bytes: int = _setting("max_stop_string_bytes")
    max_id_length: int = _setting("max_id_length")
    max_generate_tokens: int = _setting("max_generate_tokens")
    max_metadata_bytes: int = _setting("max_metadata_bytes")
    # The largest message gRPC lets in (set by `build_server` from `max_request_bytes`): no
    # dimension of a tensor may claim more elements than that many bytes could carry.
    max_message_bytes: int = GRPC_DEFAULT_MAX_MESSAGE_BYTES

    @classmethod
    def from_settings(cls, settings: Settings) -> RequestLimits:
        """The caps configured in `settings` (max_message_bytes still gRPC's default)."""
        return cls(
            max_steps_per_message=settings.max_steps_per_message,
            max_text_bytes=settings.max_text_bytes,
            max_predict_sequences=settings.max_predict_sequences,
            max_stop_strings=settings.max_stop_strings,
            max_stop_string_bytes=settings.max_stop_string_bytes,
            max_id_length=settings.max_id_length,
            max_generate_tokens=settings.max_generate_tokens,
            max_metadata_bytes=settings.max_metadata_bytes,
        )

    def with_message_bytes(self, max_message_bytes: int) -> RequestLimits:
        """The same caps with gRPC's receive limit set."""
        return replace(self, max_message_bytes=max_message_bytes)


DEFAULT_LIMITS = RequestLimits()


# ---- checks ------------------------------------------------------------------------------------


def check_count(count: int, limit: int, field: str, what: str, setting: str) -> None:
    """`count` parts (steps, sequences, stop strings) against `limit`."""
    if count > limit:
        raise InvalidInput(
            f"{count:,} {what} exceed {setting} {limit:,}; split the request", field=field
        )


def check_steps(count: int, field: str, limits: RequestLimits) -> None:
    """Steps of one message (token ids, feature rows, a prompt) against max_steps_per_message."""
    check_count(
        count, limits.max_steps_per_message, field, "steps in one message", "max_steps_per_message"
    )


def utf8_length_over(text: str, limit: int) -> int | None:
    """The UTF-8 length of `text` when it exceeds `limit` bytes, else None; never encodes more
    than 4 * limit characters' worth (a character is 1 to 4 bytes)."""
    if len(text) * 4 <= limit:
        return None
    if len(text) > limit:
        return len(text)  # at least that many bytes: enough to refuse without encoding
    size = len(text.encode("utf-8", "surrogatepass"))
    return size if size > limit else None


def check_text(text: str, field: str, limits: RequestLimits) -> None:
    """Text of one message or prompt against max_text_bytes."""
    size = utf8_length_over(text, limits.max_text_bytes)
    if size is not None:
        raise InvalidInput(
            f"text of at least {size:,} UTF-8 bytes exceeds max_text_bytes "
            f"{limits.max_text_bytes:,}; split it",
            field=field,
        )


def check_id(value: str, field: str, limits: RequestLimits) -> None:
    """A session, sequence, request or model id against max_id_length (never echoed)."""
    if len(value) > limits.max_id_length:
        raise InvalidInput(
            f"{len(value):,} characters exceed max_id_length {limits.max_id_length}", field=field
        )


def check_shape(shape: Sequence[int], itemsize: int, field: str, limits: RequestLimits) -> int:
    """Every dimension non-negative and small enough for one message; the element count.

    Each dimension is bounded before the product is taken, so the product is exact and small
    (no `[0, 2**62]` reaches numpy). `field` is the shape's path (`input.features.shape`).
    """
    most = limits.max_message_bytes // itemsize
    for axis, dim in enumerate(shape):
        if dim < 0:
            raise InvalidInput(f"dimension {axis} is negative ({dim})", field=f"{field}[{axis}]")
        if dim > most:
            raise InvalidInput(
                f"dimension {axis} ({dim:,}) is more elements than one message can carry "
                f"({limits.max_message_bytes:,} bytes)",
                field=f"{field}[{axis}]",
            )
    return math.prod(shape)


# ---- the gRPC receive limit --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServedShapes:
    """What the served models add to the largest legal request: the widest feature frame and
    the largest snapshot (states and a language model's last output), in bytes."""

    feature_frame_bytes: int = 0
    snapshot_tensor_bytes: int = 0

    @classmethod
    def of(cls, manifests: Iterable[ModelManifest]) -> ServedShapes:
        frame, snapshot = 0, 0
        for manifest in manifests:
            if isinstance(manifest.input, FeatureInput):
                frame = max(frame, 4 * manifest.input.width)
            # a language model's snapshot also holds its last logits: bound it by every output
            outputs = sum(4 * math.prod(spec.shape) for spec in manifest.outputs)
            snapshot = max(snapshot, sum(s.nbytes for s in manifest.states) + outputs)
        return cls(frame, snapshot)


def max_request_bytes(limits: RequestLimits, shapes: ServedShapes) -> int:
    """The largest request a client may legally send, in bytes: gRPC's receive limit.

    The largest of what the caps allow one message to carry, plus REQUEST_OVERHEAD_BYTES:
    - a message of max_steps_per_message token ids (10 bytes per varint at most) or of as many
      feature frames of the widest served width (float32), or max_text_bytes of text;
    - a Predict: max_predict_sequences sequences (SEQUENCE_OVERHEAD_BYTES of framing each)
      whose steps together stay within max_steps_per_message and whose text within
      max_text_bytes (a Predict is held to one message's caps);
    - a Generate: a prompt (as a message) and max_stop_strings stop strings of
      max_stop_string_bytes;
    - a snapshot (ImportState, Stream open) of the largest served model.
    """
    steps = limits.max_steps_per_message
    payload = max(
        steps * VARINT_MAX_BYTES, steps * shapes.feature_frame_bytes, limits.max_text_bytes
    )
    predict = payload + limits.max_predict_sequences * SEQUENCE_OVERHEAD_BYTES
    snapshot = MAX_HEADER_BYTES + SNAPSHOT_FRAMING_BYTES + shapes.snapshot_tensor_bytes
    return max(predict, _generate_payload(limits), snapshot) + REQUEST_OVERHEAD_BYTES


def _generate_payload(limits: RequestLimits) -> int:
    """A Generate's prompt (token ids or text) and its stop strings, at the caps."""
    prompt = max(limits.max_steps_per_message * VARINT_MAX_BYTES, limits.max_text_bytes)
    return prompt + limits.max_stop_strings * (limits.max_stop_string_bytes + 8)


# Methods whose requests carry tensors, text or snapshots: bounded by gRPC's receive limit only.
PAYLOAD_METHODS = frozenset(
    {"Step", "Stream", "Predict", "ImportState", "ModelInfer", "ModelStreamInfer"}
)


def body_limit(method: str, limits: RequestLimits) -> int | None:
    """The most bytes a legal request of `method` (its short name) can need, when far below the
    receive limit; None for the methods that carry payloads.

    Parsing is the one cost paid before any check: a body of many tiny parts (100,000 stop
    strings, or as many unknown fields in a GetSession) costs milliseconds of protobuf work
    holding the GIL. A method's own bound refuses such a body unparsed, from its length.
    """
    if method in PAYLOAD_METHODS:
        return None
    if method == "Generate":
        return _generate_payload(limits) + REQUEST_OVERHEAD_BYTES
    return REQUEST_OVERHEAD_BYTES  # ids, names, options: a few hundred bytes in practice


def server_options(limits: RequestLimits) -> list[tuple[str, int]]:
    """gRPC server options that refuse over-size messages and metadata before any handler runs
    (RESOURCE_EXHAUSTED). The soft and hard metadata limits are the same: between them gRPC
    refuses at random."""
    return [
        ("grpc.max_receive_message_length", limits.max_message_bytes),
        ("grpc.max_metadata_size", limits.max_metadata_bytes),
        ("grpc.absolute_max_metadata_size", limits.max_metadata_bytes),
    ]


def served_manifests(repository: Path, only: list[str] | None) -> list[ModelManifest]:
    """The manifests `build_server` sizes the receive limit from, read without loading a model.

    A manifest that cannot be read is skipped here: loading the models at start reports it (and
    fails the start), which is the one place such an error belongs.
    """
    manifests = []
    for path in sorted(repository.glob(f"*/{MANIFEST_FILENAME}")):
        if only is not None and path.parent.name not in only:
            continue
        try:
            manifests.append(load_manifest(path))
        except (OSError, ValueError, pydantic.ValidationError):
            log.debug("receive limit: skipping unreadable manifest %s", path)
    return manifests


def limits_for(settings: Settings) -> RequestLimits:
    """The caps of `settings`, with the gRPC receive limit derived for its served models."""
    limits = RequestLimits.from_settings(settings)
    shapes = ServedShapes.of(served_manifests(settings.model_repository, settings.models))
    return limits.with_message_bytes(max_request_bytes(limits, shapes))
