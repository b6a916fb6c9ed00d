"""Text encoding with a model's vocabulary: characters, and words for word-level models."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from rnnserve.client._vocabulary import Vocabulary
from rnnserve.server.errors import InvalidInput
from rnnserve.server.inputs import TextCodec
from rnnserve.server.manifest import TokenInput
from rnnserve.server.tokenizer import LOWER_WORDS, get_tokenizer

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


# brown-v1: ordinary text -> Brown corpus tokens (the tagger's training tokens)
BROWN_CASES = [
    (
        'Mr. Smith said, "It\'s here."',
        ["Mr.", "Smith", "said", ",", "``", "It's", "here", ".", "''"],
    ),
    (
        '"Only a handful," the jury said--"considering the election."',
        [
            "``",
            "Only",
            "a",
            "handful",
            ",",
            "''",
            "the",
            "jury",
            "said",
            "--",
            "``",
            "considering",
            "the",
            "election",
            ".",
            "''",
        ],
    ),
    ("It ended in 800 B.C.", ["It", "ended", "in", "800", "B.C.", "."]),
    ("Thomas Loving Jr.", ["Thomas", "Loving", "Jr.", "."]),
    (
        "He paid $1,000 at 2:30 p.m. (see 381(a)); the players' union didn't.",
        [
            "He",
            "paid",
            "$1,000",
            "at",
            "2:30",
            "p.m.",
            "(",
            "see",
            "381(a)",
            ")",
            ";",
            "the",
            "players'",
            "union",
            "didn't",
            ".",
        ],
    ),
    ("We want more ' pro ' letters!", ["We", "want", "more", "'", "pro", "'", "letters", "!"]),
    ("It weighs 5 lb..", ["It", "weighs", "5", "lb.", "."]),
    ('" And so it ended?', ["''", "And", "so", "it", "ended", "?"]),
]


@pytest.mark.parametrize(("text", "tokens"), BROWN_CASES)
def test_brown_tokenizer_gives_the_corpus_tokens(text: str, tokens: list[str]) -> None:
    found = get_tokenizer("brown-v1").tokenize(text)
    assert [t.text for t in found] == tokens
    # every token points at its text (a final "." after "Jr." shares the abbreviation's period)
    for token in found:
        written = '"' if token.text in ("``", "''") else token.text
        assert text.startswith(written, token.start) or text[token.start] == "."


def test_named_tokenizer_is_what_the_server_splits_text_with() -> None:
    vocabulary = ["<unk>", "Mr.", "Smith", "said", ",", "``", "''", "It's", "here", "."]
    spec = TokenInput(
        name="x",
        vocabulary=vocabulary,
        unknown_token=0,
        tokenizer="brown-v1",
        token_pattern=r"\S+",  # the hint for older readers; the named tokenizer wins
    )
    codec = TextCodec(spec, "m")
    assert codec.encode('Mr. Smith said, "It\'s here."').tolist() == [1, 2, 3, 4, 5, 7, 8, 9, 6]
    assert codec.encode("Mr. Jones said").tolist() == [1, 0, 3]


def test_named_tokenizer_names_the_position_of_an_unknown_word() -> None:
    spec = TokenInput(name="x", vocabulary=["Mr.", "."], tokenizer="brown-v1")
    with pytest.raises(InvalidInput) as caught:
        TextCodec(spec, "m").encode("Mr. Smith.")
    assert caught.value.field == "text[4]" and "'Smith'" in caught.value.message


def test_manifest_refuses_an_unknown_tokenizer_or_a_pattern_that_disagrees() -> None:
    with pytest.raises(ValidationError, match="unknown tokenizer 'brown-v9'"):
        TokenInput(name="x", vocabulary=WORDS, tokenizer="brown-v9")
    with pytest.raises(ValidationError, match="disagree"):
        TokenInput(name="x", vocabulary=WORDS, tokenizer="lower-words-v1", token_pattern=PATTERN)
    same = TokenInput(
        name="x",
        vocabulary=WORDS,
        tokenizer="lower-words-v1",
        token_pattern=LOWER_WORDS.pattern,
        lowercase=True,
    )
    assert TextCodec(same, "m").encode("The movie WAS great!").tolist() == [1, 2, 3, 4, 5]
