"""Text encoding with a model's vocabulary: characters, and words for word-level models."""

from __future__ import annotations

import pytest
from rnnserve.client._vocabulary import Vocabulary
from rnnserve.server.errors import InvalidInput
from rnnserve.server.inputs import TextCodec
from rnnserve.server.manifest import TokenInput

WORDS = ["<unk>", "the", "movie", "was", "great", "!", "there"]
PATTERN = r"[a-z]+|[^\sa-z]"


def test_word_model_splits_text_into_words_not_characters() -> None:
    codec = TextCodec(
        TokenInput(name="x", vocabulary=WORDS, token_pattern=PATTERN, lowercase=True), "m"
    )
    ids = codec.encode("The movie was GREAT!")
    assert ids.tolist() == [1, 2, 3, 4, 5]
    assert codec.decode(ids) == "the movie was great !"


def test_word_model_maps_unknown_words_to_its_unknown_token() -> None:
    spec = TokenInput(name="x", vocabulary=WORDS, token_pattern=PATTERN, unknown_token=0)
    assert TextCodec(spec, "m").encode("the film").tolist() == [1, 0]


def test_word_model_without_unknown_token_names_the_word_position() -> None:
    codec = TextCodec(TokenInput(name="x", vocabulary=WORDS, token_pattern=PATTERN), "m")
    with pytest.raises(InvalidInput) as caught:
        codec.encode("the film")
    assert caught.value.field == "text[4]" and "'film'" in caught.value.message


def test_character_model_keeps_one_token_per_symbol() -> None:
    codec = TextCodec(TokenInput(name="x", vocabulary=list("abc ")), "m")
    assert codec.encode("ab c").tolist() == [0, 1, 3, 2]


def test_client_never_encodes_word_level_text_itself() -> None:
    # "a" is both a word and a character here: only the server knows how to split the text
    words = Vocabulary(["a", "b", "ab"], word_level=True)
    assert not words.can_encode("ab")
    assert words.decode([0, 2]) == "a ab"
    assert Vocabulary(["a", "b"]).can_encode("ab")
