"""A model's own vocabulary (token id <-> text), as GetModel describes it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt


class Vocabulary:
    """Maps token ids to their text and back, exactly as the model was trained.

    Encoding is one token per character, which is what a character model's server does; text
    that holds a character missing from the vocabulary cannot be encoded here (``can_encode``
    says so) and is then sent to the server as text, which applies the model's unknown-token rule
    or names the offending position. A word-level vocabulary (the model has a tokenizer)
    never encodes here: its text always goes to the server, which splits it into words.
    """

    def __init__(self, tokens: Sequence[str], *, word_level: bool = False) -> None:
        self._tokens: tuple[str, ...] = tuple(tokens)
        self._word_level = word_level
        ids: dict[str, int] = {}
        for index, token in enumerate(self._tokens):
            # The first id wins, as a server scanning the vocabulary would pick it.
            if len(token) == 1 and token not in ids:
                ids[token] = index
        self._ids = ids

    @property
    def tokens(self) -> tuple[str, ...]:
        """Token texts, indexed by token id."""
        return self._tokens

    def __len__(self) -> int:
        return len(self._tokens)

    def __contains__(self, symbol: object) -> bool:
        return symbol in self._ids

    def __repr__(self) -> str:
        return f"Vocabulary({len(self._tokens)} tokens)"

    def can_encode(self, text: str) -> bool:
        """Whether every character of ``text`` is a token of this (character) vocabulary."""
        return not self._word_level and all(char in self._ids for char in text)

    def encode(self, text: str) -> npt.NDArray[np.int64]:
        """Token ids of ``text``, one per character.

        Raises:
            KeyError: a character is not in the vocabulary (its position is in the message).
        """
        ids = np.empty(len(text), dtype=np.int64)
        for position, char in enumerate(text):
            try:
                ids[position] = self._ids[char]
            except KeyError:
                raise KeyError(f"text[{position}]: {char!r} is not in the vocabulary") from None
        return ids

    def decode(self, ids: Iterable[int] | npt.NDArray[np.integer]) -> str:
        """The text of a sequence of token ids (words joined by spaces in a word vocabulary).

        Raises:
            IndexError: an id lies outside the vocabulary.
        """
        pieces = []
        for token_id in np.asarray(ids, dtype=np.int64).reshape(-1).tolist():
            if not 0 <= token_id < len(self._tokens):
                raise IndexError(f"token id {token_id} outside [0, {len(self._tokens)})")
            pieces.append(self._tokens[token_id])
        return (" " if self._word_level else "").join(pieces)

    def token(self, token_id: int) -> str:
        """The text of one token id."""
        return self._tokens[token_id]
