"""Input validation and text encoding with a model's vocabulary; errors name the field at fault."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from rnnserve.server.domain import InputData
from rnnserve.server.errors import InvalidInput
from rnnserve.server.manifest import FeatureInput, ModelManifest, TokenInput
from rnnserve.server.tokenizer import PatternTokenizer, Tokenizer, get_tokenizer

ModelInput = npt.NDArray[np.int64] | npt.NDArray[np.float32]


def word_tokenizer(spec: TokenInput) -> Tokenizer | None:
    """How a model's text becomes words: its named tokenizer, else its token_pattern (manifests
    written before `tokenizer` existed), else None: one token per symbol."""
    if spec.tokenizer is not None:
        return get_tokenizer(spec.tokenizer)
    if spec.token_pattern is not None:
        return PatternTokenizer("token_pattern", spec.token_pattern, spec.lowercase)
    return None


class TextCodec:
    """Text <-> token ids with a model's vocabulary: words from the manifest's tokenizer (or
    token_pattern) for word-level models, else symbols (longest match first for multi-char
    tokens)."""

    def __init__(self, spec: TokenInput, model: str) -> None:
        self.vocabulary = spec.vocabulary
        self.unknown_token = spec.unknown_token
        self.model = model
        self._ids: dict[str, int] = {}
        for index, token in enumerate(spec.vocabulary):
            self._ids.setdefault(token, index)
        self._longest = max((len(t) for t in spec.vocabulary), default=1)
        self.tokenizer = word_tokenizer(spec)
        self._lowercase = spec.lowercase

    def encode(
        self, text: str, field: str = "text", max_steps: int | None = None
    ) -> npt.NDArray[np.int64]:
        """Token ids for `text`; an unknown symbol is InvalidInput "text[i]" unless the model
        declares an unknown_token. With `max_steps`, a text of more tokens is refused as soon as
        that is certain, without encoding the rest (InvalidInput on `field`)."""
        if self.tokenizer is not None:
            return self._encode_words(text, field, max_steps)
        if self._lowercase:
            text = text.lower()
        if max_steps is not None:
            # each token covers at most `longest` characters: a lower bound on the steps
            _check_steps(-(-len(text) // self._longest), max_steps, field, at_least=True)
        if self._longest == 1:
            return self._encode_symbols(text, field)
        ids: list[int] = []
        position = 0
        while position < len(text):
            for length in range(min(self._longest, len(text) - position), 0, -1):
                token_id = self._ids.get(text[position : position + length])
                if token_id is not None:
                    ids.append(token_id)
                    position += length
                    break
            else:
                if self.unknown_token is None:
                    raise self._unknown(text[position], field, position)
                ids.append(self.unknown_token)
                position += 1
        if max_steps is not None:
            _check_steps(len(ids), max_steps, field)
        return np.asarray(ids, dtype=np.int64)

    def _encode_symbols(self, text: str, field: str) -> npt.NDArray[np.int64]:
        """One token per character (every token one symbol): a dictionary lookup each."""
        lookup = self._ids.get
        found = [lookup(symbol, self.unknown_token) for symbol in text]
        if self.unknown_token is None and None in found:
            position = found.index(None)
            raise self._unknown(text[position], field, position)
        return np.asarray(found, dtype=np.int64)

    def _unknown(self, symbol: str, field: str, position: int) -> InvalidInput:
        return InvalidInput(
            f"{symbol!r} at {field}[{position}] is not in the vocabulary of model {self.model!r}",
            field=f"{field}[{position}]",
        )

    def _encode_words(self, text: str, field: str, max_steps: int | None) -> npt.NDArray[np.int64]:
        assert self.tokenizer is not None
        tokens = self.tokenizer.tokenize(text, max_steps)
        if max_steps is not None:
            _check_steps(len(tokens), max_steps, field, at_least=True)  # it may have stopped early
        ids: list[int] = []
        for token in tokens:
            token_id = self._ids.get(token.text, self.unknown_token)
            if token_id is None:
                shown = token.text if len(token.text) <= 64 else token.text[:64] + "..."
                raise InvalidInput(
                    f"{shown!r} at {field}[{token.start}] is not in the vocabulary of "
                    f"model {self.model!r}",
                    field=f"{field}[{token.start}]",
                )
            ids.append(token_id)
        return np.asarray(ids, dtype=np.int64)

    def decode(self, ids: npt.ArrayLike) -> str:
        """The text of token ids (words joined by spaces for word-level models)."""
        separator = " " if self.tokenizer is not None else ""
        return separator.join(self.vocabulary[int(i)] for i in np.asarray(ids).reshape(-1))


def validate_input(
    manifest: ModelManifest, data: InputData, max_steps: int, codec: TextCodec | None = None
) -> ModelInput:
    """Check one message of input against the model; return int64 [steps] or float32 [steps, w].

    Integer arrays are token ids ("tokens.*" fields), float arrays feature frames ("features.*"),
    str is text ("text[i]"). Raises InvalidInput with the field relative to the input.
    """
    spec = manifest.input
    if isinstance(data, str):
        if not isinstance(spec, TokenInput):
            raise InvalidInput(
                f"model {manifest.name!r} takes feature frames of width {spec.width}, not text",
                field="text",
            )
        # the step cap is checked while encoding: a long text stops as soon as it is too long
        ids = (codec or TextCodec(spec, manifest.name)).encode(data, "text", max_steps)
        if ids.shape[0] == 0:  # nothing to run (onnxruntime must never see an empty sequence)
            raise InvalidInput(
                "text is empty; send at least one symbol"
                if not data
                else f"text has no tokens for model {manifest.name!r} (only separators); send "
                "at least one word",
                field="text",
            )
        return ids
    array = np.asarray(data)
    if array.dtype.kind in "iu":
        return _validate_tokens(manifest, array, max_steps)
    return _validate_features(manifest, array, max_steps)


def _check_steps(steps: int, max_steps: int, field: str, *, at_least: bool = False) -> None:
    """`steps` (or at least that many, when counting stopped early) against the cap."""
    if steps > max_steps:
        counted = f"at least {steps}" if at_least else str(steps)
        raise InvalidInput(
            f"{counted} steps in one message exceed max_steps_per_message {max_steps}; split it",
            field=field,
        )


def _validate_tokens(
    manifest: ModelManifest, array: npt.NDArray[np.generic], max_steps: int
) -> npt.NDArray[np.int64]:
    spec = manifest.input
    if not isinstance(spec, TokenInput):
        raise InvalidInput(
            f"model {manifest.name!r} takes feature frames of width {spec.width}, not token ids",
            field="tokens",
        )
    if array.ndim != 1:
        raise InvalidInput(
            f"token ids must be one-dimensional [steps], got shape {list(array.shape)}",
            field="tokens.shape",
        )
    if array.shape[0] == 0:
        raise InvalidInput("no token ids; send at least one step", field="tokens.ids")
    _check_steps(array.shape[0], max_steps, "tokens.ids")
    vocab = len(spec.vocabulary)
    ids = array.astype(np.int64, copy=False)
    if ids.shape[0] == 1:  # one token a message, the hot path: a Python compare, no reductions
        if 0 <= int(ids[0]) < vocab:
            return np.ascontiguousarray(ids)
    elif ids.min() >= 0 and ids.max() < vocab:  # min/max first: cheaper than locating a bad id
        return np.ascontiguousarray(ids)
    index = int(np.flatnonzero((ids < 0) | (ids >= vocab))[0])
    raise InvalidInput(
        f"token id {int(ids[index])} is outside the vocabulary [0, {vocab}) of model "
        f"{manifest.name!r}",
        field=f"tokens.ids[{index}]",
    )


def _validate_features(
    manifest: ModelManifest, array: npt.NDArray[np.generic], max_steps: int
) -> npt.NDArray[np.float32]:
    spec = manifest.input
    if not isinstance(spec, FeatureInput):
        raise InvalidInput(
            f"model {manifest.name!r} takes token ids (int64), got {array.dtype} values",
            field="tokens.dtype" if array.ndim == 1 else "features",
        )
    if array.dtype != np.float32:
        raise InvalidInput(f"features must be float32, got {array.dtype}", field="features.dtype")
    if array.ndim != 2 or array.shape[1] != spec.width:
        raise InvalidInput(
            f"expected [*, {spec.width}], got {list(array.shape)}", field="features.shape"
        )
    if array.shape[0] == 0:
        raise InvalidInput("no feature frames; send at least one step", field="features")
    _check_steps(array.shape[0], max_steps, "features")
    finite = np.isfinite(array)
    if not finite.all():
        step, column = (int(i) for i in np.argwhere(~finite)[0])
        raise InvalidInput(
            f"features[{step}, {column}] is {float(array[step, column])}; NaN and infinity are "
            "not accepted",
            field="features",
        )
    return np.ascontiguousarray(array, dtype=np.float32)
